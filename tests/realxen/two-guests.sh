# netbackd scenario (run with the "groups" config: engine.groups = 2): two guests, two vifs
# each, against the real xen-netfront. Guest A is the harness's domU; guest B (domu2) is made
# here from the same kernel and initramfs. Attached in the order A/0, B/0, A/1, B/1, the
# least-loaded placement puts A's vifs in group 0 and B's in group 1, so every guest-to-guest
# frame crosses groups through the handoff rings.
#   eth0 (10.99.0.x): B pings A, then fetches a 2 MB blob A serves over HTTP (TCP);
#   eth1 (10.99.1.x, configured through each guest's console): B pings A and fetches the blob.
# PASS: all four vifs 4/4; >= 18/20 replies on each path; both downloads byte-exact (md5 equal
# to what A reports serving); frames handed over in both directions in netbackd's metrics.
SCENARIO_NAME=two-guests
DOMU_ARGS="realxen.serve=8080,2000000"
. /root/nb-common.sh
B=domu2
B_LOG=/var/log/xen/guest-$B.log

received() { sed -n 's/.* \([0-9]*\) \(packets \)\{0,1\}received.*/\1/p' | head -1; }

# wait_line FILE REGEX SECONDS: the last line of FILE matching REGEX, once there is one.
wait_line() {
  local t=0
  while [ $t -lt "$3" ]; do
    grep -aE "$2" "$1" 2>/dev/null | tail -1 | tr -d '\r' | grep . && return 0
    sleep 1; t=$((t+1))
  done; return 1
}

# attach_to NAME DEV MAC: `xl network-attach` to guest NAME, then wait for backend and
# frontend Connected.
attach_to() {
  local name=$1 dev=$2 mac=$3 d
  d=$(xl domid "$name")
  log "xl network-attach $name script=vif-noop mac=$mac"
  xl network-attach "$name" script=vif-noop mac="$mac" > "/tmp/attach-$name-$dev.log" 2>&1 ||
    { fail "network-attach $name: $(tr '\n' ' ' < /tmp/attach-$name-$dev.log)"; return 1; }
  local t=0 be fe
  while [ $t -lt 120 ]; do
    be=$(xenstore-read /local/domain/0/backend/vif/$d/$dev/state 2>/dev/null)
    fe=$(xenstore-read /local/domain/$d/device/vif/$dev/state 2>/dev/null)
    [ "$be" = 4 ] && [ "$fe" = 4 ] && { log "$name vif/$dev 4/4"; return 0; }
    sleep 0.5; t=$((t+1))
  done
  fail "$name vif/$dev not 4/4: backend=$be frontend=$fe"; return 1
}

# console NAME LINE: types a shell line on guest NAME's console.
console() {
  local tty
  tty=$(xenstore-read /local/domain/$(xl domid "$1")/console/tty 2>/dev/null)
  [ -c "$tty" ] || { fail "no console pty for $1 ($tty)"; return 1; }
  printf '%s\n' "$2" > "$tty"
}

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_to $DOMU 0 00:16:3e:00:0a:01 || return
  local serve
  serve=$(wait_domu_line '^REALXEN-SERVE:' 200) || { fail "guest A never served its blob"; return; }
  log "guest A: $serve"
  local md5=$(domu_field "$serve" md5)
  cat > /tmp/domu2.cfg <<CFG
name = "$B"
type = "pv"
kernel = "/root/domu/vmlinuz"
ramdisk = "/root/domu/initrd.gz"
extra = "console=hvc0 loglevel=4 realxen.ip=10.99.0.12/24 realxen.ping=10.99.0.2,20,90 realxen.fetch=http://10.99.0.2:8080/blob"
memory = 256
vcpus = 1
CFG
  xl create /tmp/domu2.cfg > /tmp/create2.log 2>&1 || { fail "xl create $B: $(tr '\n' ' ' < /tmp/create2.log)"; return; }
  log "guest B created, domid $(xl domid $B)"
  attach_to $B 0 00:16:3e:00:0b:01 || return
  local ping0 fetch0
  ping0=$(wait_line $B_LOG '^REALXEN-PING:' 240) || { fail "guest B printed no REALXEN-PING line"; return; }
  log "guest B eth0 -> A: $ping0"
  fetch0=$(wait_line $B_LOG '^REALXEN-FETCH:' 240) || { fail "guest B printed no REALXEN-FETCH line"; return; }
  log "guest B eth0 fetch: $fetch0"
  wait_line $B_LOG 'REALXEN-DOMU: actions done' 60 > /dev/null || { fail "guest B's actions never finished"; return; }

  # The second vifs: A/1 then B/1 (groups 0 and 1), addressed through the consoles.
  attach_to $DOMU 1 00:16:3e:00:0a:02 || return
  attach_to $B 1 00:16:3e:00:0b:02 || return
  sleep 3
  console $DOMU "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; ip link set eth1 up && ip addr add 10.99.1.2/24 dev eth1 && echo REALXEN-''ETH1: up" || return
  wait_domu_line '^REALXEN-ETH1: up' 60 > /dev/null || { fail "guest A's eth1 not configured"; return; }
  console $B "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore; ip link set eth1 up && ip addr add 10.99.1.12/24 dev eth1; sleep 2; ping -c 1 -W 30 10.99.1.2 > /dev/null; echo REALXEN-''ETH1PING: \$(ping -c 20 -W 2 -I eth1 10.99.1.2 | grep transmitted); if wget -q -O /tmp/f1 http://10.99.1.2:8080/blob; then echo REALXEN-''ETH1FETCH: md5=\$(md5sum /tmp/f1 | cut -d' ' -f1); else echo REALXEN-''ETH1FETCH: failed=1; fi" || return
  local ping1 fetch1
  ping1=$(wait_line $B_LOG '^REALXEN-ETH1PING:' 180) || { fail "guest B: no eth1 ping result"; return; }
  log "guest B eth1 -> A: $ping1"
  fetch1=$(wait_line $B_LOG '^REALXEN-ETH1FETCH:' 240) || { fail "guest B: no eth1 fetch result"; return; }
  log "guest B eth1 fetch: $fetch1"

  local h0=$(nb_metric netbackd_group_handoffs_total 'group="0"' 'result="sent"')
  local h1=$(nb_metric netbackd_group_handoffs_total 'group="1"' 'result="sent"')
  log "frames handed between groups: from group 0 $h0, from group 1 $h1"
  log "guest B console (tail): $(tail -5 $B_LOG | tr '\r\n' '  ' | cut -c1-400)"
  local r0=$(domu_field "$ping0" received) r1=$(echo "$ping1" | received)
  local m0=$(domu_field "$fetch0" md5) m1=$(domu_field "$fetch1" md5)
  [ "${r0:-0}" -ge 18 ] || { fail "B -> A on eth0: ${r0:-0}/20 replies"; return; }
  [ "${r1:-0}" -ge 18 ] || { fail "B -> A on eth1: ${r1:-0}/20 replies"; return; }
  [ -n "$md5" ] && [ "$m0" = "$md5" ] || { fail "eth0 download md5 ${m0:-none}, served $md5"; return; }
  [ "$m1" = "$md5" ] || { fail "eth1 download md5 ${m1:-none}, served $md5"; return; }
  [ "$h0" -gt 100 ] && [ "$h1" -gt 100 ] || { fail "handoffs: group 0 $h0, group 1 $h1"; return; }
  xl destroy $B
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "A and B 2 vifs each, 4/4; B -> A ping eth0 $r0/20, eth1 $r1/20; 2 MB over TCP on eth0 and eth1, md5 $md5 both; handoffs g0 $h0, g1 $h1"
}
