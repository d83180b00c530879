# realxen scenario: xen::linux against the real xen-netfront. The binary passed to run.sh as
# --netbackd is xen/examples/linux-guest-check: a stand-in backend for one vif that maps the
# guest's rings, binds its event channels, grant-copies its first TX buffer (gntdev and privcmd)
# and writes into its first RX buffer, checking bytes against gntdev mappings.
#   ../shared/realxen/run.sh --netbackd target/release/examples/linux-guest-check \
#       --scenario tests/realxen/xen-linux-guest.sh --timeout 300
# PASS: the binary exits 0 and every CHECK line says ok.
SCENARIO_NAME=xen-linux-guest
# The domU pings dom0 (nobody answers): its ARP requests are the TX buffers copied.
DOMU_ARGS="realxen.ping=10.99.0.1,3,5 realxen.wait=120"
NETBACKD_CMD=/usr/local/bin/netbackd
scenario() {
  start_netbackd || return
  attach_vif 00:16:3e:00:00:01
  local t=0
  while netbackd_alive && [ $t -lt 150 ]; do sleep 1; t=$((t+1)); done
  wait_attach
  netbackd_alive && { fail "linux-guest-check still running after ${t}s"; return; }
  wait $NETBACKD_PID 2>/dev/null; local rc=$?
  sed 's/^/  /' $NETBACKD_LOG
  local n_ok n_fail
  n_ok=$(grep -c '^CHECK .*: ok' $NETBACKD_LOG)
  n_fail=$(grep -c '^CHECK .*: FAIL' $NETBACKD_LOG)
  if ! grep -q '^LINUX-GUEST-CHECK: all ok' $NETBACKD_LOG || [ "$n_fail" -ne 0 ]; then
    fail "linux-guest-check: $n_ok ok, $n_fail FAIL: $(grep -m1 '^CHECK .*: FAIL' $NETBACKD_LOG | cut -c1-200)"
    return
  fi
  pass "linux-guest-check: all $n_ok checks ok"
}
