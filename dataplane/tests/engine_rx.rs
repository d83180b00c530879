//! Guest-RX rules: the backlog bounded in bytes, stall detection when a guest stops posting
//! buffers (XSA-392) and recovery when it posts again, and oversize packets toward a
//! frontend without scatter-gather dropped and counted. Every frame sent is either
//! delivered intact or counted. EAL once per process: one test.

use dataplane::engine::{EngineConfig, Features};
use dataplane::offload::TxCaps;
use guest::harness::{attach, attach_with};
use guest::pktgen::{PktGen, Sink};
use guest::TxMeta;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0, 2, d as u8]
}

#[test]
fn backlog_stall_recovery_and_non_sg() {
    let env = guest::harness::Env::new("rx", 512, 8191);
    {
        let (_pool, _port, h) = (&env.pool, &env.port, &env.host);
        for d in [41, 42, 43] {
            h.add_domain(d, &format!("g{d}"), 4096, 8192).unwrap();
        }
        let cfg = EngineConfig {
            backlog_bytes: 32 * 1024,
            stall_ns: 200_000_000,
            ..Default::default()
        };
        let mut g = env.group(cfg, TxCaps::default());
        let (mut a, sa, ca) = attach(h, 41, 0, mac(41));
        let (mut b, sb, _cb) = attach(h, 42, 0, mac(42));
        let (mut n, sn, cn) = attach_with(
            h,
            43,
            0,
            mac(43),
            Features {
                sg: false,
                ..Default::default()
            },
        );
        g.add_queue(sa);
        g.add_queue(sb);
        g.add_queue(sn);

        // B sends 600 frames of 1000 bytes to A, which stops refilling its RX ring.
        let mut gen = PktGen {
            src_mac: mac(42),
            dst_mac: mac(41),
            src_ip: [10, 0, 0, 42],
            dst_ip: [10, 0, 0, 41],
            sport: 9,
            dport: 9,
            frame_len: 1000,
            seq: 0,
        };
        let mut sink = Sink::default();
        let mut f = Vec::new();
        let mut sent = 0u64;
        let mut hgen = PktGen {
            dst_mac: mac(43),
            frame_len: 200,
            seq: 0,
            ..gen.clone()
        };
        let mut hf = Vec::new();
        let mut healthy = Sink::default();
        let mut healthy_sent = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(700) {
            while sent < 600 {
                gen.next_frame(&mut f);
                if b.send(0, &f, TxMeta::default()).is_err() {
                    gen.seq -= 1;
                    break;
                }
                sent += 1;
            }
            // Meanwhile a healthy vif (N) keeps receiving from B.
            if healthy_sent < 50 {
                hgen.next_frame(&mut hf);
                if b.send(0, &hf, TxMeta::default()).is_ok() {
                    healthy_sent += 1;
                } else {
                    hgen.seq -= 1;
                }
            }
            g.poll();
            b.reap_tx(0).unwrap();
            for p in a.poll_rx_no_refill(0).unwrap() {
                assert!(sink.accept(&p.data));
            }
            for p in n.poll_rx(0).unwrap() {
                assert!(healthy.accept(&p.data));
            }
        }
        assert_eq!(sent, 600);
        assert_eq!(
            (healthy.stats.packets, healthy.stats.lost, healthy.stats.bad),
            (50, 0, 0),
            "the healthy vif lost nothing during the stall"
        );
        let full = ca.rx_drop_backlog_full.load(Ordering::Relaxed);
        let stalled = ca.rx_drop_stalled.load(Ordering::Relaxed);
        assert_eq!(sink.stats.packets, 256, "one full ring of buffers was used");
        assert!(full > 0, "the 32 KiB backlog overflowed");
        assert!(
            stalled > 0 && stalled <= 32,
            "the stalled backlog ({stalled}) was at most 32 KiB of frames"
        );
        assert_eq!(
            ca.rx_stalls.load(Ordering::Relaxed),
            1,
            "stall counted once"
        );
        assert_eq!(
            sink.stats.packets + full + stalled,
            600,
            "every frame delivered or counted"
        );
        assert_eq!(sink.stats.bad, 0);

        // Recovery: A posts buffers again; new frames are delivered, no new stall.
        a.post_rx(0).unwrap();
        let mut more = 0;
        let t = Instant::now();
        while more < 20 {
            assert!(t.elapsed() < Duration::from_secs(5));
            gen.next_frame(&mut f);
            if b.send(0, &f, TxMeta::default()).is_ok() {
                more += 1;
            }
            g.poll();
            b.reap_tx(0).unwrap();
            for p in a.poll_rx(0).unwrap() {
                assert!(sink.accept(&p.data));
            }
        }
        let t = Instant::now();
        while sink.stats.packets < 256 + 20 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "after recovery: {:?}",
                sink.stats
            );
            g.poll();
            for p in a.poll_rx(0).unwrap() {
                assert!(sink.accept(&p.data));
            }
        }
        assert_eq!(ca.rx_stalls.load(Ordering::Relaxed), 1);

        // A frontend without scatter-gather: a frame needing two buffers is dropped and
        // counted, a small one delivered.
        for (len, deliver) in [(5000usize, false), (1000, true)] {
            let mut pkt = vec![0u8; len];
            pkt[..6].copy_from_slice(&mac(43));
            pkt[6..12].copy_from_slice(&mac(42));
            pkt[12..14].copy_from_slice(&[0x88, 0xb5]);
            b.send(
                0,
                &pkt,
                TxMeta {
                    slot_size: 4096,
                    ..Default::default()
                },
            )
            .unwrap();
            let t = Instant::now();
            let mut got = Vec::new();
            while t.elapsed() < Duration::from_millis(300) {
                g.poll();
                got.extend(n.poll_rx(0).unwrap());
                b.reap_tx(0).unwrap();
            }
            if deliver {
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].data, pkt);
            } else {
                assert!(got.is_empty());
                assert_eq!(cn.rx_drop_too_big.load(Ordering::Relaxed), 1);
            }
        }
        drop(g);
    }
    env.finish();
}
