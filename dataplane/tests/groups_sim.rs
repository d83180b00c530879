//! Two groups sharing one L2 domain on the simulated host (`connect_groups`), each on its
//! own queue of a `net_ring0` port (which loops each TX queue back to the RX queue of the
//! same number): vifs in different groups reach each other through the handoff rings and
//! never through the uplink; a broadcast reaches every vif once per flood; a frame arriving
//! on either port queue reaches its vif once, whichever group owns it; a MAC one group
//! learned is not flooded to by the other; a removed queue is forgotten by the other group;
//! queues moved between running groups under load lose no frame. EAL once per process: one
//! test function.

use dataplane::engine::Features;
use dataplane::engine::{connect_groups, move_queue, EngineConfig, Group, GroupHandle, QueueId};
use dataplane::offload::TxCaps;
use guest::harness::{attach, attach_queues};
use guest::pktgen::{PktGen, Sink};
use guest::{Netfront, TxMeta};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::{SimEvtchn, SimGrant};

const MA: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 5];
const MB: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 6];
const MC: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 7];
const MD: [u8; 6] = [0x00, 0x16, 0x3e, 0, 0, 8];
const WIRE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const BCAST: [u8; 6] = [0xff; 6];

type G = Group<SimGrant, SimEvtchn>;

fn gen(src: [u8; 6], dst: [u8; 6]) -> PktGen {
    PktGen {
        src_mac: src,
        dst_mac: dst,
        src_ip: [10, 0, 0, src[5]],
        dst_ip: [10, 0, 0, dst[5]],
        sport: 9,
        dport: 9,
        frame_len: 200,
        seq: 0,
    }
}

/// Received frames per vif (A, B, C), each through a sequence-checking sink.
#[derive(Default)]
struct Rx {
    sinks: [Sink; 3],
}

impl Rx {
    fn drain(&mut self, nfs: &mut [&mut Netfront; 3]) {
        for (nf, s) in nfs.iter_mut().zip(self.sinks.iter_mut()) {
            for p in nf.poll_rx(0).expect("poll_rx") {
                s.accept(&p.data);
            }
        }
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.sinks[i].stats.packets)
    }
}

/// Sends `n` frames from `nf` (polling the groups while its ring is full), then polls until
/// `done` or 10 s.
fn send_and_settle(
    groups: &mut [G],
    nfs: &mut [&mut Netfront; 3],
    from: usize,
    g: &mut PktGen,
    n: u64,
    rx: &mut Rx,
    done: impl Fn(&Rx) -> bool,
) {
    let mut f = Vec::new();
    let mut sent = 0;
    let t = Instant::now();
    while (sent < n || !done(rx)) && t.elapsed() < Duration::from_secs(10) {
        while sent < n {
            g.next_frame(&mut f);
            if nfs[from].send(0, &f, TxMeta::default()).is_err() {
                g.seq -= 1;
                break;
            }
            sent += 1;
        }
        for grp in groups.iter_mut() {
            grp.poll();
        }
        rx.drain(nfs);
    }
    assert_eq!(sent, n, "every frame queued");
}

/// The groups polling on their own threads until the flag is set (join to get them back).
fn run_on_threads(groups: Vec<G>) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<G>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let runners = groups
        .into_iter()
        .map(|mut g| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    g.poll();
                }
                g
            })
        })
        .collect();
    (stop, runners)
}

fn port_out(env: &guest::harness::Env) -> u64 {
    env.port.stats().expect("port stats").opackets
}

#[test]
fn groups_share_one_l2_domain() {
    let env = guest::harness::Env::with_queues("grp", 512, 16383, 2);
    {
        let h = &env.host;
        for d in [5, 6, 7, 8] {
            h.add_domain(d, &format!("g{d}"), 4096, 8192).unwrap();
        }
        let (mut nfa, sa, _) = attach(h, 5, 0, MA);
        let (mut nfb, sb, cb) = attach(h, 6, 0, MB);
        let (mut nfc, sc, _) = attach(h, 7, 0, MC);
        // Step 8 sends 2000 frames a phase at once: the backlogs hold them all, so that
        // a receiver slowed by a loaded host cannot turn into counted overflow drops (the
        // step is about moves losing nothing).
        let cfg = EngineConfig {
            backlog_packets: 4096,
            backlog_bytes: 4 << 20,
            ..Default::default()
        };
        let mut groups = vec![
            env.group_on(0, cfg, TxCaps::default()),
            env.group_on(1, cfg, TxCaps::default()),
        ];
        let handles: Vec<GroupHandle> =
            connect_groups(&mut groups, dataplane::engine::HANDOFF_RING).expect("handoff rings");
        // A in group 0; B and C in group 1.
        assert!(handles[0].add_queue(sa));
        assert!(handles[1].add_queue(sb));
        assert!(handles[1].add_queue(sc));
        for g in groups.iter_mut() {
            g.poll();
        }
        assert_eq!(groups[0].queue_count(), 1);
        assert_eq!(groups[1].queue_count(), 2);
        let mut nfs = [&mut nfa, &mut nfb, &mut nfc];
        let mut rx = Rx::default();

        // 1. Unicast A (group 0) -> B (group 1): all 500 arrive in order, C sees none, and
        //    not one frame leaves through the port (no hairpin through the uplink).
        let out0 = port_out(&env);
        let mut ab = gen(MA, MB);
        send_and_settle(&mut groups, &mut nfs, 0, &mut ab, 500, &mut rx, |r| {
            r.counts()[1] >= 500
        });
        assert_eq!(rx.counts(), [0, 500, 0]);
        let s = &rx.sinks[1].stats;
        assert_eq!((s.bad, s.lost, s.reordered), (0, 0, 0), "{s:?}");
        assert_eq!(
            port_out(&env),
            out0,
            "a vif-to-vif flow never reaches the uplink"
        );
        assert_eq!(groups[0].counters.handoffs.load(Ordering::Relaxed), 500);

        // 2. The other way: C (group 1) -> A (group 0).
        rx = Rx::default();
        let mut ca = gen(MC, MA);
        send_and_settle(&mut groups, &mut nfs, 2, &mut ca, 300, &mut rx, |r| {
            r.counts()[0] >= 300
        });
        assert_eq!(rx.counts(), [300, 0, 0]);
        assert_eq!(rx.sinks[0].stats.lost, 0);
        assert_eq!(port_out(&env), out0);
        assert_eq!(groups[1].counters.handoffs.load(Ordering::Relaxed), 300);

        // 3. A broadcast from A: once to B and C (through group 1's ring), once to the
        //    port; net_ring brings that copy back on queue 0, and from the wire it is
        //    flooded to every vif, A included. So A 1, B 2, C 2, and exactly one frame out.
        rx = Rx::default();
        let mut bc = gen(MA, BCAST);
        send_and_settle(&mut groups, &mut nfs, 0, &mut bc, 1, &mut rx, |r| {
            r.counts() == [1, 2, 2]
        });
        // A little longer: nothing more may come.
        for _ in 0..200 {
            for g in groups.iter_mut() {
                g.poll();
            }
            rx.drain(&mut nfs);
        }
        assert_eq!(rx.counts(), [1, 2, 2], "each flood reaches each vif once");
        assert_eq!(port_out(&env), out0 + 1);

        // 4. Frames from the wire, on each port queue, for a vif of the other group.
        rx = Rx::default();
        let inject = |queue: u16, dst: [u8; 6], n: u64| {
            let mut g = gen(WIRE, dst);
            let mut f = Vec::new();
            let mut v = Vec::new();
            for _ in 0..n {
                g.next_frame(&mut f);
                let mut m = pmd::Mbuf::alloc(&env.pool).expect("mbuf");
                m.extend_from_slice(&f).expect("fits");
                v.push(m);
            }
            assert_eq!(env.port.tx_burst(queue, &mut v), n as usize);
        };
        inject(0, MC, 40); // arrives at group 0, for C in group 1
        inject(1, MA, 30); // arrives at group 1, for A in group 0
        let t = Instant::now();
        while rx.counts() != [30, 0, 40] && t.elapsed() < Duration::from_secs(10) {
            for g in groups.iter_mut() {
                g.poll();
            }
            rx.drain(&mut nfs);
        }
        assert_eq!(
            rx.counts(),
            [30, 0, 40],
            "exactly once, whichever queue they came on"
        );
        assert_eq!(rx.sinks[0].stats.lost + rx.sinks[2].stats.lost, 0);

        // 5. A MAC learned by one group is known to the other: WIRE2 talks only through
        //    port queue 0 (group 0 learns it); C, in group 1, then reaches it by unicast
        //    to the port, with no flood copy to A or B.
        const WIRE2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x78];
        rx = Rx::default();
        {
            let mut g = gen(WIRE2, MA);
            let mut f = Vec::new();
            g.next_frame(&mut f);
            let mut m = pmd::Mbuf::alloc(&env.pool).expect("mbuf");
            m.extend_from_slice(&f).expect("fits");
            assert_eq!(env.port.tx_burst(0, &mut vec![m]), 1);
        }
        let t = Instant::now();
        while rx.counts()[0] < 1 && t.elapsed() < Duration::from_secs(5) {
            for g in groups.iter_mut() {
                g.poll();
            }
            rx.drain(&mut nfs);
        }
        for _ in 0..10 {
            for g in groups.iter_mut() {
                g.poll();
            }
        }
        let out1 = port_out(&env);
        let mut cw = gen(MC, WIRE2);
        send_and_settle(&mut groups, &mut nfs, 2, &mut cw, 20, &mut rx, |_| true);
        for _ in 0..100 {
            for g in groups.iter_mut() {
                g.poll();
            }
            rx.drain(&mut nfs);
        }
        assert_eq!(rx.counts(), [1, 0, 0], "no flood copies of C's unicast");
        assert_eq!(port_out(&env), out1 + 20);

        // 6. A vif with two queues, one in each group: a broadcast reaches it once (not
        //    once per queue), and flows from the wire spread over both queues by a flow
        //    hash, each flow on one queue.
        let (mut nfd, sd, _) = attach_queues(
            h,
            8,
            0,
            MD,
            Features {
                sg: true,
                ..Default::default()
            },
            2,
        );
        let mut sd = sd.into_iter();
        assert!(handles[0].add_queue(sd.next().unwrap()));
        assert!(handles[1].add_queue(sd.next().unwrap()));
        for g in groups.iter_mut() {
            g.poll();
        }
        let d_rx = |groups: &mut [G], nfd: &mut Netfront, polls: usize| {
            let mut got: Vec<(u16, Vec<u8>)> = Vec::new();
            for _ in 0..polls {
                for g in groups.iter_mut() {
                    g.poll();
                }
                for q in 0..2 {
                    for p in nfd.poll_rx(q).expect("poll_rx") {
                        got.push((q as u16, p.data));
                    }
                }
            }
            got
        };
        rx = Rx::default();
        let mut bd = gen(MA, BCAST);
        send_and_settle(&mut groups, &mut nfs, 0, &mut bd, 1, &mut rx, |_| true);
        let got = d_rx(&mut groups, &mut nfd, 200);
        rx.drain(&mut nfs);
        // Once flooded by A's group, once more from the wire (net_ring loops it back).
        assert_eq!(
            got.len(),
            2,
            "a broadcast reaches a two-queue vif once per flood"
        );
        let mut per_flow: std::collections::HashMap<u16, std::collections::HashSet<u16>> =
            Default::default();
        let mut wd = gen(WIRE, MD);
        let mut f = Vec::new();
        let mut v = Vec::new();
        for flow in 0..32u16 {
            for _ in 0..4 {
                wd.sport = 5000 + flow;
                wd.next_frame(&mut f);
                let mut m = pmd::Mbuf::alloc(&env.pool).expect("mbuf");
                m.extend_from_slice(&f).expect("fits");
                v.push(m);
            }
        }
        let n = v.len();
        let (mut q0, mut rest): (Vec<_>, Vec<_>) =
            v.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let mut q0: Vec<_> = q0.drain(..).map(|x| x.1).collect();
        let mut q1: Vec<_> = rest.drain(..).map(|x| x.1).collect();
        assert_eq!(
            env.port.tx_burst(0, &mut q0) + env.port.tx_burst(1, &mut q1),
            n
        );
        let got = d_rx(&mut groups, &mut nfd, 300);
        assert_eq!(got.len(), n, "every frame once");
        for (q, data) in &got {
            let sport = u16::from_be_bytes([data[34], data[35]]);
            per_flow.entry(sport).or_default().insert(*q);
        }
        assert_eq!(per_flow.len(), 32);
        assert!(
            per_flow.values().all(|qs| qs.len() == 1),
            "a flow stays on one queue"
        );
        let on_q1 = per_flow.values().filter(|qs| qs.contains(&1)).count();
        assert!(
            (4..=28).contains(&on_q1),
            "flows spread over both queues: {on_q1} of 32 on queue 1"
        );

        // 7. Remove B while the groups run on their own threads: group 0 forgets B's MAC,
        //    so a frame to it is unknown unicast again (flooded: the port and C get it).
        let (stop, runners) = run_on_threads(groups);
        let qb = QueueId {
            domid: 6,
            devid: 0,
            queue: 0,
        };
        assert!(handles[1].remove_queue(qb, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        rx = Rx::default();
        let mut f = Vec::new();
        ab.next_frame(&mut f);
        nfs[0].send(0, &f, TxMeta::default()).unwrap();
        // C: once flooded from A's group, once more from the wire (net_ring loops it back);
        // A: the wire's copy. Then a little longer: nothing more may come.
        let t = Instant::now();
        while rx.counts() != [1, 0, 2] && t.elapsed() < Duration::from_secs(5) {
            rx.drain(&mut nfs);
        }
        std::thread::sleep(Duration::from_millis(50));
        rx.drain(&mut nfs);
        // The groups stop before any assertion: a failing one must not unwind (and close
        // the port) under threads still polling it.
        stop.store(true, Ordering::Relaxed);
        let groups: Vec<G> = runners.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(rx.counts(), [1, 0, 2], "B's MAC is unknown everywhere now");
        for g in &groups {
            let c = &g.counters;
            assert_eq!(c.handoff_ring_full.load(Ordering::Relaxed), 0);
            assert_eq!(c.handoff_stale.load(Ordering::Relaxed), 0);
        }
        // B: 500 unicast and two broadcasts twice each (direct and from the wire).
        assert_eq!(cb.rx_packets.load(Ordering::Relaxed), 504);

        // 8. Queues moved between the running groups under load: A -> C and C -> A stream
        //    20000 sequence-checked frames each while C's queue moves to group 0 and back
        //    and A's to group 1 and back (their backlogs and rings go along). None lost,
        //    none reordered.
        let counts = [groups[0].queue_count(), groups[1].queue_count()];
        let (stop, runners) = run_on_threads(groups);
        let qa = QueueId {
            domid: 5,
            devid: 0,
            queue: 0,
        };
        let qc = QueueId { domid: 7, ..qa };
        // (queue, from, to) after 2000, 4000, ... frames each way.
        let mut moves = vec![(qc, 1, 0), (qa, 0, 1), (qc, 0, 1), (qa, 1, 0)].into_iter();
        let n = 20_000u64;
        let mut gens = [gen(MA, MC), gen(MC, MA)];
        let mut sinks = [Sink::default(), Sink::default()];
        let (mut sent, mut moved, mut f) = ([0u64; 2], Vec::new(), Vec::new());
        let t = Instant::now();
        while (sinks[0].stats.packets < n || sinks[1].stats.packets < n)
            && t.elapsed() < Duration::from_secs(30)
        {
            for (i, nf) in [0usize, 2].into_iter().enumerate() {
                let cap = if moved.len() < 4 {
                    2000 * (moved.len() as u64 + 1)
                } else {
                    n
                };
                while sent[i] < cap {
                    gens[i].next_frame(&mut f);
                    if nfs[nf].send(0, &f, TxMeta::default()).is_err() {
                        gens[i].seq -= 1;
                        break;
                    }
                    sent[i] += 1;
                }
                // A's frames arrive at C and C's at A.
                for p in nfs[2 - nf].poll_rx(0).expect("poll_rx") {
                    sinks[i].accept(&p.data);
                }
            }
            if moved.len() < 4 && sent.iter().all(|&s| s >= 2000 * (moved.len() as u64 + 1)) {
                if let Some((q, from, to)) = moves.next() {
                    moved.push(move_queue(&handles, q, from, to, Duration::from_secs(5)));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        for (i, nf) in [0usize, 2].into_iter().enumerate() {
            for p in nfs[2 - nf].poll_rx(0).expect("poll_rx") {
                sinks[i].accept(&p.data);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let groups: Vec<G> = runners.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(moved, [true; 4], "every move acknowledged");

        for s in &sinks {
            let st = &s.stats;
            assert_eq!(
                (st.packets, st.lost, st.bad, st.reordered),
                (n, 0, 0, 0),
                "{st:?}"
            );
        }
        eprintln!(
            "moves under load: reordered {} and {}, forwarded {} and {}",
            sinks[0].stats.reordered,
            sinks[1].stats.reordered,
            groups[0].counters.handoff_forwarded.load(Ordering::Relaxed),
            groups[1].counters.handoff_forwarded.load(Ordering::Relaxed)
        );
        for (g, (out, inn)) in groups.iter().zip([(2, 2), (2, 2)]) {
            let c = &g.counters;
            assert_eq!(c.queues_moved_out.load(Ordering::Relaxed), out);
            assert_eq!(c.queues_moved_in.load(Ordering::Relaxed), inn);
            assert_eq!(c.handoff_stale.load(Ordering::Relaxed), 0);
            assert_eq!(c.handoff_ring_full.load(Ordering::Relaxed), 0);
        }
        // Back where they started: A in group 0, C in group 1.
        assert_eq!([groups[0].queue_count(), groups[1].queue_count()], counts);
        // A queue is moved only from the group that has it, to another group.
        let (stop, runners) = run_on_threads(groups);
        let t = Duration::from_secs(1);
        assert!(!move_queue(&handles, qa, 1, 0, t), "not in group 1");
        assert!(!move_queue(&handles, qa, 0, 0, t), "to where it is");
        assert!(!move_queue(&handles, qa, 0, 2, t), "no group 2");
        stop.store(true, Ordering::Relaxed);
        let groups: Vec<G> = runners.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!([groups[0].queue_count(), groups[1].queue_count()], counts);
        drop(groups);
    }
    env.finish();
}
