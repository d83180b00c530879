//! Guest RX under overload: a group pulls from its port only what its queues can take in an
//! iteration, so a guest that posts no buffers leaves the excess in the port (where a NIC
//! counts it as missed) instead of a backlog filling to its bound and dropping; nothing is
//! lost or reordered once the guest takes frames again. EAL once per process: one test.

use dataplane::engine::EngineConfig;
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::pktgen::{PktGen, Sink};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WIRE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
const VIF: [u8; 6] = [0x00, 0x16, 0x3e, 0, 5, 1];

#[test]
fn overload_stays_in_the_port() {
    let env = guest::harness::Env::new("rxpull", 512, 8191);
    let h = &env.host;
    h.add_domain(51, "g51", 4096, 8192).unwrap();
    // A budget that is not a multiple of the burst: a pull can bring more than a budget,
    // so frames wait in the backlog while newer ones arrive with buffers to take.
    let cfg = EngineConfig {
        budget: 48,
        ..Default::default()
    };
    assert_ne!(cfg.budget % usize::from(cfg.burst), 0);
    let (budget, burst) = (cfg.budget, usize::from(cfg.burst));
    let mut g = env.group(cfg, TxCaps::default());
    let (mut a, sa, ca) = attach(h, 51, 0, VIF);
    g.add_queue(sa);

    // Frames for the vif arrive on the port (net_ring0 loops its TX ring back to RX).
    let mut gen = PktGen {
        src_mac: WIRE,
        dst_mac: VIF,
        src_ip: [10, 0, 0, 1],
        dst_ip: [10, 0, 0, 51],
        sport: 7,
        dport: 7,
        frame_len: 300,
        seq: 0,
    };
    let mut f = Vec::new();
    let mut sent = 0usize;
    for _ in 0..16 {
        let mut v: Vec<pmd::Mbuf> = (0..32)
            .map(|_| {
                gen.next_frame(&mut f);
                let mut m = pmd::Mbuf::alloc(&env.pool).expect("mbuf");
                m.extend_from_slice(&f).expect("fits");
                m
            })
            .collect();
        sent += env.port.tx_burst(0, &mut v);
        assert!(v.is_empty(), "net_ring0 took every frame");
    }
    assert_eq!(sent, 512);

    // The guest takes nothing: the group fills the ring of buffers the guest posted at
    // attach time and then holds at most a budget (plus a burst) in the backlog, however
    // long it polls. Before the pull bound it pulled a budget every iteration and dropped
    // what its backlog could not hold.
    // Each iteration takes at most a budget for the queue: the first, with 256 buffers
    // posted and two bursts pulled, exactly one (straight from the port burst to the
    // guest, the backlog empty); the rest of the pull waits in the backlog.
    g.poll();
    assert_eq!(ca.rx_packets.load(Ordering::Relaxed) as usize, budget);
    for _ in 0..200 {
        g.poll();
    }
    let delivered = ca.rx_packets.load(Ordering::Relaxed) as usize;
    let full = ca.rx_drop_backlog_full.load(Ordering::Relaxed);
    assert_eq!(full, 0, "nothing dropped at the backlog");
    assert!(delivered > 0 && delivered < sent, "{delivered} delivered");
    let snap = g.snapshot();
    let backlog = snap.queues[0].backlog_packets;
    assert!(
        backlog <= budget + burst,
        "backlog {backlog} stays within a budget and a burst"
    );
    let in_port = sent - delivered - backlog;
    assert!(in_port > 0, "the excess waits in the port");

    // The guest takes its frames again: every frame arrives once, in order, intact (those
    // waiting in the backlog before any newer frame from the port, which would otherwise
    // find buffers first).
    let mut sink = Sink::default();
    let t = Instant::now();
    while sink.stats.packets < sent as u64 && t.elapsed() < Duration::from_secs(10) {
        g.poll();
        for p in a.poll_rx(0).unwrap() {
            assert!(sink.accept(&p.data), "frame intact");
        }
    }
    assert_eq!(
        (
            sink.stats.packets,
            sink.stats.lost,
            sink.stats.reordered,
            sink.stats.bad
        ),
        (sent as u64, 0, 0, 0),
        "all {sent} frames once, none lost, reordered or bad ({delivered} at first, {backlog} in the \
         backlog, {in_port} in the port)"
    );
    assert_eq!(ca.rx_drop_backlog_full.load(Ordering::Relaxed), 0);
}
