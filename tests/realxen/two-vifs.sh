# netbackd scenario: one guest with two vifs served by netbackd, traffic on both. The guest
# configures eth0 (vif/0, 10.99.0.2) and pings dom0 (realxen.ping); once its actions are done,
# eth1 (vif/1, 10.99.0.3) is configured through the guest's console shell (its pty from
# xenstore; the harness configures one interface only) and pings dom0 from eth1. dom0 pings
# both addresses. arp_ignore=1 in the guest keeps each address answered on its own vif.
# PASS: both vifs 4/4; >= 18/20 replies on each guest interface and on each dom0 ping; both
# vifs' guest-TX counters in netbackd's metrics show the pings.
SCENARIO_NAME=two-vifs
DOMU_ARGS="realxen.ping=10.99.0.1,20,90 realxen.netdev=30"
. /root/nb-common.sh
ETH1_IP=10.99.0.3

received() { sed -n 's/.* \([0-9]*\) \(packets \)\{0,1\}received.*/\1/p' | head -1; }

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif 00:16:3e:00:00:01
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  attach_vif 00:16:3e:00:00:02
  wait_states 1 4 4 60 || { fail "vif/1 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  local line
  line=$(wait_domu_line '^REALXEN-PING:' 200) || { fail "domU printed no REALXEN-PING line"; return; }
  log "domU eth0 (vif/0): $line"
  wait_domu_line 'REALXEN-DOMU: actions done' 60 > /dev/null || { fail "domU actions never finished"; return; }
  local tty=$(xenstore-read /local/domain/$(domid)/console/tty 2>/dev/null)
  [ -c "$tty" ] || { fail "no console pty for the domU ($tty)"; return; }
  sleep 2
  printf '%s\n' "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; ip link set eth1 up && ip addr add $ETH1_IP/24 dev eth1; sleep 2; echo REALXEN-''ETH1: \$(ping -c 20 -W 2 -I eth1 $DOM0_IP | grep transmitted)" > "$tty"
  local l1
  l1=$(wait_domu_line '^REALXEN-ETH1:' 120) || { fail "no REALXEN-ETH1 line from the guest's console"; return; }
  log "domU eth1 (vif/1): $l1"
  local o0=$(ping -c 20 -i 0.3 -W 3 $DOMU_IP 2>&1 | grep transmitted)
  local o1=$(ping -c 20 -i 0.3 -W 3 $ETH1_IP 2>&1 | grep transmitted)
  log "dom0 -> eth0: $o0"
  log "dom0 -> eth1: $o1"
  log "$(nb_vif_summary 0 1 | tr '\n' ';')"
  local h0=$(nb_metric netbackd_group_handoffs_total 'group="0"' 'result="sent"')
  local h1=$(nb_metric netbackd_group_handoffs_total 'group="1"' 'result="sent"')
  log "frames handed between groups: from group 0 $h0, from group 1 $h1"
  local d=$(domid)
  local t0=$(nb_metric netbackd_vif_tx_packets_total "domid=\"$d\"" 'devid="0"')
  local t1=$(nb_metric netbackd_vif_tx_packets_total "domid=\"$d\"" 'devid="1"')
  local r0=$(domu_field "$line" received) r1=$(echo "$l1" | received)
  local d0=$(echo "$o0" | received) d1=$(echo "$o1" | received)
  [ "${r0:-0}" -ge 18 ] || { fail "eth0 (vif/0): ${r0:-0}/20 replies"; return; }
  [ "${r1:-0}" -ge 18 ] || { fail "eth1 (vif/1): ${r1:-0}/20 replies"; return; }
  [ "${d0:-0}" -ge 18 ] && [ "${d1:-0}" -ge 18 ] || { fail "dom0 pings: eth0 ${d0:-0}/20, eth1 ${d1:-0}/20"; return; }
  [ "$t0" -ge 20 ] && [ "$t1" -ge 20 ] || { fail "guest TX in metrics: vif/0 $t0, vif/1 $t1"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "both 4/4; guest eth0 $r0/20, eth1 $r1/20; dom0 -> eth0 $d0/20, -> eth1 $d1/20; guest TX vif/0 $t0, vif/1 $t1 packets; handoffs g0 $h0, g1 $h1"
}
