# Shared by netbackd's realxen scenarios (copied into dom0 as /root/nb-common.sh by run.sh
# here; sourced by each scenario). Uses the harness helpers of ../shared/realxen/guest.
: "${NETBACKD_CMD:=netbackd run --config /etc/netbackd.toml}"
: "${NETBACKD_READY:=ip link show nbtap0 && nb_metrics | grep -q netbackd_group_iterations_total}"
NBTAP=nbtap0
DOM0_IP=10.99.0.1
DOMU_IP=10.99.0.2

# The daemon's Prometheus text (empty when it does not answer).
nb_metrics() {
  python3 - <<'PY' 2>/dev/null
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9750/metrics", timeout=5).read().decode())
PY
}

# nb_metric NAME 'label="x"' ... : sum of the samples of NAME whose labels contain all given.
nb_metric() {
  local name=$1; shift
  nb_metrics | awk -v n="$name" -v want="$*" '
    BEGIN { k = split(want, w, " ") }
    $1 ~ "^" n "\\{" { ok = 1; for (i = 1; i <= k; i++) if (w[i] != "" && index($1, w[i]) == 0) ok = 0
                       if (ok) s += $2 }
    END { printf "%d\n", s }'
}

# One line of per-vif counters for the log.
nb_vif_summary() {
  local d=$(domid)
  for dev in "$@"; do
    echo "vif $d.$dev: state=$(nb_metric netbackd_vif_state "domid=\"$d\"" "devid=\"$dev\"")" \
      "tx_packets=$(nb_metric netbackd_vif_tx_packets_total "domid=\"$d\"" "devid=\"$dev\"")" \
      "tx_bytes=$(nb_metric netbackd_vif_tx_bytes_total "domid=\"$d\"" "devid=\"$dev\"")" \
      "rx_packets=$(nb_metric netbackd_vif_rx_packets_total "domid=\"$d\"" "devid=\"$dev\"")" \
      "rx_bytes=$(nb_metric netbackd_vif_rx_bytes_total "domid=\"$d\"" "devid=\"$dev\"")" \
      "drops=$(nb_metric netbackd_vif_drops_total "domid=\"$d\"" "devid=\"$dev\"")"
  done
}

# The tap port gets dom0's address.
nb_tap_up() {
  ip addr add $DOM0_IP/24 dev $NBTAP && ip link set $NBTAP up || { fail "cannot configure $NBTAP in dom0"; return 1; }
  log "dom0: $(ip -br addr show $NBTAP)"
}

# Stops the daemon with SIGTERM (it must exit 0) and shows its grant-copy statistics.
nb_stop() {
  local pid=$(cat /tmp/netbackd.pid 2>/dev/null)
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null
  local t=0; while kill -0 "$pid" 2>/dev/null && [ $t -lt 30 ]; do sleep 0.5; t=$((t+1)); done
  kill -0 "$pid" 2>/dev/null && { log "netbackd did not stop within 15 s of SIGTERM"; return 1; }
  wait "$pid" 2>/dev/null; local rc=$?
  grep -E 'grant copy|stopped' "$NETBACKD_LOG" | sed 's/^/netbackd: /'
  log "netbackd exited rc=$rc after SIGTERM"
  # With the privcmd path configured, the traffic must have gone through hypercalls.
  if grep -q '^grant_copy *= *"privcmd"' /etc/netbackd.toml; then
    local hc=$(sed -n 's/.*grant copy privcmd: \([0-9]*\) hypercalls.*/\1/p' "$NETBACKD_LOG" | head -1)
    log "privcmd path: ${hc:-0} hypercalls"
    [ "${hc:-0}" -gt 0 ] || { log "privcmd configured but no hypercall was made"; return 1; }
  fi
  return $rc
}

# Time from `netbackd run` to the first Connected, from the daemon's own log.
nb_connect_time() {
  grep -m1 'vif connected' "$NETBACKD_LOG" | awk '{print $1}'
}
