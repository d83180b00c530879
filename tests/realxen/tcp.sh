# netbackd scenario: bulk transfers through netbackd with Linux's xen-netfront (scatter-
# gather, GSO, checksum offload negotiated), both ways, MD5 compared at both ends.
# Guest -> dom0: the guest serves a 24 MB random blob over TCP (realxen.serve) that dom0
# downloads. Dom0 -> guest: dom0 serves a 24 MB random blob that the guest downloads; the
# harness's own realxen.fetch cannot store it (the domU initramfs has no /tmp), so the
# command is typed into the guest's console shell (its pty from xenstore) once the domU's
# actions are done. Then 320 ICMP echoes of 65000 bytes (45 fragments each way) whose every
# returned byte ping compares.
# PASS: both blobs arrive whole with equal MD5; >= 95% of the big echoes return, none wrong.
SCENARIO_NAME=tcp
SIZE=${TCP_BYTES:-24000000}
DOMU_ARGS="realxen.serve=8080,$SIZE realxen.ping=10.99.0.1,3,90 realxen.netdev=30"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

scenario() {
  mkdir -p /root/www && head -c $SIZE /dev/urandom > /root/www/blob
  local md5_dom0=$(md5sum /root/www/blob | cut -d' ' -f1)
  start_netbackd || return
  nb_tap_up || return
  ( cd /root/www && exec python3 -m http.server 8000 --bind $DOM0_IP ) > /tmp/httpd.log 2>&1 &
  local hp=$!
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
  # Dom0 -> guest, typed into the guest's console shell.
  wait_domu_line 'REALXEN-DOMU: actions done' 120 > /dev/null || { fail "domU actions never finished"; return; }
  local tty=$(xenstore-read /local/domain/$(domid)/console/tty 2>/dev/null)
  [ -c "$tty" ] || { fail "no console pty for the domU ($tty)"; return; }
  sleep 2
  t1=$(cut -d' ' -f1 /proc/uptime)
  printf '%s\n' "mkdir -p /tmp && wget -q -O /tmp/in http://$DOM0_IP:8000/blob; echo REALXEN-''GOT: size=\$(wc -c </tmp/in) md5=\$(md5sum /tmp/in | cut -d' ' -f1)" > "$tty"
  local gotline
  gotline=$(wait_domu_line '^REALXEN-GOT:' 300) || { fail "the guest's download from dom0 did not finish"; return; }
  local gsecs=$(awk -v t="$t1" '{printf "%.1f", $1-t}' /proc/uptime)
  kill $hp 2>/dev/null
  log "guest downloaded from dom0: $gotline in ${gsecs}s (dom0 sent $SIZE md5 $md5_dom0)"
  [ "$(domu_field "$gotline" size)" = "$SIZE" ] && [ "$(domu_field "$gotline" md5)" = "$md5_dom0" ] \
    || { fail "dom0->guest: guest got $(domu_field "$gotline" size) bytes md5 $(domu_field "$gotline" md5), dom0 sent $SIZE md5 $md5_dom0"; return; }
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
  pass "TCP guest->dom0 $SIZE bytes md5 $want_guest both ends (${secs}s); TCP dom0->guest $SIZE bytes md5 $md5_dom0 both ends (${gsecs}s); ICMP dom0->guest->dom0 $prx/320 x 65000 B echoes, 0 wrong bytes (${psecs}s)"
}
