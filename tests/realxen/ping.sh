# netbackd scenario: ICMP both ways between Linux's xen-netfront and dom0 through netbackd and
# its DPDK net_tap port (nbtap0, 10.99.0.1; the guest is 10.99.0.2).
# PASS: the guest gets >= 18 of 20 replies from dom0 and dom0 >= 18 of 20 from the guest.
SCENARIO_NAME=ping
DOMU_ARGS="realxen.ping=10.99.0.1,20,90 realxen.netdev=20"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif $MAC
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4 60 s after attach: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  local line rx0
  line=$(wait_domu_line '^REALXEN-PING:' 200) || { fail "domU printed no REALXEN-PING line"; return; }
  log "domU -> dom0: $line"
  local out=$(ping -c 20 -i 0.3 -W 3 $DOMU_IP 2>&1 | tail -3)
  log "dom0 -> domU: $(echo "$out" | grep transmitted)"
  rx0=$(echo "$out" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
  log "$(nb_vif_summary 0)"
  local rx=$(domu_field "$line" received)
  [ "${rx:-0}" -ge 18 ] || { fail "guest got only ${rx:-0}/20 replies"; return; }
  [ "${rx0:-0}" -ge 18 ] || { fail "dom0 got only ${rx0:-0}/20 replies"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "guest->dom0 $rx/20, dom0->guest $rx0/20"
}
