#!/usr/bin/env bash
# After the suite: no DPDK runtime directory, hugepage file or socket left by a test
# (every test process uses a file prefix starting with "nbd-").
set -u
left=$(ls -d /var/run/dpdk/nbd-* /run/dpdk/nbd-* /dev/hugepages/nbd-* 2>/dev/null | sort -u)
if [ -n "$left" ]; then
  echo "leftovers from tests:"; echo "$left"; exit 1
fi
echo "dpdk-leftovers: none"
