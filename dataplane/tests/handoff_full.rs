//! A group that stops draining its handoff ring (busy, or stuck) costs the other groups
//! only the frames that do not fit: they are dropped and counted as `handoff_ring_full`,
//! nothing blocks, and no mbuf leaks (what waits in the ring is freed with it).
//! EAL once per process: one test function.

use dataplane::engine::{connect_groups, EngineConfig, GroupHandle};
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::pktgen::{PktGen, Sink};
use guest::TxMeta;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const MA: [u8; 6] = [0x00, 0x16, 0x3e, 0, 1, 5];
const MB: [u8; 6] = [0x00, 0x16, 0x3e, 0, 1, 6];
const RING: u32 = 64;

#[test]
fn a_full_handoff_ring_drops_and_counts() {
    let env = guest::harness::Env::with_queues("hfull", 512, 16383, 2);
    {
        let h = &env.host;
        h.add_domain(5, "a", 4096, 8192).unwrap();
        h.add_domain(6, "b", 4096, 8192).unwrap();
        let (mut nfa, sa, _) = attach(h, 5, 0, MA);
        let (mut nfb, sb, cb) = attach(h, 6, 0, MB);
        let mut groups = vec![
            env.group_on(0, EngineConfig::default(), TxCaps::default()),
            env.group_on(1, EngineConfig::default(), TxCaps::default()),
        ];
        let handles: Vec<GroupHandle> = connect_groups(&mut groups, RING).expect("rings");
        assert!(handles[0].add_queue(sa));
        assert!(handles[1].add_queue(sb));
        for g in groups.iter_mut() {
            g.poll();
        }
        // Group 1 is not polled from here on: A's 300 frames for B fill its ring.
        let mut gen = PktGen {
            src_mac: MA,
            dst_mac: MB,
            src_ip: [10, 0, 1, 5],
            dst_ip: [10, 0, 1, 6],
            sport: 9,
            dport: 9,
            frame_len: 100,
            seq: 0,
        };
        let n = 300u64;
        let mut f = Vec::new();
        let mut sent = 0;
        let t = Instant::now();
        while sent < n && t.elapsed() < Duration::from_secs(10) {
            gen.next_frame(&mut f);
            if nfa.send(0, &f, TxMeta::default()).is_err() {
                gen.seq -= 1;
            } else {
                sent += 1;
            }
            groups[0].poll();
        }
        for _ in 0..100 {
            groups[0].poll();
        }
        assert_eq!(sent, n, "group 0 kept serving its guest");
        let c0 = groups[0].counters.clone();
        let (handed, full) = (
            c0.handoffs.load(Ordering::Relaxed),
            c0.handoff_ring_full.load(Ordering::Relaxed),
        );
        assert_eq!(handed, u64::from(RING), "the ring holds exactly its size");
        assert_eq!(handed + full, n, "every frame handed over or counted");
        // Group 1 resumes: B gets what the ring held, in order.
        let mut sink = Sink::default();
        let t = Instant::now();
        while sink.stats.packets < handed && t.elapsed() < Duration::from_secs(10) {
            groups[1].poll();
            for p in nfb.poll_rx(0).unwrap() {
                sink.accept(&p.data);
            }
        }
        assert_eq!(sink.stats.packets, handed);
        assert_eq!((sink.stats.bad, sink.stats.reordered), (0, 0));
        assert_eq!(cb.rx_packets.load(Ordering::Relaxed), handed);
        // A second burst while group 1 is stuck again stays in the ring when the groups
        // go: dropping them frees it (env.finish checks that no mbuf leaked).
        for _ in 0..10 {
            gen.next_frame(&mut f);
            nfa.send(0, &f, TxMeta::default()).unwrap();
        }
        for _ in 0..20 {
            groups[0].poll();
        }
        assert_eq!(c0.handoffs.load(Ordering::Relaxed), handed + 10);
        drop(groups);
    }
    env.finish();
}
