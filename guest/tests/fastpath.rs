//! The netfront's generator/sink fast path (`send_burst`, `sink_rx`, `sink_rx_peek`)
//! through a real engine group on the sim host, guest A to guest B: every frame sent
//! arrives once, in order, and the guest-side counts equal the engine's queue counters;
//! multi-slot frames and GSO frames (extra-info slots) are reassembled by flags; buffers
//! holding an older frame are rewritten when the frame changes. EAL once per process: one
//! test.
use dataplane::engine::{EngineConfig, Group, QueueCounters};
use dataplane::netif::XEN_NETIF_GSO_TYPE_TCPV4;
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::pktgen::PktGen;
use guest::{Netfront, TxMeta};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type G = Group<xen::sim::SimGrant, xen::sim::SimEvtchn>;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0, 3, d as u8]
}

/// Ethernet + IPv4 + TCP + payload, checksums left to the backend (csum_blank).
fn tcp_frame(dst: [u8; 6], src: [u8; 6], payload_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((40 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    let c = guest::pktgen::csum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.extend((0..payload_len).map(|i| (i * 7) as u8));
    f
}

/// Sends `count` frames A -> B with `send_burst` (a new frame from `next` every `every`
/// packets), sinking at B with `sink_rx_peek` until it has `expect_bytes`; returns B's (packets, bytes, errors) and
/// the heads B saw.
#[allow(clippy::too_many_arguments)]
fn run(
    g: &mut G,
    a: &mut Netfront,
    b: &mut Netfront,
    count: u64,
    expect_bytes: u64,
    meta: TxMeta,
    mut next: impl FnMut(&mut Vec<u8>),
    every: usize,
) -> ((u64, u64, u64), Vec<Vec<u8>>) {
    let mut f = Vec::new();
    next(&mut f);
    let (mut sent, mut in_frame) = (0u64, 0usize);
    let mut got = (0u64, 0u64, 0u64);
    let mut heads = Vec::new();
    let t = Instant::now();
    while (got.1 < expect_bytes || sent < count) && got.2 == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "stuck: {got:?} of {count}"
        );
        if sent < count {
            let max = (count - sent).min((every - in_frame) as u64) as usize;
            let n = a.send_burst(0, &f, meta, max).unwrap();
            sent += n as u64;
            in_frame += n;
            if in_frame == every {
                next(&mut f);
                in_frame = 0;
            }
        }
        g.poll();
        let r = b
            .sink_rx_peek(0, &mut |h: &[u8]| heads.push(h.to_vec()))
            .unwrap();
        got = (got.0 + r.0, got.1 + r.1, got.2 + r.2);
    }
    // Drain what is still in flight (segments of the last frame, A's responses).
    for _ in 0..64 {
        g.poll();
        let r = b
            .sink_rx_peek(0, &mut |h: &[u8]| heads.push(h.to_vec()))
            .unwrap();
        got = (got.0 + r.0, got.1 + r.1, got.2 + r.2);
    }
    a.reap_tx_count(0).unwrap();
    (got, heads)
}

fn load(c: &QueueCounters) -> (u64, u64, u64, u64) {
    (
        c.tx_packets.load(Ordering::Relaxed),
        c.tx_bytes.load(Ordering::Relaxed),
        c.rx_packets.load(Ordering::Relaxed),
        c.rx_bytes.load(Ordering::Relaxed),
    )
}

#[test]
fn send_burst_and_sink_rx_through_a_group() {
    let env = guest::harness::Env::new("fastpath", 512, 16383);
    {
        let h = &env.host;
        for d in [51, 52] {
            h.add_domain(d, &format!("g{d}"), 4096, 8192).unwrap();
        }
        let mut g: G = env.group(EngineConfig::default(), TxCaps::default());
        let (mut a, sa, ca) = attach(h, 51, 0, mac(51));
        let (mut b, sb, cb) = attach(h, 52, 0, mac(52));
        g.add_queue(sa);
        g.add_queue(sb);

        // 20000 64-byte frames, a new sequence number every 100: B sees every head in
        // order (so changed frames were rewritten into reused buffers).
        let mut gen = PktGen {
            src_mac: mac(51),
            dst_mac: mac(52),
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            sport: 9,
            dport: 9,
            frame_len: 64,
            seq: 0,
        };
        let n = 20_000u64;
        let ((p, by, e), heads) = run(
            &mut g,
            &mut a,
            &mut b,
            n,
            n * 64,
            TxMeta::default(),
            |f| gen.next_frame(f),
            100,
        );
        assert_eq!((p, by, e), (n, n * 64, 0));
        assert_eq!(heads.len() as u64, n);
        for (i, h) in heads.iter().enumerate() {
            let seq = u64::from_be_bytes(h[42..50].try_into().unwrap());
            assert_eq!(seq, i as u64 / 100, "packet {i}");
        }
        assert_eq!(load(&ca).0, n);
        assert_eq!((load(&cb).2, load(&cb).3), (p, by));
        assert_eq!(a.stats.tx_packets, n);
        assert_eq!(a.queues[0].tx.free_requests() as usize, 256, "all reaped");

        // 9000-byte frames in 1024-byte TX slots: several RX slots each at B.
        let big: Vec<u8> = {
            let mut f = vec![0u8; 9000];
            gen.frame_len = 1514;
            let mut s = Vec::new();
            gen.next_frame(&mut s);
            f[..s.len()].copy_from_slice(&s);
            f
        };
        let (c0, d0) = (load(&ca), load(&cb));
        let meta = TxMeta {
            slot_size: 1024,
            ..Default::default()
        };
        let ((p, by, e), _) = run(
            &mut g,
            &mut a,
            &mut b,
            500,
            500 * 9000,
            meta,
            |f| f.clone_from(&big),
            500,
        );
        assert_eq!((p, by, e), (500, 500 * 9000, 0));
        assert_eq!(load(&ca).0 - c0.0, 500);
        assert_eq!(load(&cb).2 - d0.2, p);
        assert_eq!(load(&cb).3 - d0.3, by);

        // GSO TCPv4 60 KB frames, one per iteration: whatever B receives (GSO with an extra slot, or
        // segments), the sink's counts equal the engine's.
        let f = tcp_frame(mac(52), mac(51), 60_000);
        let meta = TxMeta {
            csum_blank: true,
            gso: Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)),
            slot_size: 4096,
            ..Default::default()
        };
        let (c0, d0) = (load(&ca), load(&cb));
        let ((p, by, e), _) = run(
            &mut g,
            &mut a,
            &mut b,
            200,
            200 * f.len() as u64,
            meta,
            |x| x.clone_from(&f),
            1, // one 42-segment frame per iteration: within B's backlog
        );
        assert_eq!(e, 0);
        assert_eq!(load(&ca).0 - c0.0, 200);
        assert_eq!(load(&cb).2 - d0.2, p);
        assert_eq!(load(&cb).3 - d0.3, by);
        assert!(by >= 200 * 60_000, "all payload delivered: {by}");
        assert_eq!(cb.rx_drop_backlog_full.load(Ordering::Relaxed), 0);
        assert_eq!(ca.rogue.load(Ordering::Relaxed), 0);
        drop(g);
    }
    env.finish();
}
