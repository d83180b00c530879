//! Adaptive mode: an idle group sleeps on its event channels (it stops iterating), and a
//! guest's next request notifies it awake long before the sleep bound. EAL once per process.

use dataplane::engine::{Adaptive, EngineConfig};
use dataplane::offload::TxCaps;
use guest::harness::attach;
use guest::TxMeta;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn idle_group_sleeps_and_wakes_on_a_request() {
    let env = guest::harness::Env::new("adapt", 256, 4095);
    {
        let (_pool, _port, h) = (&env.pool, &env.port, &env.host);
        h.add_domain(51, "a", 2048, 4096).unwrap();
        h.add_domain(52, "b", 2048, 4096).unwrap();
        let mut g = env.group(EngineConfig::default(), TxCaps::default());
        let mac_b = [0x00, 0x16, 0x3e, 0, 5, 2];
        let (mut a, sa, _) = attach(h, 51, 0, [0x00, 0x16, 0x3e, 0, 5, 1]);
        let (mut b, sb, cb) = attach(h, 52, 0, mac_b);
        g.add_queue(sa);
        g.add_queue(sb);
        let counters = g.counters.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let runner = std::thread::spawn(move || {
            g.run(
                &stop2,
                Some(Adaptive {
                    idle_ns: 5_000_000,
                    max_sleep: Duration::from_secs(2),
                }),
            );
            g
        });
        // Idle: after 5 ms the group sleeps; its iteration count stops moving.
        std::thread::sleep(Duration::from_millis(100));
        let it0 = counters.iterations.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        let it1 = counters.iterations.load(Ordering::Relaxed);
        assert!(
            counters.sleeps.load(Ordering::Relaxed) >= 1,
            "the group slept"
        );
        assert!(
            it1 - it0 < 10,
            "not busy-polling while idle ({} iterations in 200 ms)",
            it1 - it0
        );

        // A request wakes it: A's frame to B is delivered well within the 2 s sleep bound.
        let mut f = vec![0u8; 100];
        f[..6].copy_from_slice(&mac_b);
        f[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0, 5, 1]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        let t = Instant::now();
        a.send(0, &f, TxMeta::default()).unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "the notification did not wake the group"
            );
            got.extend(b.poll_rx(0).unwrap());
            std::thread::sleep(Duration::from_millis(1));
        }
        let latency = t.elapsed();
        assert_eq!(got[0].data, f);
        assert!(
            latency < Duration::from_millis(300),
            "woke after {latency:?}"
        );
        assert_eq!(cb.rx_packets.load(Ordering::Relaxed), 1);
        eprintln!(
            "adaptive: asleep for 200 ms with {} iterations; woke and delivered in {latency:?}",
            it1 - it0
        );
        stop.store(true, Ordering::Relaxed);
        // The runner may be asleep for up to max_sleep; a notification wakes it sooner.
        let _ = a.send(0, &f, TxMeta::default());
        let g = runner.join().unwrap();
        drop(g);
    }
    env.finish();
}
