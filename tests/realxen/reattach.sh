# netbackd scenario: detach and re-attach a vif while another vif of the guest carries a ping.
# The guest pings dom0 over eth0 (vif/0) for 60 s; meanwhile vif/1 is attached, detached
# (libxl: Closing, netbackd: Closed, nodes removed) and attached again.
# PASS: vif/1 4/4 both times, the detach without libxl's timeout, the re-attached vif/1
# receives traffic, and the ping over vif/0 loses at most 6 of 60.
SCENARIO_NAME=reattach
DOMU_ARGS="realxen.ping=10.99.0.1,60,90 realxen.netdev=30"
. /root/nb-common.sh

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif 00:16:3e:00:00:01
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  wait_domu_line '^REALXEN-PING-WARMUP:' 120 | sed 's/^/domU: /'
  local round
  for round in 1 2; do
    attach_vif 00:16:3e:00:00:02
    wait_states 1 4 4 60 || { fail "round $round: vif/1 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
    wait_attach || { fail "round $round: xl network-attach failed"; return; }
    log "round $round: vif/1 Connected"
    sleep 3
    # dom0's ARP/ping broadcasts are flooded to vif/1 as well.
    ping -c 3 -W 1 -b 10.99.0.255 > /dev/null 2>&1
    log "round $round: $(nb_vif_summary 1)"
    [ $round = 2 ] && break
    xl network-detach $DOMU 1 > /tmp/detach.log 2>&1; local rc=$?
    grep -qE 'Timeout reached|unable to remove' /tmp/detach.log && { fail "detach of vif/1: libxl timeout"; return; }
    [ $rc -eq 0 ] || { fail "xl network-detach rc=$rc"; return; }
    log "round $round: vif/1 detached (backend $(be_state 1))"
  done
  local d=$(domid)
  local v1=$(nb_metric netbackd_vif_rx_packets_total "domid=\"$d\"" 'devid="1"')
  local line
  line=$(wait_domu_line '^REALXEN-PING:' 150) || { fail "domU printed no REALXEN-PING line"; return; }
  log "domU (eth0): $line"
  log "$(nb_vif_summary 0 1)"
  grep -E 'new vif|vif connected|detach requested|frontend closed' "$NETBACKD_LOG" | sed 's/^/netbackd: /'
  local rx=$(domu_field "$line" received)
  [ "${rx:-0}" -ge 54 ] || { fail "ping over vif/0 got ${rx:-0}/60 during the detach/re-attach"; return; }
  [ "$v1" -ge 1 ] || { fail "re-attached vif/1 received nothing"; return; }
  netbackd_alive || { fail "netbackd died"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "vif/1 attached, detached, re-attached (4/4 each time; $v1 packets delivered after); vif/0 ping $rx/60"
}
