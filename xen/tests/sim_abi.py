#!/usr/bin/env python3
"""A frontend written against docs/sim-abi.md only (standard library): attaches to a sim
root, writes a page into its RAM, grants it to dom0 and publishes the grant reference in
xenstore with the real xenstore-write. The Rust side then grant-copies the page out.

Environment: SIM_ROOT, DOMID, XENSTORED_PATH; argv[1] = frame, argv[2] = gref."""
import mmap
import os
import struct
import subprocess
import sys

PAGE = 4096
GTF_PERMIT_ACCESS = 1

root, domid = os.environ["SIM_ROOT"], int(os.environ["DOMID"])
frame, gref = int(sys.argv[1]), int(sys.argv[2])
ddir = os.path.join(root, "dom%d" % domid)

# The page: byte i is (i * 13 + frame) mod 256.
page = bytes((i * 13 + frame) % 256 for i in range(PAGE))
with open(os.path.join(ddir, "memory"), "r+b") as f:
    ram = mmap.mmap(f.fileno(), 0)
    assert frame < len(ram) // PAGE, "frame beyond RAM"
    ram[frame * PAGE:(frame + 1) * PAGE] = page
    ram.close()

# grant_entry_v1 {u16 flags, u16 domid, u32 frame}, little endian. Frame and domid first,
# then the flags that make the entry valid (two writes, as a real guest orders them).
with open(os.path.join(ddir, "grant-table"), "r+b") as f:
    gt = mmap.mmap(f.fileno(), 0)
    assert gref < len(gt) // 8, "gref beyond the grant table"
    off = gref * 8
    gt[off + 2:off + 8] = struct.pack("<HI", 0, frame)
    gt[off:off + 2] = struct.pack("<H", GTF_PERMIT_ACCESS)
    gt.close()

subprocess.run(["xenstore-write", "/local/domain/%d/data/gref" % domid, str(gref)], check=True)
print("granted frame %d as gref %d" % (frame, gref))
