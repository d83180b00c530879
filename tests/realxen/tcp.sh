# netbackd scenario: TCP bulk transfers through netbackd, both ways at once, with Linux's
# xen-netfront (scatter-gather, GSO, checksum offload negotiated): the guest serves a 24 MB
# random blob that dom0 downloads, and downloads a 24 MB blob that dom0 serves.
# PASS: both transfers complete with sizes and MD5 sums equal at both ends.
SCENARIO_NAME=tcp
SIZE=${TCP_BYTES:-24000000}
DOMU_ARGS="realxen.serve=8080,$SIZE realxen.fetch=http://10.99.0.1:8000/blob realxen.ping=10.99.0.1,3,90 realxen.netdev=30"
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
  local fetch
  fetch=$(wait_domu_line '^REALXEN-FETCH:' 300) || { fail "domU printed no REALXEN-FETCH line"; return; }
  log "domU: $fetch"
  kill $hp 2>/dev/null
  log "$(nb_vif_summary 0)"
  log "drops: $(nb_metrics | grep '^netbackd_vif_drops_total' | awk '$2 > 0' | tr '\n' ' ')"
  local want_guest=$(domu_field "$serve" md5)
  [ "$got" = "$SIZE $want_guest" ] || { fail "guest->dom0: got '$got', guest says $SIZE $want_guest"; return; }
  [ "$(domu_field "$fetch" md5)" = "$md5_dom0" ] && [ "$(domu_field "$fetch" size)" = "$SIZE" ] \
    || { fail "dom0->guest: guest got $(domu_field "$fetch" size) bytes md5 $(domu_field "$fetch" md5), dom0 sent $SIZE md5 $md5_dom0"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "guest->dom0 $SIZE bytes md5 $want_guest (${secs}s); dom0->guest $SIZE bytes md5 $md5_dom0"
}
