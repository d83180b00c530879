# netbackd scenario: the xenbus handshake with Linux's xen-netfront, attach and detach.
# PASS: within 30 s of `xl network-attach` backend and frontend are Connected (4/4), the
# daemon's metrics say so, `xl network-detach` ends without libxl's timeout (backend Closed),
# and SIGTERM stops the daemon cleanly.
SCENARIO_NAME=handshake
DOMU_ARGS="realxen.wait=120"
. /root/nb-common.sh
MAC=00:16:3e:00:00:01

scenario() {
  local t0=$(cut -d' ' -f1 /proc/uptime)
  start_netbackd || return
  attach_vif $MAC
  wait_states 0 4 4 30 || { fail "vif/0 not 4/4 30 s after attach: backend=$LAST_BE frontend=$LAST_FE"; return; }
  local dt=$(awk -v t="$t0" '{printf "%.1f", $1-t}' /proc/uptime)
  wait_attach || { fail "xl network-attach failed"; return; }
  log "handshake: Connected both sides ${dt}s after netbackd was started"
  grep -E 'new vif|vif connected' "$NETBACKD_LOG" | sed 's/^/netbackd: /'
  local st=$(nb_metric netbackd_vif_state "domid=\"$(domid)\"")
  [ "$st" = 4 ] || { fail "metrics: netbackd_vif_state=$st, want 4"; return; }
  for k in feature-sg feature-gso-tcpv4 feature-rx-copy feature-split-event-channels multi-queue-max-queues; do
    log "backend $k=$(xenstore-read $(be_path 0)/$k 2>/dev/null)"
  done
  log "frontend: $(for k in tx-ring-ref rx-ring-ref event-channel-tx event-channel-rx event-channel request-rx-copy feature-sg feature-gso-tcpv4 multi-queue-num-queues; do v=$(xenstore-read $(fe_path 0)/$k 2>/dev/null) && echo -n "$k=$v "; done)"
  sleep 2
  local be=$(be_path 0) fe=$(fe_path 0)
  ( prev=; while :; do b=$(xenstore-read $be/state 2>/dev/null || echo -); f=$(xenstore-read $fe/state 2>/dev/null || echo -)
      [ "$b/$f" != "$prev" ] && echo "[dom0 +$(ts)s] detach: backend=$b frontend=$f"; prev="$b/$f"
      [ "$b$f" = "--" ] && break; sleep 0.1; done ) > /tmp/detach-states.log 2>&1 &
  local wp=$! t1=$(cut -d' ' -f1 /proc/uptime)
  xl -vvv network-detach $DOMU 0 > /tmp/detach.log 2>&1; local rc=$?
  local dd=$(awk -v t="$t1" '{printf "%.1f", $1-t}' /proc/uptime)
  sleep 1; kill $wp 2>/dev/null; cat /tmp/detach-states.log
  grep -qE 'Timeout reached|unable to remove' /tmp/detach.log && { fail "detach: libxl timed out waiting for Closed (${dd}s)"; return; }
  [ $rc -eq 0 ] || { fail "xl network-detach rc=$rc"; return; }
  grep 'detach requested\|frontend closed' "$NETBACKD_LOG" | sed 's/^/netbackd: /'
  netbackd_alive || { fail "netbackd died"; return; }
  nb_stop || { fail "netbackd did not stop cleanly on SIGTERM"; return; }
  pass "4/4 ${dt}s after netbackd start; detach clean in ${dd}s; SIGTERM clean"
}
