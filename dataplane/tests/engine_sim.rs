//! The engine end to end on the simulated host: a guest's netfront, a group, and a DPDK
//! `net_ring` port looping the guest's packets back (guest TX -> grant copy -> mbuf ->
//! switch -> port -> net_ring -> port -> switch -> guest RX -> grant copy -> netfront).
//! EAL once per process: one test function.

use dataplane::engine::EngineConfig;
use dataplane::netif::TxRequest;
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::pktgen::{PktGen, Sink};
use guest::TxMeta;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 5];

#[test]
fn guest_traffic_through_engine_and_net_ring() {
    let env = guest::harness::Env::new("eng", 512, 16383);
    {
        let (_pool, _port, h) = (&env.pool, &env.port, &env.host);
        h.add_domain(5, "g5", 4096, 8192).unwrap();
        h.add_domain(6, "g6", 4096, 8192).unwrap();
        let (mut nf, setup, ctr) = attach(h, 5, 0, MAC);
        let (mut nf6, setup6, ctr6) = attach(h, 6, 0, [0x00, 0x16, 0x3e, 0, 0, 6]);
        let mut g = env.group(EngineConfig::default(), TxCaps::default());
        g.add_queue(setup);
        g.add_queue(setup6);

        // 1. 2000 pktgen frames of 64..1514 bytes, to an unknown MAC: flooded to the uplink,
        //    looped back by net_ring, flooded from the uplink to every vif (the sender
        //    included: from the wire it is just another frame).
        let mut gen = PktGen {
            src_mac: MAC,
            dst_mac: [2, 0, 0, 0, 0, 0x99],
            src_ip: [10, 0, 0, 5],
            dst_ip: [10, 0, 0, 99],
            sport: 9,
            dport: 9,
            frame_len: 64,
            seq: 0,
        };
        let mut sink5 = Sink::default();
        let mut sink6 = Sink::default();
        let n = 2000u64;
        let mut f = Vec::new();
        let mut sent = 0;
        let t = Instant::now();
        while (sink5.stats.packets < n
            || sink6.stats.packets + ctr6.rx_drop_backlog_full.load(Ordering::Relaxed) < 2 * n)
            && t.elapsed() < Duration::from_secs(30)
        {
            while sent < n {
                gen.frame_len = 64 + (sent as usize * 37) % 1450;
                gen.next_frame(&mut f);
                if nf.send(0, &f, TxMeta::default()).is_err() {
                    gen.seq -= 1;
                    break;
                }
                sent += 1;
            }
            g.poll();
            for p in nf.poll_rx(0).unwrap() {
                sink5.accept(&p.data);
            }
            for p in nf6.poll_rx(0).unwrap() {
                sink6.accept(&p.data);
            }
            nf.reap_tx(0).unwrap();
        }
        assert_eq!(
            sink5.stats,
            guest::pktgen::SinkStats {
                packets: n,
                bytes: sink5.stats.bytes,
                bad: 0,
                lost: 0,
                reordered: 0
            },
            "dom5 {:?}",
            ctr
        );
        // dom6 gets each frame twice (flooded vif to vif, and again from the wire) but
        // drains at most `budget` per iteration: its bounded backlog overflows, and every
        // frame is either delivered intact or counted as a backlog drop.
        let drops6 = ctr6.rx_drop_backlog_full.load(Ordering::Relaxed);
        assert_eq!(
            sink6.stats.packets + drops6,
            2 * n,
            "nothing lost without a counter"
        );
        assert_eq!(sink6.stats.bad, 0);
        assert_eq!(ctr6.rx_packets.load(Ordering::Relaxed), sink6.stats.packets);
        assert_eq!(
            g.counters.port_tx_full.load(Ordering::Relaxed),
            0,
            "the port never refused a packet"
        );
        assert_eq!(ctr.tx_packets.load(Ordering::Relaxed), n);
        assert_eq!(ctr.rx_packets.load(Ordering::Relaxed), n);
        assert_eq!(nf.stats.tx_errors, 0);

        // 2. Multi-slot packets (slots of 1000 bytes) up to 9000 bytes: byte-exact at dom6.
        for len in [1500usize, 4096, 4097, 9000] {
            let mut pkt = vec![0u8; len];
            pkt[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x98]);
            pkt[6..12].copy_from_slice(&MAC);
            pkt[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
            for (i, b) in pkt[14..].iter_mut().enumerate() {
                *b = (i * 7 + len) as u8;
            }
            nf.send(
                0,
                &pkt,
                TxMeta {
                    slot_size: 1000,
                    ..Default::default()
                },
            )
            .unwrap();
            // Two copies reach dom6: flooded directly and echoed by the wire.
            let t = Instant::now();
            let mut got = Vec::new();
            while got.len() < 2 {
                g.poll();
                let _ = nf.poll_rx(0).unwrap();
                got.extend(nf6.poll_rx(0).unwrap());
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "{len}-byte packet lost"
                );
            }
            assert_eq!(got.len(), 2);
            for p in &got {
                assert_eq!(p.data, pkt, "{len} bytes");
                assert_eq!(p.slots, len.div_ceil(4096));
            }
        }

        // 3. A rogue request (slot crossing a page) disables dom5's queue only.
        let gref = nf.grant_data(&[0u8; 64]).unwrap();
        nf.send_raw(
            0,
            &[TxRequest {
                gref,
                offset: 4090,
                flags: 0,
                id: 300,
                size: 60,
            }],
        )
        .unwrap();
        g.poll();
        let dis = g.take_disabled();
        assert_eq!(dis.len(), 1);
        assert_eq!(dis[0].0.domid, 5);
        assert_eq!(ctr.rogue.load(Ordering::Relaxed), 1);
        // dom6 still works: a frame from dom6 reaches the wire and comes back to dom6.
        let mut gen6 = PktGen {
            src_mac: [0x00, 0x16, 0x3e, 0, 0, 6],
            seq: 0,
            ..gen.clone()
        };
        gen6.next_frame(&mut f);
        nf6.send(0, &f, TxMeta::default()).unwrap();
        let mut s6 = Sink::default();
        let t = Instant::now();
        while s6.stats.packets == 0 && t.elapsed() < Duration::from_secs(5) {
            g.poll();
            for p in nf6.poll_rx(0).unwrap() {
                s6.accept(&p.data);
            }
        }
        assert_eq!(s6.stats.packets, 1, "the healthy vif keeps working");
        // 4. The control plane's channel: while the group runs in its own thread, removing
        //    a queue returns only once the group has let go of it.
        let handle = g.handle();
        assert_eq!(handle.load(), 2);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let runner = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                g.poll();
            }
            g
        });
        let q6 = dataplane::engine::QueueId {
            domid: 6,
            devid: 0,
            queue: 0,
        };
        assert!(
            handle.remove_queue(q6, Duration::from_secs(5)),
            "acknowledged"
        );
        assert!(
            !handle.remove_queue(q6, Duration::from_secs(5)),
            "already gone"
        );
        assert_eq!(handle.load(), 1);
        assert_eq!(
            dataplane::engine::least_loaded(std::slice::from_ref(&handle)).map(|h| h.load()),
            Some(1)
        );
        stop.store(true, Ordering::Relaxed);
        let g = runner.join().unwrap();
        assert_eq!(g.queue_count(), 1);
        let gc = &g.counters;
        assert!(gc.grant_copy_calls.load(Ordering::Relaxed) > 0);
        assert!(
            gc.grant_copy_ops.load(Ordering::Relaxed)
                >= gc.grant_copy_calls.load(Ordering::Relaxed)
        );
        assert!(
            gc.busy_iterations.load(Ordering::Relaxed) <= gc.iterations.load(Ordering::Relaxed)
        );
        drop(g);
    }
    env.finish();
}
