//! Rebalancing against `netbackd run` (two groups) on the simulated host: vifs 61 and 63
//! land in group 0 and 62 in group 1 (least loaded per queue); 61 and 63 stream to each
//! other, 62 is idle. With `engine.rebalance_secs = 1` the daemon moves one of the busy
//! queues to group 1 while the streams run, and the sequence-checked streams lose and
//! reorder nothing. Then `netbackd ctl move` moves 62's queue by hand, and refuses a queue,
//! group or vif that does not exist.
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

fn mac(d: u8) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x06, d]
}

/// `netbackd ctl` with stdout and stderr together.
fn ctl_text(sock: &std::path::Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = ctl(sock, args);
    (ok, out + &err)
}

fn moves(maddr: &str, group: &str, dir: &str) -> f64 {
    let (code, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    let g = format!("group=\"{group}\"");
    let d = format!("direction=\"{dir}\"");
    sample(&body, "netbackd_group_queue_moves_total", &[&g, &d]).unwrap_or(0.0)
}

#[test]
fn busy_group_sheds_a_queue_without_losing_a_frame() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-rebal-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(
        &[(61, mac(0x3d)), (62, mac(0x3e)), (63, mac(0x3f))],
        &parent,
    );
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let ctl_sock = parent.join("ctl.sock");
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        ctl_socket(
            &sim_config(&root, &format!("nbd-rbal-{pid}"), &maddr, ""),
            &ctl_sock,
        ) + "[engine]\ngroups = 2\nidle_sleep_us = 0\nrebalance_secs = 1\nrebalance_gap_pct = 20\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let mut nfs: Vec<Netfront> = [61u16, 62, 63]
        .into_iter()
        .map(|d| attach_front(&root, &xs, FrontConfig::new(d, 0)))
        .collect();

    // 61 <-> 63 (both in group 0) until group 0 has shed a queue, then 2 s more.
    let gen = |s: u8, d: u8| PktGen {
        src_mac: mac(s),
        dst_mac: mac(d),
        src_ip: [10, 6, 0, s],
        dst_ip: [10, 6, 0, d],
        sport: 7000,
        dport: 7000,
        frame_len: 300,
        seq: 0,
    };
    let mut gens = [gen(0x3d, 0x3f), gen(0x3f, 0x3d)];
    let mut sinks = [Sink::default(), Sink::default()];
    let mut sent = [0u64; 2];
    let mut f = Vec::new();
    let t = Instant::now();
    let mut moved_at = None;
    let mut last_check = Instant::now();
    while moved_at.is_none_or(|m: Instant| m.elapsed() < Duration::from_secs(2)) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "group 0 never shed a queue"
        );
        for (i, (from, to)) in [(0usize, 2usize), (2, 0)].into_iter().enumerate() {
            // At most 200 in flight: the receiving guest is a sink in this thread, and
            // what outruns it would be dropped at its full backlog, not lost in a move.
            while sent[i] - sinks[i].stats.packets < 200 {
                gens[i].next_frame(&mut f);
                if nfs[from].send(0, &f, TxMeta::default()).is_err() {
                    gens[i].seq -= 1;
                    break;
                }
                sent[i] += 1;
            }
            for p in nfs[to].poll_rx(0).unwrap() {
                sinks[i].accept(&p.data);
            }
        }
        if moved_at.is_none() && last_check.elapsed() > Duration::from_millis(200) {
            last_check = Instant::now();
            if moves(&maddr, "0", "out") >= 1.0 {
                moved_at = Some(Instant::now());
            }
        }
    }
    let t = Instant::now();
    while (sinks[0].stats.packets < sent[0] || sinks[1].stats.packets < sent[1])
        && t.elapsed() < Duration::from_secs(5)
    {
        for (i, to) in [2usize, 0].into_iter().enumerate() {
            for p in nfs[to].poll_rx(0).unwrap() {
                sinks[i].accept(&p.data);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for (s, n) in sinks.iter().zip(sent) {
        let st = &s.stats;
        assert_eq!(
            (st.packets, st.lost, st.reordered, st.bad),
            (n, 0, 0, 0),
            "{st:?}"
        );
    }
    assert!(sent.iter().all(|&n| n > 1000), "the streams ran: {sent:?}");
    assert_eq!(moves(&maddr, "1", "in"), moves(&maddr, "0", "out"));
    assert!(
        moves(&maddr, "0", "out") <= 2.0,
        "no ping-pong: {} moves",
        moves(&maddr, "0", "out")
    );

    // By hand: 62's queue to group 0 and back; what does not exist is refused.
    let (ok, out) = ctl_text(&ctl_sock, &["move", "62.0", "0", "0"]);
    assert!(ok, "{out}");
    assert!(out.contains("moved from group 1 to group 0"), "{out}");
    let (ok, out) = ctl_text(&ctl_sock, &["move", "62.0", "0", "1"]);
    assert!(ok && out.contains("moved from group 0 to group 1"), "{out}");
    for (args, want) in [
        (["move", "62.0", "5", "0"], "has no queue 5"),
        (["move", "62.0", "0", "7"], "no group 7"),
        (["move", "99.0", "0", "0"], "99"),
    ] {
        let (ok, out) = ctl_text(&ctl_sock, &args);
        assert!(!ok && out.contains(want), "{args:?}: {out}");
    }
    // 62 still talks to 61 after its moves.
    let mut g = gen(0x3e, 0x3d);
    let mut sink = Sink::default();
    let t = Instant::now();
    let mut n = 0;
    while sink.stats.packets < 200 && t.elapsed() < Duration::from_secs(10) {
        if n < 200 {
            g.next_frame(&mut f);
            if nfs[1].send(0, &f, TxMeta::default()).is_ok() {
                n += 1;
            } else {
                g.seq -= 1;
            }
        }
        for p in nfs[0].poll_rx(0).unwrap() {
            // 63's stream has stopped; only 62's frames come now.
            sink.accept(&p.data);
        }
    }
    assert_eq!((sink.stats.packets, sink.stats.lost), (200, 0));

    for nf in &mut nfs {
        nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rbal-{pid}")).exists());
}
