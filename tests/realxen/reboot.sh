# netbackd scenario: the guest reboots (`xl reboot`) and reconnects. libxl destroys the domain
# (backend nodes removed: netbackd lets go of the vif) and builds it again with a new domid
# and the hot-plugged vif (re-attached here if libxl does not restore it).
# PASS: 4/4 and >= 9/10 ping replies before the reboot, and again after it with the new domid.
SCENARIO_NAME=reboot
DOMU_ARGS="realxen.ping=10.99.0.1,10,90"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif $MAC
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  local line
  line=$(wait_domu_line '^REALXEN-PING:' 200) || { fail "no REALXEN-PING before the reboot"; return; }
  log "before reboot (dom$(domid)): $line"
  local rx1=$(domu_field "$line" received) old=$(domid)
  [ "${rx1:-0}" -ge 9 ] || { fail "before reboot only ${rx1:-0}/10 replies"; return; }
  local n1=$(grep -ac '^REALXEN-PING:' $DOMU_LOG)
  log "xl reboot $DOMU"
  xl reboot $DOMU || { fail "xl reboot failed"; return; }
  local t=0
  while :; do
    local d=$(domid)
    [ -n "$d" ] && [ "$d" != "$old" ] && break
    t=$((t+1)); [ $t -gt 90 ] && { fail "no new domain 90 s after xl reboot"; return; }
    sleep 1
  done
  log "rebooted as dom$(domid)"
  sleep 5
  if [ "$(be_state 0)" = - ]; then
    log "libxl did not restore the hot-plugged vif; attaching it again"
    attach_vif $MAC
  fi
  wait_states 0 4 4 120 || { fail "after reboot vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  [ -z "$(xenstore-ls /local/domain/0/backend/vif/$old 2>/dev/null)" ] || log "old backend dir still present"
  t=0
  while [ "$(grep -ac '^REALXEN-PING:' $DOMU_LOG)" -le "$n1" ]; do
    t=$((t+1)); [ $t -gt 240 ] && { fail "no REALXEN-PING after the reboot"; return; }
    sleep 1
  done
  line=$(grep -a '^REALXEN-PING:' $DOMU_LOG | tail -1 | tr -d '\r')
  log "after reboot (dom$(domid)): $line"
  grep -E 'new vif|vif connected|detach requested|frontend closed' "$NETBACKD_LOG" | sed 's/^/netbackd: /'
  local rx2=$(domu_field "$line" received)
  [ "${rx2:-0}" -ge 9 ] || { fail "after reboot only ${rx2:-0}/10 replies"; return; }
  netbackd_alive || { fail "netbackd died"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "dom$old ping $rx1/10; rebooted as dom$(domid), 4/4 again, ping $rx2/10"
}
