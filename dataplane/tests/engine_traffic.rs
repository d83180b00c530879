//! Engine traffic correctness on the simulated host (EAL once per process: one test):
//! - TSO from one guest to another (TCPv4 60 KB, TCPv6 64 KB, csum_blank): segmented in
//!   software, every segment's checksum verified independently, the payload reassembled;
//! - rings starting near u32::MAX (index wrap) with nothing lost;
//! - fairness: a flooding vif does not starve a light one in the same group;
//! - credit: a vif limited by `rate` sends within 10% of it over real seconds;
//! - a TSO frame kept whole for a vif with Toeplitz hashing: GSO extra, then hash extra.

use dataplane::credit::Rate;
use dataplane::ctrl::HashState;
use dataplane::engine::{EngineConfig, Group};
use dataplane::netif::{
    CtrlRequest, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
    XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
};
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::pktgen::{PktGen, Sink};
use guest::TxMeta;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type G = Group<xen::sim::SimGrant, xen::sim::SimEvtchn>;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0, 1, d as u8]
}

/// Ethernet + IPv4/IPv6 + TCP (20-byte header) + payload, checksums left to the backend.
fn tcp_frame(dst: [u8; 6], src: [u8; 6], v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    let l4 = 20 + payload.len();
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4 as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let c = guest::pktgen::csum(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0xab, 0xcd, 0, 0,
    ]);
    f.extend_from_slice(payload);
    f
}

/// Independent check (RFC 1071 over pseudo-header + TCP) of a received segment; returns
/// its payload.
fn verify_tcp(f: &[u8]) -> Vec<u8> {
    let v6 = f[12] == 0x86;
    let (l4_off, src, dst, l4_len) = if v6 {
        let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
        (54, &f[22..38], &f[38..54], plen)
    } else {
        assert_eq!(
            guest::pktgen::csum(&f[14..34], 0),
            0,
            "IPv4 header checksum"
        );
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        (34, &f[26..30], &f[30..34], tot - 20)
    };
    let mut pseudo = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    pseudo += 6 + l4_len as u32;
    assert_eq!(
        guest::pktgen::csum(&f[l4_off..l4_off + l4_len], pseudo),
        0,
        "TCP checksum"
    );
    f[l4_off + 20..l4_off + l4_len].to_vec()
}

fn poll_until(g: &mut G, secs: u64, mut done: impl FnMut(&mut G) -> bool) {
    let t = Instant::now();
    while !done(g) {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out");
        g.poll();
    }
}

#[test]
fn gso_wrap_fairness_credit() {
    let env = guest::harness::Env::new("traffic", 512, 16383);
    {
        let (_pool, _port, h) = (&env.pool, &env.port, &env.host);
        // Rings of every guest start 100 short of the u32 wrap.
        guest::netfront::set_ring_start_for_tests(u32::MAX - 100);
        for d in [31, 32, 33, 34] {
            h.add_domain(d, &format!("g{d}"), 4096, 8192).unwrap();
        }
        let mut g: G = env.group(EngineConfig::default(), TxCaps::default());
        let (mut a, sa, ca) = attach(h, 31, 0, mac(31));
        let (mut b, sb, cb) = attach(h, 32, 0, mac(32));
        g.add_queue(sa);
        g.add_queue(sb);

        // --- TSO A -> B (unicast vif to vif), software segmentation toward B.
        // The third packet is GSO without csum_blank (a buggy frontend): fixed up, counted.
        for (v6, len, mss, ty, csum_blank) in [
            (false, 60_000usize, 1448u16, XEN_NETIF_GSO_TYPE_TCPV4, true),
            (true, 65_000, 1428, XEN_NETIF_GSO_TYPE_TCPV6, true),
            (false, 10_000, 1448, XEN_NETIF_GSO_TYPE_TCPV4, false),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 11 + len) as u8).collect();
            let f = tcp_frame(mac(32), mac(31), v6, &payload);
            a.send(
                0,
                &f,
                TxMeta {
                    csum_blank,
                    gso: Some((mss, ty)),
                    slot_size: 4096,
                    ..Default::default()
                },
            )
            .unwrap();
            let mut got = Vec::new();
            let segs = len.div_ceil(usize::from(mss));
            poll_until(&mut g, 10, |_| {
                got.extend(b.poll_rx(0).unwrap());
                got.len() >= segs
            });
            assert_eq!(got.len(), segs, "v6={v6}");
            let mut re = Vec::new();
            for s in &got {
                assert!(s.data.len() <= 1514, "segment of {} bytes", s.data.len());
                re.extend(verify_tcp(&s.data));
            }
            assert_eq!(re, payload, "v6={v6}: reassembled payload");
            a.reap_tx(0).unwrap();
        }
        assert_eq!(ca.tx_drop_offload.load(Ordering::Relaxed), 0);
        assert_eq!(ca.tx_gso_checksum_fixup.load(Ordering::Relaxed), 1);

        // --- Index wrap: 1000 frames A -> wire -> A across u32::MAX, nothing lost.
        let mut gen = PktGen {
            src_mac: mac(31),
            dst_mac: [2, 0, 0, 0, 0, 0x55],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            sport: 9,
            dport: 9,
            frame_len: 200,
            seq: 0,
        };
        let mut sink = Sink::default();
        let mut f = Vec::new();
        let mut sent = 0;
        poll_until(&mut g, 20, |g| {
            while sent < 1000 {
                gen.next_frame(&mut f);
                if a.send(0, &f, TxMeta::default()).is_err() {
                    gen.seq -= 1;
                    break;
                }
                sent += 1;
            }
            g.poll();
            for p in a.poll_rx(0).unwrap() {
                sink.accept(&p.data);
            }
            let _ = b.poll_rx(0); // B gets the flood too; keep its ring posted
            a.reap_tx(0).unwrap();
            sink.stats.packets >= 1000
        });
        assert_eq!(
            (sink.stats.packets, sink.stats.lost, sink.stats.bad),
            (1000, 0, 0)
        );
        assert!(
            a.queues[0].tx.req_prod_pvt() < 2000,
            "indices wrapped past u32::MAX"
        );
        assert_eq!(
            ca.rogue.load(Ordering::Relaxed) + cb.rogue.load(Ordering::Relaxed),
            0
        );

        // --- 10^6 frames each way for A (guest TX to the wire, guest RX from it): every
        //     frame's sequence and payload checked, none lost.
        let million = 1_000_000u64;
        let mut gen = PktGen {
            seq: 0,
            frame_len: 64,
            ..gen.clone()
        };
        let mut sink = Sink::default();
        let mut sent = 0u64;
        let t = Instant::now();
        let tx0 = ca.tx_packets.load(Ordering::Relaxed);
        while sink.stats.packets < million {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "1e6 run stuck at {:?}",
                sink.stats
            );
            while sent < million {
                gen.frame_len = 64 + (sent % 64) as usize * 22;
                gen.next_frame(&mut f);
                if a.send(0, &f, TxMeta::default()).is_err() {
                    gen.seq -= 1;
                    break;
                }
                sent += 1;
            }
            g.poll();
            for p in a.poll_rx(0).unwrap() {
                sink.accept(&p.data);
            }
            let _ = b.poll_rx(0);
            a.reap_tx(0).unwrap();
        }
        assert_eq!(
            (
                sink.stats.packets,
                sink.stats.lost,
                sink.stats.bad,
                sink.stats.reordered
            ),
            (million, 0, 0, 0)
        );
        assert_eq!(ca.tx_packets.load(Ordering::Relaxed) - tx0, million);
        eprintln!("1e6 frames each way in {:.1} s", t.elapsed().as_secs_f64());

        // --- Fairness: C floods, D sends 100 frames; D's all go out promptly.
        guest::netfront::set_ring_start_for_tests(0);
        let (mut c, sc, cc) = attach(h, 33, 0, mac(33));
        let (mut d, sd, cd) = attach(h, 34, 0, mac(34));
        g.add_queue(sc);
        g.add_queue(sd);
        let mut flood = PktGen {
            src_mac: mac(33),
            ..gen.clone()
        };
        let mut light = PktGen {
            src_mac: mac(34),
            ..gen.clone()
        };
        let mut ff = Vec::new();
        let mut lf = Vec::new();
        let mut d_sent = 0;
        let t = Instant::now();
        let mut polls = 0;
        while cd.tx_packets.load(Ordering::Relaxed) < 100 {
            assert!(t.elapsed() < Duration::from_secs(10));
            flood.next_frame(&mut ff);
            while c.send(0, &ff, TxMeta::default()).is_ok() {
                flood.next_frame(&mut ff);
            }
            if d_sent < 100 {
                light.next_frame(&mut lf);
                if d.send(0, &lf, TxMeta::default()).is_ok() {
                    d_sent += 1;
                }
            }
            g.poll();
            polls += 1;
            for nf in [&mut a, &mut b, &mut c, &mut d] {
                let _ = nf.poll_rx(0);
                let _ = nf.reap_tx(0);
            }
        }
        let flooded = cc.tx_packets.load(Ordering::Relaxed);
        assert_eq!(cd.tx_packets.load(Ordering::Relaxed), 100);
        assert!(flooded > 100, "the flood ran ({flooded})");
        assert!(polls < 1000, "the light vif needed {polls} iterations");
        assert_eq!(cd.tx_credit_throttled.load(Ordering::Relaxed), 0);

        // --- Credit: D limited to 1 MB per 100 ms sends ~10 MB/s of 1000-byte frames.
        let dq = dataplane::engine::QueueId {
            domid: 34,
            devid: 0,
            queue: 0,
        };
        g.set_rate(
            dq,
            Rate {
                bytes: 1_000_000,
                usec: 100_000,
            },
        );
        light.frame_len = 1000;
        let start_bytes = cd.tx_bytes.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut t_warm = None;
        let mut warm_bytes = 0;
        while t.elapsed() < Duration::from_millis(2600) {
            light.next_frame(&mut lf);
            while d.send(0, &lf, TxMeta::default()).is_ok() {
                light.next_frame(&mut lf);
            }
            g.poll();
            for nf in [&mut a, &mut b, &mut c, &mut d] {
                let _ = nf.poll_rx(0);
                let _ = nf.reap_tx(0);
            }
            if t_warm.is_none() && t.elapsed() >= Duration::from_millis(500) {
                t_warm = Some(Instant::now());
                warm_bytes = cd.tx_bytes.load(Ordering::Relaxed);
            }
        }
        let secs = t_warm.unwrap().elapsed().as_secs_f64();
        let rate = (cd.tx_bytes.load(Ordering::Relaxed) - warm_bytes) as f64 / secs;
        assert!(
            (rate - 10e6).abs() / 10e6 < 0.10,
            "measured {rate:.0} B/s for 10 MB/s"
        );
        assert!(cd.tx_credit_throttled.load(Ordering::Relaxed) > 0);
        assert!(cd.tx_bytes.load(Ordering::Relaxed) > start_bytes);
        eprintln!("credit: configured 10000000 B/s, measured {rate:.0} B/s over {secs:.2} s");

        // --- A two-queue vif limited to 10 MB/s, both queues flooding: together they send
        //     10 MB/s (one credit for the vif), not 20.
        h.add_domain(37, "g37", 4096, 8192).unwrap();
        let features = dataplane::engine::Features {
            sg: true,
            ..Default::default()
        };
        let (mut m, sm, cm) = guest::harness::attach_queues(h, 37, 0, mac(37), features, 2);
        let mq = dataplane::engine::QueueId {
            domid: 37,
            devid: 0,
            queue: 0,
        };
        for s in sm {
            g.add_queue(s);
        }
        g.set_rate(
            mq,
            Rate {
                bytes: 1_000_000,
                usec: 100_000,
            },
        );
        let mut gens: Vec<PktGen> = (0..2u16)
            .map(|i| PktGen {
                src_mac: mac(37),
                sport: 100 + i,
                frame_len: 1000,
                ..gen.clone()
            })
            .collect();
        let sent_bytes = |cm: &[std::sync::Arc<dataplane::engine::QueueCounters>]| {
            cm.iter()
                .map(|c| c.tx_bytes.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        let t = Instant::now();
        let mut t_warm = None;
        let mut warm = Vec::new();
        while t.elapsed() < Duration::from_millis(2600) {
            for (qi, gen) in gens.iter_mut().enumerate() {
                gen.next_frame(&mut lf);
                while m.send(qi, &lf, TxMeta::default()).is_ok() {
                    gen.next_frame(&mut lf);
                }
                let _ = m.reap_tx(qi);
                let _ = m.poll_rx(qi);
            }
            g.poll();
            for nf in [&mut a, &mut b, &mut c, &mut d] {
                let _ = nf.poll_rx(0);
            }
            if t_warm.is_none() && t.elapsed() >= Duration::from_millis(500) {
                t_warm = Some(Instant::now());
                warm = sent_bytes(&cm);
            }
        }
        let secs = t_warm.unwrap().elapsed().as_secs_f64();
        let per_queue: Vec<u64> = sent_bytes(&cm)
            .iter()
            .zip(&warm)
            .map(|(n, w)| n - w)
            .collect();
        let rate = per_queue.iter().sum::<u64>() as f64 / secs;
        assert!(
            (rate - 10e6).abs() / 10e6 < 0.10,
            "two queues measured {rate:.0} B/s together ({per_queue:?}) for 10 MB/s"
        );
        assert!(
            per_queue.iter().all(|&b| b > 0),
            "both queues sent: {per_queue:?}"
        );
        eprintln!("shared credit: 10000000 B/s, two queues {per_queue:?} = {rate:.0} B/s");
        drop(g);

        // --- A TSO frame kept whole (the port does TSO) toward a vif whose frontend set
        //     Toeplitz hashing: the GSO extra (with MORE) and then the hash extra.
        for d in [35, 36] {
            h.add_domain(d, &format!("g{d}"), 4096, 8192).unwrap();
        }
        let tso = TxCaps {
            ipv4_cksum: true,
            tcp_cksum: true,
            udp_cksum: true,
            tso: true,
            tso6: true,
        };
        let mut g: G = env.group(EngineConfig::default(), tso);
        let (mut e, se, _) = attach(h, 35, 0, mac(35));
        let (mut fh, sf, _) = attach(h, 36, 0, mac(36));
        g.add_queue(se);
        g.add_queue(sf);
        let mut state = HashState::new(36, 1);
        let mut gc = xen::sim::SimGrant::new(xen::sim::DomainTable::new(h.layout().clone()), 0);
        let key_ref = fh.grant_data(&[0x6d; 40]).unwrap();
        for (ty, data) in [
            (XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [1, 0, 0]),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
                [XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, 0, 0],
            ),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [key_ref, 40, 0]),
        ] {
            let rsp = state.handle(&mut gc, CtrlRequest { id: 0, ty, data });
            assert_eq!(rsp.status, XEN_NETIF_CTRL_STATUS_SUCCESS, "type {ty}");
        }
        let payload: Vec<u8> = (0..6000).map(|i| i as u8).collect();
        let frame = tcp_frame(mac(36), mac(35), false, &payload);
        let want = state.frame_hash(&frame).expect("a TCP/IPv4 hash");
        g.handle()
            .set_steering(36, 0, Some(std::sync::Arc::new(state)));
        let meta = TxMeta {
            csum_blank: true,
            gso: Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)),
            slot_size: 4096,
            ..Default::default()
        };
        e.send(0, &frame, meta).unwrap();
        let mut got = Vec::new();
        poll_until(&mut g, 10, |_| {
            got.extend(fh.poll_rx(0).unwrap());
            !got.is_empty()
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data.len(), frame.len());
        assert_eq!(got[0].gso, Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)));
        assert_eq!(
            got[0].hash,
            Some((_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, want.value))
        );
        // Data, GSO extra, hash extra, then the second data slot.
        assert_eq!(got[0].slots, 4);
        drop(g);
    }
    env.finish();
}
