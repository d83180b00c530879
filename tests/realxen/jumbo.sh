# netbackd scenario: MTU 9000 end to end with Linux's xen-netfront. The guest sets MTU 9000
# (realxen.mtu); its vif gets mtu=9000 from the toolstack (xl network-attach mtu=9000, which
# libxl writes as the backend's mtu key); dom0's side is a veth pair at MTU 9000 whose one end
# is netbackd's port (DPDK net_pcap: DPDK 22.11's net_tap reports 1522-byte frames at most)
# and whose other end has dom0's address. The veth's checksum offloads are turned off (an
# SIOCETHTOOL ioctl from python: dom0 has no ethtool), so dom0's kernel writes real TCP
# checksums and checks the ones it receives.
# - dom0 pings the guest with 8000-byte echoes that must not fragment (-M do);
# - the guest downloads a 16 MB blob from dom0 (realxen.fetch; TCP at MTU 9000, GRO toward
#   the guest) and dom0 one from the guest (realxen.serve), MD5 compared at both ends.
# PASS: >= 18 of 20 big echoes return; both blobs arrive whole with equal MD5; the vif's
# largest frames went through (no too_big drops).
SCENARIO_NAME=jumbo
SIZE=${JUMBO_BYTES:-16000000}
DOMU_ARGS="realxen.mtu=9000 realxen.serve=8080,$SIZE realxen.ping=10.99.0.1,3,90 realxen.fetch=http://10.99.0.1:8000/blob realxen.netdev=30"
VETH=nbj0
NETBACKD_CMD="netbackd run --config /tmp/netbackd-jumbo.toml"
NETBACKD_READY="nb_metrics | grep -q netbackd_group_iterations_total"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

# ethtool -K DEV tx off rx off, without ethtool: ETHTOOL_STXCSUM (0x17), ETHTOOL_SRXCSUM (0x15).
no_csum_offload() {
  python3 - "$1" <<'PY'
import ctypes, fcntl, socket, struct, sys
s = socket.socket()
for cmd in (0x17, 0x15):
    ev = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
    ifr = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(ev)).ljust(40, b"\0")
    fcntl.ioctl(s.fileno(), 0x8946, ifr)
PY
}

scenario() {
  ip link add $VETH type veth peer name ${VETH}p || { fail "cannot create a veth pair in dom0"; return; }
  ip link set $VETH mtu 9000 up && ip link set ${VETH}p mtu 9000 up || { fail "veth mtu 9000"; return; }
  ip addr add $DOM0_IP/24 dev ${VETH}p
  no_csum_offload ${VETH}p || { fail "cannot turn the veth's checksum offloads off"; return; }
  log "dom0: $(ip -br link show ${VETH}p) $(ip -br addr show ${VETH}p)"
  sed -e "s|devargs = \"net_tap0,iface=nbtap0\"|devargs = \"net_pcap0,rx_iface_in=$VETH,tx_iface=$VETH\"\nmtu = 9000|" \
    /etc/netbackd.toml > /tmp/netbackd-jumbo.toml
  grep -q 'mtu = 9000' /tmp/netbackd-jumbo.toml || { fail "config: no port line to replace"; return; }
  mkdir -p /root/www && head -c $SIZE /dev/urandom > /root/www/blob
  local md5_dom0=$(md5sum /root/www/blob | cut -d' ' -f1)
  ( cd /root/www && exec python3 -m http.server 8000 --bind $DOM0_IP ) > /tmp/httpd.log 2>&1 &
  local hp=$!
  start_netbackd || return
  attach_vif $MAC mtu=9000
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  log "backend mtu key: $(xenstore-read $(be_path 0)/mtu 2>/dev/null || echo none)"
  wait_domu_line '^REALXEN-DOMU: .*mtu' 120 | sed 's/^/domU: /'
  local serve
  serve=$(wait_domu_line '^REALXEN-SERVE:' 200) || { fail "domU printed no REALXEN-SERVE line"; return; }
  wait_domu_line '^REALXEN-PING:' 120 | sed 's/^/domU: /'
  ping -c 20 -i 0.2 -W 3 -M do -s 8000 $DOMU_IP > /tmp/bigping.log 2>&1
  local prx=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' /tmp/bigping.log)
  log "dom0 -> guest 8000-byte echoes (no fragmenting): $(grep transmitted /tmp/bigping.log)"
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
  fetch=$(wait_domu_line '^REALXEN-FETCH:' 300) || { fail "the guest's download from dom0 did not finish"; return; }
  kill $hp 2>/dev/null
  log "guest downloaded from dom0: $fetch (dom0 sent $SIZE md5 $md5_dom0)"
  log "$(nb_vif_summary 0)"
  local gro_f=$(nb_metric netbackd_vif_rx_gro_total 'kind="frames"') gro_s=$(nb_metric netbackd_vif_rx_gro_total 'kind="segments"')
  local too_big=$(nb_metric netbackd_vif_drops_total 'reason="too_big"')
  log "GRO toward the guest: $gro_f frames of $gro_s segments; too_big drops: $too_big"
  log "drops: $(nb_metrics | grep -E '^netbackd_(vif|port)_drops_total' | awk '$2 > 0' | tr '\n' ' ')"
  [ "$(domu_field "$fetch" size)" = "$SIZE" ] && [ "$(domu_field "$fetch" md5)" = "$md5_dom0" ] \
    || { fail "dom0->guest: guest got $(domu_field "$fetch" size) bytes md5 $(domu_field "$fetch" md5), dom0 sent $SIZE md5 $md5_dom0"; return; }
  local want_guest=$(domu_field "$serve" md5)
  [ "$got" = "$SIZE $want_guest" ] || { fail "guest->dom0: got '$got', guest says $SIZE $want_guest"; return; }
  [ "${prx:-0}" -ge 18 ] || { fail "only ${prx:-0}/20 8000-byte echoes returned"; return; }
  [ "${too_big:-0}" -eq 0 ] || { fail "$too_big frames dropped as too big for the vif"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "MTU 9000: dom0->guest $prx/20 x 8000 B echoes unfragmented; TCP dom0->guest $SIZE bytes md5 $md5_dom0 both ends (GRO $gro_f frames of $gro_s segments); TCP guest->dom0 $SIZE bytes md5 $want_guest both ends (${secs}s)"
}
