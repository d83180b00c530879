#!/usr/bin/env python3
"""Writes the seed corpus (corpus/<target>/) from the cases the unit tests use: TX ring
images (one slot, scatter-gather, GSO, multicast, slot floods), extra-info chains, RX
segment lists, frames (IPv4/TCP, VLAN, IPv6 with extension headers, fragments),
frontend directories and the deploy and test configuration files. The scripted
targets (ring, ctrl, switch) take `arbitrary` input and get a few fixed byte strings.
Run from anywhere; rewrites the corpus directories. Small: a few KiB in all."""
import hashlib, os, struct, pathlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
MORE, EXTRA, CSUM = 4, 8, 1


def put(target, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def tx(gref, off, flags, id, size):
    return struct.pack("<IHHHH", gref, off, flags, id, size)


def extra(ty, flags, payload):
    return bytes([ty, flags]) + bytes(payload) + b"\0\0\0\0"


def gso(size, ty, more=False):
    return extra(1, int(more), struct.pack("<HB", size, ty) + b"\0\0\0")


for mode in (0, 1):
    m = bytes([mode])
    put("txparse", m + tx(7, 100, CSUM, 1, 60))
    put("txparse", m + tx(1, 0, MORE, 1, 3000) + tx(2, 0, MORE, 2, 1000) + tx(3, 0, 0, 3, 2000))
    put("txparse", m + tx(1, 0, EXTRA, 1, 9000) + gso(1448, 1) + tx(2, 0, 0, 2, 4000))
    put("txparse", m + tx(1, 0, EXTRA, 1, 0) + extra(2, 0, b"\x01\0\x5e\0\0\x01"))
    put("txparse", m + tx(1, 0, MORE, 1, 100) + tx(2, 0, 0, 2, 0))
    put("txparse", m + tx(1, 0, MORE, 1, 100) + tx(2, 0, 0, 2, 200))  # frag > frame
    put("txparse", m + tx(1, 4000, 0, 1, 200))  # crosses its page
    for n in (18, 19, 20):
        slots = b"".join(tx(i, 0, MORE if i + 1 < n else 0, i, 64 if i else 64 * n) for i in range(n))
        put("txparse", m + slots)
    put("txparse", m + b"".join(tx(i, 0, 0, i, 60) for i in range(255)))
    put("extras", m + gso(1448, 1))
    put("extras", m + gso(1448, 2, True) + extra(4, 0, b"\x01\x01\1\2\3\4"))
    put("extras", m + extra(3, 0, b"\x01\0\x5e\0\0\x01"))
    put("extras", m + gso(0, 1))
    put("extras", m + gso(1448, 9) + gso(1, 1))
    put("extras", m + b"".join(extra(4, 1, b"\0" * 6) for _ in range(5)))
    put("extras", m + extra(7, 0, b"\0" * 6))

for segs in ([60], [5000], [100, 4000, 100], [0, 0], [4096, 4096, 1], [1] * 40, [16383, 200, 3]):
    put("rxplan", b"".join(struct.pack("<H", s) for s in segs))


def eth(et, vlan=None):
    h = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    if vlan is not None:
        h += struct.pack(">HH", 0x8100, vlan)
    return h + struct.pack(">H", et)


def v4(proto, l4, frag=0, opts=b""):
    ihl = (20 + len(opts)) // 4
    return bytes([0x40 | ihl, 0]) + struct.pack(">HHHBBH", 20 + len(opts) + len(l4), 1, frag, 64, proto, 0) + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + opts + l4


def tcp(doff=5):
    return struct.pack(">HHIIBBHHH", 1234, 80, 1, 0, doff << 4, 0x18, 65535, 0, 0) + b"\0" * (4 * doff - 20) + b"payload"


def udp():
    return struct.pack(">HHHH", 53, 5353, 16, 0) + b"payload!"


def v6(nxt, rest):
    return bytes([0x60, 0, 0, 0]) + struct.pack(">HBB", len(rest), nxt, 64) + bytes(range(16)) + bytes(range(16, 32)) + rest


put("wire", eth(0x0800) + v4(6, tcp()))
put("wire", eth(0x0800, 10) + v4(6, tcp(8)))
put("wire", eth(0x0800) + v4(17, udp(), opts=b"\x01" * 4))
put("wire", eth(0x0800) + v4(6, tcp(), frag=0x2000 | 5))
put("wire", eth(0x86DD) + v6(17, udp()))
put("wire", eth(0x86DD) + v6(0, bytes([43, 0]) + b"\0" * 6 + bytes([44, 0]) + b"\0" * 6 + bytes([51, 1]) + b"\0" * 10 + bytes([6, 0, 0, 0, 0, 0, 0, 0]) + tcp()))
put("wire", eth(0x86DD) + v6(44, bytes([17, 0, 0, 8]) + b"\0\0\0\0" + udp()))
put("wire", eth(0x0806) + b"\0" * 28)

GOOD = ["request-rx-copy=1", "tx-ring-ref=8", "rx-ring-ref=9", "event-channel=3"]
put("xenstore", "\n".join(GOOD + ["feature-sg=1", "feature-gso-tcpv4=1", "mac=00:16:3e:00:00:01", "mtu=9000", "sg=1", "rate=10000000,50000"]))
put("xenstore", "\n".join(["request-rx-copy=1", "multi-queue-num-queues=2", "max=4"]
                          + [f"queue-{q}/{k}={v}" for q in range(2) for k, v in
                             (("tx-ring-ref", 1 + 4 * q), ("rx-ring-ref", 2 + 4 * q), ("event-channel-tx", 3 + 4 * q), ("event-channel-rx", 4 + 4 * q))]
                          + ["ctrl-ring-ref=20", "event-channel-ctrl=21"]))
put("xenstore", "\n".join(GOOD[:3] + ["event-channel-tx=5", "num=1,4,007", "mac=0:1:2:a:B:ff"]))
put("xenstore", "\n".join(["request-rx-copy=0", "multi-queue-num-queues=99", "num=0,4294967295,-0", "mtu=67", "rate=1,"]))
put("xenstore", "\n".join(GOOD[1:] + ["num=0,4294967295,4294967296", "mac=00:16:3e:00:00", "mtu=x"]))

for p in ("deploy/netbackd.toml", "deploy/netbackd-sim.toml", "tests/realxen/netbackd.toml",
          "tests/realxen/netbackd-groups.toml", "tests/realxen/netbackd-privcmd.toml"):
    put("config", (ROOT / p).read_text())
GOOD_TOML = """host = "sim"
[sim]
root = "/dev/shm/netbackd-sim-1-0"
[eal]
args = ["--no-huge", "-m", "512", "--no-pci"]
[[port]]
devargs = "net_tap0,iface=nbtap0"
[engine]
groups = 1
"""
put("config", GOOD_TOML)
put("config", GOOD_TOML + '[switch]\nmode = "cross"\n[[vif]]\ndomid = 5\nvlan = 10\nrate = "1000,1000"\ngroup = 0\n[log]\nfilter = "info,dataplane=debug"\n')

# Scripted targets: a few fixed byte strings (libFuzzer finds the structure quickly).
for t in ("ring", "ctrl", "switch"):
    for n in (16, 64, 256, 1024):
        put(t, hashlib.sha256(f"{t}{n}".encode()).digest() * (n // 32 + 1))
