//! xenstored unreachable for a while (issue 14 item 3): `netbackd run` on the simulated
//! host, two guests streaming to each other through it (sequence-checked), and the real
//! xenstored stopped (SIGSTOP) for 3 seconds, then continued.
//! - the connected vifs keep forwarding all the while: frames flow during the outage and
//!   none is lost or reordered;
//! - the daemon stays up and serves `/metrics`;
//! - once the store answers again, a vif attached after the outage connects and its traffic
//!   passes, and the two vifs are still Connected.
//!
//! - xenstored killed: the vifs still forward, the daemon logs that the store is lost;
//!   a new xenstored on the same socket: the daemon reconnects (logged) and rescans. (A
//!   restarted xenstored comes back empty unless it was live-updated, which the sim host
//!   does not model: the daemon then closes the vifs whose directories are gone.)
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x0b, d as u8]
}

/// A 300-byte UDP stream from guest `from` to guest `to`.
fn gen(from: u8, to: u8) -> PktGen {
    PktGen {
        src_mac: mac(u16::from(from)),
        dst_mac: mac(u16::from(to)),
        src_ip: [10, 11, 0, from],
        dst_ip: [10, 11, 0, to],
        sport: 9,
        dport: 9,
        frame_len: 300,
        seq: 0,
    }
}

/// Streams `a` -> `b` for `dur`, paced; returns what `b` received.
fn stream(a: &mut Netfront, b: &mut Netfront, g: &mut PktGen, sink: &mut Sink, dur: Duration) {
    let mut f = Vec::new();
    let t = Instant::now();
    while t.elapsed() < dur {
        for _ in 0..20 {
            g.next_frame(&mut f);
            if a.send(0, &f, TxMeta::default()).is_err() {
                g.seq -= 1;
                break;
            }
        }
        for p in b.poll_rx(0).unwrap() {
            sink.accept(&p.data);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Takes what `b` still receives until `sink` has `sent` frames (3 s at most).
fn drain(b: &mut Netfront, sink: &mut Sink, sent: u64) {
    let t = Instant::now();
    while sink.stats.packets < sent && t.elapsed() < Duration::from_secs(3) {
        for p in b.poll_rx(0).unwrap() {
            sink.accept(&p.data);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on the sim's own xenstored child, by pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn xenstored_stalled_for_seconds() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-xso-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(95, mac(95)), (96, mac(96)), (97, mac(97))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rxso-{pid}"), &maddr, ""),
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let mut a = attach_front(&root, &xs, FrontConfig::new(95, 0));
    let mut b = attach_front(&root, &xs, FrontConfig::new(96, 0));
    let mut g = gen(95, 96);
    let mut sink = Sink::default();
    stream(
        &mut a,
        &mut b,
        &mut g,
        &mut sink,
        Duration::from_millis(500),
    );
    let before = sink.stats.packets;
    assert!(before > 0, "the stream runs before the outage");

    let xpid: i32 = std::fs::read_to_string(format!("{root}/xenstored.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(xpid, libc::SIGSTOP);
    let t = Instant::now();
    stream(&mut a, &mut b, &mut g, &mut sink, Duration::from_secs(3));
    let during = sink.stats.packets - before;
    // The daemon still answers (its metrics come from counters, not from the store).
    let (code, _) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200, "metrics while xenstored is stopped");
    signal(xpid, libc::SIGCONT);
    let outage = t.elapsed();
    stream(
        &mut a,
        &mut b,
        &mut g,
        &mut sink,
        Duration::from_millis(500),
    );
    drain(&mut b, &mut sink, g.seq);
    let st = sink.stats;
    eprintln!(
        "xenstored stopped {outage:?}: {during} frames forwarded during the outage; \
         in all {} sent, {} received, lost {}, reordered {}, bad {}",
        g.seq, st.packets, st.lost, st.reordered, st.bad
    );
    assert!(
        during > 1000,
        "frames kept flowing while xenstored was stopped: {during}"
    );
    assert_eq!(
        (st.packets, st.lost, st.reordered, st.bad),
        (g.seq, 0, 0, 0)
    );

    // The store answers again: a new vif connects and passes traffic; the old ones stay.
    let mut c = attach_front(&root, &xs, FrontConfig::new(97, 0));
    let mut g2 = gen(97, 96);
    let mut sink2 = Sink::default();
    stream(
        &mut c,
        &mut b,
        &mut g2,
        &mut sink2,
        Duration::from_millis(300),
    );
    drain(&mut b, &mut sink2, g2.seq);
    assert!(
        g2.seq > 0 && sink2.stats.packets == g2.seq,
        "{:?}",
        sink2.stats
    );
    for d in [95, 96, 97] {
        assert_eq!(
            xs.read(
                xen::Tx::NONE,
                &format!("/local/domain/0/backend/vif/{d}/0/state")
            )
            .unwrap()
            .as_deref(),
            Some("4"),
            "vif {d}"
        );
    }

    // xenstored dies for good: the vifs keep forwarding, the daemon stays up.
    signal(xpid, libc::SIGKILL);
    let before = sink.stats.packets;
    stream(&mut a, &mut b, &mut g, &mut sink, Duration::from_secs(1));
    let after_kill = sink.stats.packets - before;
    let (code, _) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200, "metrics with xenstored gone");
    eprintln!("xenstored killed: {after_kill} frames forwarded in the next second");
    assert!(
        after_kill > 1000,
        "frames kept flowing with xenstored gone: {after_kill}"
    );
    let log_has = |what: &str, secs: u64| {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap();
            if let Some(l) = log.lines().find(|l| l.contains(what)) {
                return l.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "no '{what}' in the log: {log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    eprintln!("{}", log_has("xenstore connection lost", 5));

    // A new xenstored on the same socket (as xencommons would start one): the daemon
    // reconnects. (Its store is empty: the vifs' directories are gone, so the daemon
    // closes them, as it would after the toolstack removed them.)
    let layout = xen::sim::SimLayout::new(std::path::PathBuf::from(&root));
    let _ = std::fs::remove_file(layout.xenstore_socket());
    let mut xsd = std::process::Command::new(xen::sim::XENSTORED)
        .args(["--no-fork", "--pid-file"])
        .arg(format!("{root}/xenstored-2.pid"))
        .env("XENSTORED_RUNDIR", layout.xenstored_dir())
        .env("XENSTORED_PATH", layout.xenstore_socket())
        .env("NBD_SIM_XSD_DIR", layout.xenstored_dir())
        .env("LD_PRELOAD", format!("{root}/libnbd_xsshim.so"))
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eprintln!("{}", log_has("xenstore connection restored", 10));
    let _ = xsd.kill();
    let _ = xsd.wait();

    // The guests' side of the store is gone too: their rings are left as they are.
    drop((a, b, c));
    assert!(term_and_wait(run).success());
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rxso-{pid}")).exists());
}
