# realxen scenario: runs the xen::linux self-check (xen/examples/linux-check, passed to run.sh
# as --netbackd) in dom0 against dom0 itself; no guest cooperation, no vif.
#   ../shared/realxen/run.sh --netbackd target/release/examples/linux-check \
#       --scenario tests/realxen/xen-linux-check.sh --timeout 300
# PASS: the binary exits 0 and every CHECK line says ok.
SCENARIO_NAME=xen-linux-check
scenario() {
  local out=/tmp/linux-check.log rc
  log "running /usr/local/bin/netbackd (linux-check)"
  timeout 150 /usr/local/bin/netbackd > $out 2>&1; rc=$?
  sed 's/^/  /' $out
  local n_ok n_fail
  n_ok=$(grep -c '^CHECK .*: ok' $out)
  n_fail=$(grep -c '^CHECK .*: FAIL' $out)
  if [ "$rc" -ne 0 ] || [ "$n_fail" -ne 0 ] || [ "$n_ok" -eq 0 ]; then
    fail "linux-check rc=$rc, $n_ok ok, $n_fail FAIL: $(grep -m1 '^CHECK .*: FAIL' $out | cut -c1-200)"
    return
  fi
  pass "linux-check: all $n_ok checks ok"
}
