# netbackd scenario: one guest with two vifs served by netbackd. The guest configures its
# second interface (eth1, vif/1) and pings dom0 through it; dom0's ARP broadcasts reach vif/0
# as well (its frontend's RX ring is filled by netbackd).
# PASS: both vifs 4/4; >= 18/20 pings over vif/1; dom0 pings the guest >= 18/20; vif/0 received.
SCENARIO_NAME=two-vifs
DOMU_ARGS="realxen.if=eth1 realxen.ping=10.99.0.1,20,90 realxen.netdev=30"
. /root/nb-common.sh

scenario() {
  start_netbackd || return
  nb_tap_up || return
  # Back to back: the guest configures eth1 about a second after its first vif connects.
  log "xl network-attach $DOMU (vif/0 and vif/1)"
  xl network-attach $DOMU script=vif-noop mac=00:16:3e:00:00:01 > /tmp/attach0.log 2>&1
  xl network-attach $DOMU script=vif-noop mac=00:16:3e:00:00:02 > /tmp/attach1.log 2>&1
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_states 1 4 4 60 || { fail "vif/1 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  local line
  line=$(wait_domu_line '^REALXEN-PING:' 200) || { fail "domU printed no REALXEN-PING line"; return; }
  log "domU (eth1): $line"
  grep -a 'REALXEN-DOMU: eth1 up\|REALXEN-DOMU: link' $DOMU_LOG | tr -d '\r' | sed 's/^/domU: /'
  local out=$(ping -c 20 -i 0.3 -W 3 $DOMU_IP 2>&1 | tail -3)
  local rx0=$(echo "$out" | sed -n 's/.* \([0-9]*\) received.*/\1/p')
  log "dom0 -> domU: $(echo "$out" | grep transmitted)"
  log "$(nb_vif_summary 0 1)"
  local d=$(domid) rx=$(domu_field "$line" received)
  local v0=$(nb_metric netbackd_vif_rx_packets_total "domid=\"$d\"" 'devid="0"')
  local v1=$(nb_metric netbackd_vif_tx_packets_total "domid=\"$d\"" 'devid="1"')
  [ "${rx:-0}" -ge 18 ] || { fail "only ${rx:-0}/20 replies over vif/1"; return; }
  [ "${rx0:-0}" -ge 18 ] || { fail "dom0 got only ${rx0:-0}/20 replies"; return; }
  [ "$v1" -ge 20 ] || { fail "vif/1 guest TX packets $v1"; return; }
  [ "$v0" -ge 1 ] || { fail "nothing delivered to vif/0"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "both 4/4; vif/1 ping $rx/20, dom0->guest $rx0/20; vif/0 received $v0 packets"
}
