# netbackd scenario: restarting netbackd with the guest attached, on real Xen with Linux's
# xen-netfront. The guest serves a random blob over TCP that dom0 downloads through
# netbackd; once 10% has arrived netbackd is killed with SIGKILL and started again (the
# kernel closed its event channels and grant maps; the new daemon resumes the vif), once
# 50% has arrived it is stopped with SIGTERM and started again. The vif's backend and
# frontend states are watched throughout. The dom0 end of the uplink (net_tap)
# goes away with each daemon and is configured again after each start: the TCP connection
# in dom0 rides it out on retransmissions.
# PASS: the download completes with the guest's MD5, the vif never leaves 4/4, and each
# new daemon logs "vif resumed".
SCENARIO_NAME=restart
SIZE=${RESTART_BYTES:-48000000}
DOMU_ARGS="realxen.serve=8080,$SIZE realxen.netdev=30"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

# got_pct: percent of the blob downloaded so far (the downloader writes its count).
got_pct() { local n=$(cat /tmp/got.count 2>/dev/null); echo $(( ${n:-0} * 100 / SIZE )); }

# wait_pct P TIMEOUT: until P% has arrived; fails if the download ended first.
wait_pct() {
  local t=0
  while [ "$(got_pct)" -lt "$1" ]; do
    kill -0 $GETPID 2>/dev/null || { fail "the download ended before $1% ($(tail -1 /tmp/get.log)); raise RESTART_BYTES"; return 1; }
    [ $t -ge $(($2 * 10)) ] && { fail "the download did not reach $1% within $2 s"; return 1; }
    sleep 0.1; t=$((t+1))
  done
}

# watch_state PATH: every value PATH takes (a xenstore watch; the first event is the
# registration), appended to /tmp/states.log as "PATH VALUE".
watch_state() {
  xenstore-watch "$1" | while read -r p _; do
    echo "$p $(xenstore-read "$p" 2>/dev/null)"
  done >> /tmp/states.log
}

# restart_daemon HOW: stops netbackd (KILL or TERM), starts it again, configures the tap.
restart_daemon() {
  local pid=$(cat /tmp/netbackd.pid) t0=$(cut -d' ' -f1 /proc/uptime)
  if [ "$1" = KILL ]; then
    kill -KILL $pid; wait $pid 2>/dev/null
  else
    nb_stop || { fail "netbackd did not stop cleanly on SIGTERM"; return 1; }
  fi
  cat "$NETBACKD_LOG" >> /tmp/netbackd-all.log
  log "netbackd stopped with SIG$1 at $(got_pct)% of the download"
  start_netbackd || return 1
  nb_tap_up || return 1
  local t1=$(cut -d' ' -f1 /proc/uptime)
  log "netbackd running again after $(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.1f", b-a}') s"
  local t=0
  until grep -q 'vif resumed' "$NETBACKD_LOG"; do
    [ $t -ge 100 ] && { fail "the new netbackd did not resume the vif: $(grep -E 'refused|WARN' "$NETBACKD_LOG" | tail -2)"; return 1; }
    sleep 0.1; t=$((t+1))
  done
  log "netbackd: $(grep 'vif resumed' "$NETBACKD_LOG" | tail -1 | cut -c1-300)"
}

scenario() {
  start_netbackd || return
  nb_tap_up || return
  attach_vif $MAC
  wait_states 0 4 4 60 || { fail "vif/0 not 4/4: backend=$LAST_BE frontend=$LAST_FE"; return; }
  wait_attach
  local serve
  serve=$(wait_domu_line '^REALXEN-SERVE:' 200) || { fail "domU printed no REALXEN-SERVE line"; return; }
  log "domU: $serve"
  local be=$(be_path 0) fe=$(fe_path 0)
  watch_state $be/state & local sp1=$!
  watch_state $fe/state & local sp2=$!
  local t1=$(cut -d' ' -f1 /proc/uptime)
  python3 - > /tmp/get.log 2>&1 <<PY &
import hashlib, os, urllib.request
h = hashlib.md5(); n = 0
with urllib.request.urlopen("http://$DOMU_IP:8080/blob", timeout=300) as r:
    while True:
        b = r.read(1 << 16)
        if not b: break
        h.update(b); n += len(b)
        with open("/tmp/got.tmp", "w") as f: f.write(str(n))
        os.replace("/tmp/got.tmp", "/tmp/got.count")
print(n, h.hexdigest())
PY
  GETPID=$!
  wait_pct 10 120 || return
  restart_daemon KILL || return
  wait_pct 50 240 || return
  restart_daemon TERM || return
  local t=0
  while kill -0 $GETPID 2>/dev/null; do
    [ $t -ge 2400 ] && { fail "the download did not finish ($(got_pct)%)"; return; }
    sleep 0.1; t=$((t+1))
  done
  pkill -P $sp1; pkill -P $sp2
  local got=$(tail -1 /tmp/get.log) secs=$(awk -v t="$t1" '{printf "%.1f", $1-t}' /proc/uptime)
  local samples=$(wc -l < /tmp/states.log) other=$(grep -vc ' 4$' /tmp/states.log)
  log "dom0 downloaded from the guest: $got in ${secs}s across a SIGKILL and a SIGTERM restart"
  log "vif state changes seen by xenstore watches: $samples, $other not 4 ($(grep -v ' 4$' /tmp/states.log | tr '\n' ' '))"
  log "$(nb_vif_summary 0)"
  local want=$(domu_field "$serve" md5)
  [ "$got" = "$SIZE $want" ] || { fail "guest->dom0: got '$got', guest says $SIZE $want"; return; }
  [ "$samples" -ge 2 ] && [ "$other" -eq 0 ] || { fail "the vif left 4/4 during the restarts"; return; }
  nb_stop || { fail "netbackd did not stop cleanly"; return; }
  pass "TCP guest->dom0 $SIZE bytes md5 $want across kill -9 and SIGTERM restarts of netbackd (${secs}s); vif states never left 4 ($samples watch events)"
}
