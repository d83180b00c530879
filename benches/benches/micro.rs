//! Criterion micro-benchmarks of the dataplane's building blocks, one group per module:
//! - `ring`: the netif back ring (copying requests out, pushing responses);
//! - `txparse`: parsing a guest TX packet of 1, 2 and 18 slots;
//! - `rxplan`: counting and planning the guest RX buffers of a packet;
//! - `offload`: setting up checksum and TSO metadata on an mbuf (DPDK EAL, no hugepages);
//! - `switch`: the L2 forwarding decision (known unicast, unknown unicast, VLAN);
//! - `sim`: the simulated host's grant copy, one op and a batch of 32 (root: xenstored).
//!
//!   cargo bench -p netbackd-benches --bench micro -- --warm-up-time 1 --measurement-time 2
//!
//! Everything the benchmarks start (EAL, the sim host with its xenstored) is torn down
//! before the process exits. A group whose set-up fails (not root, no xenstored) is skipped
//! with a message; the others still run.
//!
//! `gcbatch/*` (the engine's guest-TX batch building) runs inside the offload group's EAL:
//! EAL starts once per process.
use criterion::{BenchmarkId, Criterion, Throughput};
use dataplane::netif::{
    BackRing, FrontRing, SharedPage, TxRequest, TxResponse, TxRing, NETTXF_CSUM_BLANK,
    NETTXF_MORE_DATA,
};
use dataplane::offload::{self, OffloadCounters, SoftGso, TxCaps};
use dataplane::rxplan;
use dataplane::switch::{Decision, Egress, EndpointId, EndpointKind, Mac, Switch, SwitchConfig};
use dataplane::txparse::{self, Gso, Verdict};
use pmd::{Eal, Mbuf, Mempool};
use std::hint::black_box;
use std::sync::Arc;
use xen::iface::gntst;
use xen::sim::grant::GTF_PERMIT_ACCESS;
use xen::sim::{DomainMem, SimHost, SimOptions};
use xen::{CopyDir, CopyOp, GrantCopy};

/// Requests or responses per ring batch (the engine's burst).
const RING_BATCH: u32 = 64;

fn tx_req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxRequest {
    TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(RING_BATCH.into()));

    // A frontend posts 64 requests once; each iteration copies all of them out of the
    // shared page (volatile slot reads, with the index check per copy) without consuming.
    let page = SharedPage::new_owned();
    let mut front = FrontRing::<TxRing>::init(page.clone());
    let back = BackRing::<TxRing>::attach(page);
    for i in 0..RING_BATCH as u16 {
        front
            .push_request(tx_req(u32::from(i), 0, 0, i, 60))
            .expect("ring has room");
    }
    front.push_requests_and_check_notify();
    assert_eq!(back.unconsumed(), RING_BATCH);
    g.bench_function("copy_request", |b| {
        b.iter(|| {
            for i in 0..RING_BATCH {
                black_box(back.copy_request(black_box(i)));
            }
        })
    });

    // Each iteration answers 64 consumed requests and publishes them with the notify
    // check. Only the backend's side is timed: the requests are marked consumed with
    // `advance` (the engine does that after copying them), and no frontend reads the
    // responses, whose slots are simply overwritten on the next lap of the ring.
    let page = SharedPage::new_owned();
    let _front = FrontRing::<TxRing>::init(page.clone());
    let mut back = BackRing::<TxRing>::attach(page);
    g.bench_function("push_response", |b| {
        b.iter(|| {
            back.advance(RING_BATCH);
            for i in 0..RING_BATCH as u16 {
                back.push_response(TxResponse { id: i, status: 0 });
            }
            black_box(back.push_responses_and_check_notify())
        })
    });
    g.finish();
}

/// The requests of one guest TX packet of `n` slots: 1514 bytes for one slot; otherwise a
/// 1000-byte first slot followed by 1000-byte continuation slots (the first slot's `size`
/// is the frame's total, as netfront sends it).
fn tx_packet(n: usize) -> Vec<TxRequest> {
    if n == 1 {
        return vec![tx_req(1, 0, NETTXF_CSUM_BLANK, 0, 1514)];
    }
    let total = (n * 1000) as u16;
    let mut v = vec![tx_req(1, 0, NETTXF_CSUM_BLANK | NETTXF_MORE_DATA, 0, total)];
    for i in 1..n {
        let more = if i + 1 < n { NETTXF_MORE_DATA } else { 0 };
        v.push(tx_req(1 + i as u32, 0, more, i as u16, 1000));
    }
    v
}

fn txparse(c: &mut Criterion) {
    let mut g = c.benchmark_group("txparse");
    for n in [1usize, 2, 18] {
        let slots = tx_packet(n);
        let p = txparse::parse_tx(slots[0], n as u32, |i| slots[i as usize], false);
        assert_eq!(p.verdict, Verdict::Packet, "{n}-slot packet");
        assert_eq!(p.packet.slots.len(), n);
        g.throughput(Throughput::Elements(n as u64));
        // As the engine parses: into one `Parsed` refilled per packet.
        let mut out = txparse::Parsed::default();
        g.bench_function(format!("{n}_slots"), |b| {
            b.iter(|| {
                let s = black_box(&slots[..]);
                txparse::parse_tx_into(&mut out, s[0], s.len() as u32, |i| s[i as usize], false);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn rxplan(c: &mut Criterion) {
    let mut g = c.benchmark_group("rxplan");
    // Segment lengths as the port hands them over: one segment up to 2 KiB, a 64 KiB GSO
    // packet as a chain of 2 KiB mbufs (32 segments).
    for size in [64u32, 1518, 65535] {
        let segs: Vec<u32> = (0..size.div_ceil(2048))
            .map(|i| (size - i * 2048).min(2048))
            .collect();
        assert_eq!(segs.iter().sum::<u32>(), size);
        g.throughput(Throughput::Bytes(size.into()));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                let s = black_box(&segs[..]);
                // Count first (before any request is consumed), then emit the chunks.
                let n = rxplan::buffers_needed(s.iter().copied());
                let m = rxplan::plan(s.iter().copied(), |ch| {
                    black_box(ch);
                });
                debug_assert_eq!(n, m);
                black_box(n)
            })
        });
    }
    g.finish();
}

/// Ethernet + IPv4 + TCP (20-byte header) + `payload` zero bytes, IP header checksum
/// left at zero (the offload code rewrites what it needs).
fn tcp4_frame(payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x00, 0x16, 0x3e, 0, 0, 1, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((40 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.resize(54 + payload, 0);
    f
}

/// An mbuf from `pool` holding `frame` (chained when longer than one segment).
fn mbuf_with(pool: &Mempool, frame: &[u8]) -> Mbuf {
    let mut m = Mbuf::alloc(pool).expect("mbuf");
    m.extend_from_slice(frame).expect("mbufs for the frame");
    m
}

fn offload(c: &mut Criterion) {
    let prefix = format!("nbd-micro-{}", std::process::id());
    let eal = match Eal::init(&[
        "-l",
        "0",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--log-level",
        "*:error",
    ]) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipping offload/*: EAL init failed: {e}");
            return;
        }
    };
    {
        let pool = Mempool::new("micro", 255, 0, 2176, -1).expect("mempool");
        // Unused on the hardware-offload paths measured here, but part of the signature.
        let soft = SoftGso::new("micro", 255, -1).expect("soft GSO pools");
        let caps = TxCaps {
            ipv4_cksum: true,
            tcp_cksum: true,
            udp_cksum: true,
            tso: true,
            tso6: true,
        };
        let mut ctr = OffloadCounters::default();
        let mut g = c.benchmark_group("offload");
        g.throughput(Throughput::Elements(1));

        // The same mbuf goes round: prepare_guest_tx takes it and appends it to `out`,
        // whence the next iteration takes it back. Each call re-parses the headers and
        // rewrites the flags, lengths and pseudo-header checksum, so every lap does the
        // same work.
        let cases: [(&str, usize, Option<Gso>, u64); 2] = [
            // A 1514-byte csum_blank TCP/IPv4 frame toward a port with checksum offload.
            ("csum_setup", 1460, None, 0),
            // A 9000-byte TSO frame (MSS 1448, 5 segments of 2 KiB mbufs) toward a TSO port.
            (
                "gso_setup",
                8946,
                Some(Gso::TcpV4 { mss: 1448 }),
                pmd::sys::RTE_MBUF_F_TX_TCP_SEG,
            ),
        ];
        for (name, payload, gso, expect_flag) in cases {
            let mut out = vec![mbuf_with(&pool, &tcp4_frame(payload))];
            let once = |out: &mut Vec<Mbuf>, ctr: &mut OffloadCounters| {
                let m = out.pop().expect("the mbuf is back");
                offload::prepare_guest_tx(m, true, gso, &caps, &soft, out, ctr)
                    .expect("offload set-up");
            };
            once(&mut out, &mut ctr);
            assert_eq!(out.len(), 1);
            assert_ne!(out[0].ol_flags() & pmd::sys::RTE_MBUF_F_TX_TCP_CKSUM, 0);
            assert_eq!(out[0].ol_flags() & expect_flag, expect_flag);
            g.bench_function(name, |b| b.iter(|| once(black_box(&mut out), &mut ctr)));
            drop(out);
        }
        g.finish();
        assert_eq!(
            ctr.sw_checksums + ctr.sw_gso_packets,
            0,
            "hardware paths only"
        );
        assert_eq!(pool.in_use(), 0, "every mbuf freed");
        assert_eq!(soft.in_use(), 0);
    }
    gcbatch(c);
    // Pools and mbufs are gone: clean EAL up (removes its runtime directory).
    drop(eal);
}

const MAC_V1: Mac = [0x00, 0x16, 0x3e, 0, 0, 1];
const MAC_V2: Mac = [0x00, 0x16, 0x3e, 0, 0, 2];
const MAC_V3: Mac = [0x00, 0x16, 0x3e, 0, 0, 3];
const HOST_A: Mac = [0x02, 0, 0, 0, 0, 0xa];
const HOST_B: Mac = [0x02, 0, 0, 0, 0, 0xb];

/// A 64-byte frame, with an 802.1Q tag when `vlan` is given.
fn eth_frame(dst: Mac, src: Mac, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.resize(64, 0);
    f
}

fn switch(c: &mut Criterion) {
    const P0: EndpointId = EndpointId(0);
    const P1: EndpointId = EndpointId(1);
    const V1: EndpointId = EndpointId(10);
    const V2: EndpointId = EndpointId(11);
    const V3: EndpointId = EndpointId(12);
    let mut s = Switch::new(SwitchConfig::default());
    s.add_endpoint(P0, EndpointKind::Uplink);
    s.add_endpoint(P1, EndpointKind::Uplink);
    for (id, mac, vlan) in [
        (V1, MAC_V1, None),
        (V2, MAC_V2, None),
        (V3, MAC_V3, Some(100)),
    ] {
        s.add_endpoint(id, EndpointKind::Vif { mac, vlan });
    }
    // Learn HOST_A behind P0 in the untagged domain and in VLAN 100.
    s.forward(P0, &eth_frame(MAC_V1, HOST_A, None), 0);
    s.forward(P0, &eth_frame(MAC_V3, HOST_A, Some(100)), 0);
    let cases = [
        // Guest to a learned host on the wire (the source is the vif's static entry).
        (
            "hit",
            V1,
            eth_frame(HOST_A, MAC_V1, None),
            Decision::Unicast(P0, Egress::AsIs),
        ),
        // Guest to an unknown host: flood.
        (
            "miss",
            V2,
            eth_frame(HOST_B, MAC_V2, None),
            Decision::Flood { domain: None },
        ),
        // Tagged frame from the wire to an access vif of VLAN 100 (learns the source).
        (
            "vlan",
            P0,
            eth_frame(MAC_V3, HOST_A, Some(100)),
            Decision::Unicast(V3, Egress::Strip),
        ),
    ];
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(1));
    for (name, ingress, frame, expect) in cases {
        assert_eq!(s.forward(ingress, &frame, 1), expect, "{name}");
        let mut now = 1u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += 1;
                black_box(s.forward(black_box(ingress), black_box(&frame), now))
            })
        });
    }
    g.finish();
}

/// Guest domain of the grant-copy benchmark, and the size of its batch.
const SIM_DOM: u16 = 7;
const SIM_BATCH: usize = 32;

fn sim(c: &mut Criterion) {
    let h = match SimHost::start(SimOptions::default()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipping sim/*: the simulated host did not start (root, xenstored?): {e}");
            return;
        }
    };
    h.add_domain(SIM_DOM, "micro", 64, 128).expect("add domain");
    {
        // The guest grants dom0 frames 1..=32 (grefs 10..42), each holding a pattern.
        let guest = DomainMem::open(h.layout(), SIM_DOM).expect("guest memory");
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        for i in 0..SIM_BATCH as u32 {
            guest.write_frame(1 + i, 0, &pattern).expect("write frame");
            guest
                .set_entry(10 + i, GTF_PERMIT_ACCESS, 0, 1 + i)
                .expect("grant");
        }
        let mut be = h.grants(0);
        // Local buffers: one 2 KiB slot per op (guest TX copies into mbuf data rooms).
        let mut local = vec![0u8; SIM_BATCH * 2048];
        let mut g = c.benchmark_group("sim");
        for len in [64u16, 1518] {
            let base = local.as_mut_ptr();
            let mut ops: Vec<CopyOp> = (0..SIM_BATCH)
                .map(|i| CopyOp {
                    domid: SIM_DOM,
                    gref: 10 + i as u32,
                    offset: 0,
                    // Inside `local` (i * 2048 + len <= 32 * 2048).
                    local: base.wrapping_add(i * 2048),
                    len,
                    dir: CopyDir::FromForeign,
                    status: 99,
                })
                .collect();
            // SAFETY: each op's `local..local+len` lies inside `local`, which outlives the
            // call and is not referenced meanwhile (only written through the raw pointers).
            unsafe { be.copy(&mut ops) }.expect("grant copy");
            assert!(ops.iter().all(|o| o.status == gntst::OKAY));
            for (name, n) in [("copy_one_op", 1usize), ("copy_batch32", SIM_BATCH)] {
                g.throughput(Throughput::Elements(n as u64));
                g.bench_function(BenchmarkId::new(name, len), |b| {
                    b.iter(|| {
                        // SAFETY: as above: the ops point into `local`, alive and not
                        // otherwise referenced for the call.
                        unsafe { be.copy(black_box(&mut ops[..n])) }.expect("grant copy");
                    })
                });
            }
            assert!(ops.iter().all(|o| o.status == gntst::OKAY));
            assert_eq!(&local[..usize::from(len)], &pattern[..usize::from(len)]);
        }
        g.finish();
    }
    // Stops xenstored and removes the sim root (guest memory files, sockets).
    if let Err(e) = h.stop() {
        eprintln!("sim host stop: {e}");
    }
}

/// Building the grant-copy batch of 32 parsed guest TX packets (mbufs from the group's
/// burst cache, ops appended), then freeing the mbufs in bulk as the port would.
fn gcbatch(c: &mut Criterion) {
    let pool = Arc::new(Mempool::new("micro-gc", 4095, 256, 2176, -1).expect("pool"));
    let mut g = c.benchmark_group("gcbatch");
    for n in [1usize, 2] {
        let slots = tx_packet(n);
        let p = txparse::parse_tx(slots[0], n as u32, |i| slots[i as usize], false);
        assert_eq!(p.verdict, Verdict::Packet, "{n}-slot packet");
        let pkt = &p.packet;
        let mut b = dataplane::engine::TxBatchBuilder::new(pool.clone());
        let mut ops = Vec::with_capacity(256);
        let mut mbufs = Vec::with_capacity(32);
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("build_tx/32x{n}_slots"), |bn| {
            bn.iter(|| {
                ops.clear();
                for _ in 0..32 {
                    mbufs.push(b.build(7, pkt, &p.responses, &mut ops).expect("mbufs"));
                }
                assert_eq!(ops.len(), 32 * n);
                pmd::free_bulk(&mut mbufs);
            })
        });
        drop(b);
    }
    g.finish();
    assert_eq!(pool.in_use(), 0, "every mbuf freed");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    ring(&mut c);
    txparse(&mut c);
    rxplan(&mut c);
    offload(&mut c);
    switch(&mut c);
    sim(&mut c);
    c.final_summary();
}
