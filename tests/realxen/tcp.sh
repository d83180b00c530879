# netbackd scenario: bulk transfers through netbackd with Linux's xen-netfront (scatter-
# gather, GSO, checksum offload negotiated). Guest -> dom0: the guest serves a 24 MB random
# blob over TCP that dom0 downloads (MD5 compared with the guest's). Dom0 -> guest: the
# harness's domU cannot store a download (realxen.fetch fails: its initramfs has no /tmp), so
# dom0 sends 20.8 MB of ICMP echo payload (320 x 65000 bytes, 45 fragments each) that the guest
# echoes back; ping compares every returned byte ("wrong data byte" on a mismatch).
# PASS: the TCP blob arrives whole with equal MD5; >= 95% of the big echoes return, none with
# wrong data.
SCENARIO_NAME=tcp
SIZE=${TCP_BYTES:-24000000}
DOMU_ARGS="realxen.serve=8080,$SIZE realxen.ping=10.99.0.1,3,90 realxen.netdev=30"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif $MAC
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  local serve
  serve=$(wait_domu_line '^REALXEN-SERVE:' 200) || { fail "domU printed no REALXEN-SERVE line"; return; }
  log "domU: $serve"
  wait_domu_line '^REALXEN-PING:' 120 | sed 's/^/domU: /'
  local t1=$(cut -d' ' -f1 /proc/uptime)
  python3 - > /tmp/get.log 2>&1 <<PY
import hashlib, urllib.request
h = hashlib.md5(); n = 0
with urllib.request.urlopen("http://$DOMU_IP:8080/blob", timeout=120) as r:
    while True:
        b = r.read(1 << 16)
        if not b: break
        h.update(b); n += len(b)
print(n, h.hexdigest())
PY
  local got=$(tail -1 /tmp/get.log) secs=$(awk -v t="$t1" '{printf "%.1f", $1-t}' /proc/uptime)
  log "dom0 downloaded from the guest: $got in ${secs}s"
  t1=$(cut -d' ' -f1 /proc/uptime)
  ping -c 320 -s 65000 -i 0.05 -W 10 $DOMU_IP > /tmp/bigping.log 2>&1
  local psecs=$(awk -v t="$t1" '{printf "%.1f", $1-t}' /proc/uptime)
  local prx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/bigping.log)
  local wrong=$(grep -c 'wrong data' /tmp/bigping.log)
  log "dom0 -> guest -> dom0: $(grep transmitted /tmp/bigping.log) in ${psecs}s; wrong-data lines: $wrong"
  log "$(nb_vif_summary 0)"
  log "drops: $(nb_metrics | grep '^netbackd_vif_drops_total' | awk '$2 > 0' | tr '\n' ' ')"
  local want_guest=$(domu_field "$serve" md5)
  [ "$got" = "$SIZE $want_guest" ] || { fail "guest->dom0: got '$got', guest says $SIZE $want_guest"; return; }
  [ "$wrong" -eq 0 ] || { fail "big echoes came back with wrong data ($wrong lines)"; return; }
  [ "${prx:-0}" -ge 304 ] || { fail "only ${prx:-0}/320 big echoes returned"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "TCP guest->dom0 $SIZE bytes md5 $want_guest both ends (${secs}s); ICMP dom0->guest->dom0 $prx/320 x 65000 B echoes, 0 wrong bytes (${psecs}s)"
}
