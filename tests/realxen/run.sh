#!/usr/bin/env bash
# Runs one of netbackd's scenarios in the realxen harness (real Xen 4.17, PV dom0, a PV guest
# with Linux's xen-netfront, under QEMU; ~2 minutes, see ../shared/realxen/README.md):
#   tests/realxen/run.sh handshake|ping|tcp|jumbo|two-vifs|two-guests|reattach|reboot|restart [privcmd|groups] [run.sh options]
# "privcmd" runs the daemon with the privcmd+gntalloc grant-copy path instead of gntdev;
# "groups" with engine.groups = 2 (two-vifs then puts the guest's vifs in different groups).
# Builds target/release/netbackd first. Prints the harness's REALXEN RESULT line last.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: tests/realxen/run.sh SCENARIO [privcmd] [run.sh options]}; shift
cfg=tests/realxen/netbackd.toml
if [ "${1:-}" = privcmd ]; then cfg=tests/realxen/netbackd-privcmd.toml; shift; fi
if [ "${1:-}" = groups ]; then cfg=tests/realxen/netbackd-groups.toml; shift; fi
[ -f "tests/realxen/$name.sh" ] || { echo "no scenario tests/realxen/$name.sh" >&2; exit 2; }
cargo build --release --bin netbackd
exec ../shared/realxen/run.sh --netbackd target/release/netbackd \
  --scenario "tests/realxen/$name.sh" \
  --extra-file "$cfg:/etc/netbackd.toml" \
  --extra-file tests/realxen/common.sh:/root/nb-common.sh \
  --timeout "${REALXEN_TIMEOUT:-420}" "$@"
