//! Restarting `netbackd run` with guests attached, on the simulated host: a guest streams
//! sequence-numbered frames through the daemon (its TX to the `net_ring0` port, which loops
//! them back, and its RX) while the daemon is killed with SIGKILL and started again, then
//! stopped with SIGTERM and started again. The guest keeps its connection (the xenstore
//! states of its vif never leave Connected); after SIGKILL only frames in flight are lost,
//! after SIGTERM none. A guest that wrote impossible ring indices while no daemon ran has
//! its vif closed with an `error` node at the next start, and `backend.on_stop = "close"`
//! (set live with SIGHUP) still closes the vifs at a stop.
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, FrontError, Netfront, TxMeta};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xen::{Tx, XenStore};

mod common;
use common::*;

/// Frames the guest keeps in flight at most (sent, not yet received back): the stream is
/// paced like a transport's window, so "in flight" has a bound a test can hold a loss to.
const WINDOW: u64 = 64;
/// Offset of the sequence number in a generated frame (Ethernet, IPv4, UDP headers).
const SEQ_AT: usize = 42;

/// The guest's side of the stream and what it saw.
struct Stream {
    gen: PktGen,
    frame: Vec<u8>,
    /// `frame` holds the next frame to send (the ring was full last time).
    pending: bool,
    sent: u64,
    seen: Vec<bool>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    highest: Option<u64>,
    sink: Sink,
    /// Frames given up on (in flight when the daemon was killed): they no longer hold the
    /// window.
    written_off: u64,
    /// The daemon was killed: what is in flight may never come back. Only then is it
    /// written off, so a daemon merely slow (a busy host) never has more than the window.
    killed: bool,
    last_rx: Instant,
    /// Longest time between two frames received, and when it ended.
    max_gap: Duration,
}

/// One phase's figures.
#[derive(Debug)]
struct Figures {
    sent: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    pause: Duration,
}

impl Stream {
    fn new(domid: u16) -> Stream {
        Stream {
            gen: PktGen {
                src_mac: [0x00, 0x16, 0x3e, 0, 0, domid as u8],
                dst_mac: [2, 0, 0, 0, 0, 0x44],
                src_ip: [10, 0, 0, domid as u8],
                dst_ip: [10, 0, 0, 44],
                sport: 9,
                dport: 9,
                frame_len: 200,
                seq: 0,
            },
            frame: Vec::new(),
            pending: false,
            sent: 0,
            seen: Vec::new(),
            unique: 0,
            duplicates: 0,
            reordered: 0,
            highest: None,
            sink: Sink::default(),
            written_off: 0,
            killed: false,
            last_rx: Instant::now(),
            max_gap: Duration::ZERO,
        }
    }

    /// Receives what arrived; sends while the window allows.
    fn step(&mut self, nf: &mut Netfront, send: bool) {
        for p in nf.poll_rx(0).unwrap() {
            if !self.sink.accept(&p.data) {
                continue;
            }
            let seq = u64::from_be_bytes(p.data[SEQ_AT..SEQ_AT + 8].try_into().unwrap());
            let now = Instant::now();
            self.max_gap = self.max_gap.max(now - self.last_rx);
            self.last_rx = now;
            let i = seq as usize;
            if i >= self.seen.len() {
                self.seen.resize(i + 1, false);
            }
            if self.seen[i] {
                self.duplicates += 1;
                continue;
            }
            self.seen[i] = true;
            self.unique += 1;
            match self.highest {
                Some(h) if seq < h => self.reordered += 1,
                _ => self.highest = Some(seq),
            }
        }
        if !send {
            return;
        }
        let in_flight = self.sent.saturating_sub(self.unique + self.written_off);
        if in_flight >= WINDOW && self.killed {
            // The daemon is gone: what was in flight may never come back.
            self.written_off = self.sent - self.unique;
            self.killed = false;
        }
        for _ in 0..16 {
            if self.sent.saturating_sub(self.unique + self.written_off) >= WINDOW {
                break;
            }
            if !self.pending {
                self.gen.next_frame(&mut self.frame);
                self.pending = true;
            }
            match nf.send(0, &self.frame, TxMeta::default()) {
                Ok(()) => {
                    self.sent += 1;
                    self.pending = false;
                }
                Err(FrontError::NoResources) => break,
                Err(e) => panic!("guest send: {e}"),
            }
        }
    }

    /// Resets the per-phase figures (the previous phase ended with nothing in flight).
    fn begin_phase(&mut self) -> (u64, u64, u64, u64) {
        self.max_gap = Duration::ZERO;
        self.last_rx = Instant::now();
        (self.sent, self.unique, self.duplicates, self.reordered)
    }

    /// Stops sending and takes what is still coming: until every frame sent came back, or
    /// nothing arrived for 10 s (a busy host holds the daemon's lcore for seconds at
    /// times; only frames in flight at a kill -9 never come).
    fn end_phase(&mut self, nf: &mut Netfront, start: (u64, u64, u64, u64)) -> Figures {
        let pause = self.max_gap;
        let t = Instant::now();
        let mut last = self.unique;
        let mut quiet = Instant::now();
        while self.unique < self.sent && quiet.elapsed() < Duration::from_secs(10) {
            assert!(t.elapsed() < Duration::from_secs(60));
            self.step(nf, false);
            if self.unique != last {
                last = self.unique;
                quiet = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.written_off = 0;
        let sent = self.sent - start.0;
        Figures {
            sent,
            lost: sent.saturating_sub(self.unique - start.1),
            duplicates: self.duplicates - start.2,
            reordered: self.reordered - start.3,
            pause,
        }
    }
}

/// `netbackd run --config CFG` with its stderr in `log`.
fn start(cfg: &std::path::Path, log: &std::path::Path) -> Guard {
    let log = std::fs::File::create(log).unwrap();
    Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

fn child(g: &mut Guard) -> &mut Child {
    g.0.as_mut().unwrap()
}

/// Runs the stream for `d`.
fn stream_for(s: &mut Stream, nf: &mut Netfront, other: &mut Netfront, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        s.step(nf, true);
        let _ = other.poll_rx(0);
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Waits (streaming meanwhile) until `log` contains `what`; returns the log.
fn wait_log(
    s: &mut Stream,
    nf: &mut Netfront,
    other: &mut Netfront,
    log: &std::path::Path,
    what: &str,
    n: usize,
) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= n {
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what:?} never logged {n} time(s):\n{text}"
        );
        stream_for(s, nf, other, Duration::from_millis(5));
    }
}

/// Streams until frames come back again (a loaded host may start the daemon's group late),
/// at most 20 s.
fn flowing(s: &mut Stream, nf: &mut Netfront, other: &mut Netfront) {
    let (t, seen) = (Instant::now(), s.unique);
    while s.unique == seen {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no frame came back through the resumed vif"
        );
        stream_for(s, nf, other, Duration::from_millis(5));
    }
}

fn config(root: &str, prefix: &str, maddr: &str, on_stop: &str) -> String {
    format!(
        "{}\n[backend]\non_stop = \"{on_stop}\"\nstop_drain_ms = 2000\n",
        sim_config(root, prefix, maddr, "")
    )
}

#[test]
fn restart_keeps_guests_attached() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-restart-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(
        &[
            (61, [0x00, 0x16, 0x3e, 0, 0, 61]),
            (62, [0x00, 0x16, 0x3e, 0, 0, 62]),
        ],
        &parent,
    );
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let cfg = parent.join("netbackd.toml");
    let maddr = free_addr();
    let prefix = |p: &str| format!("nbd-restart-{pid}-{p}");
    std::fs::write(&cfg, config(&root, &prefix("a"), &maddr, "keep")).unwrap();
    let log = |p: &str| parent.join(format!("netbackd-{p}.log"));
    let daemon = start(&cfg, &log("a"));
    let mut nf = attach_front(&root, &xs, FrontConfig::new(61, 0));
    let mut hostile = attach_front(&root, &xs, FrontConfig::new(62, 0));

    // Every value the vif's states take from now on, as watches see them.
    let be = "/local/domain/0/backend/vif/61/0/state";
    let fe = "/local/domain/61/device/vif/0/state";
    let states = Arc::new(Mutex::new(Vec::<(String, Option<String>)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let w = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
        w.watch(be, "be").unwrap();
        w.watch(fe, "fe").unwrap();
        let (states, stop) = (states.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(e) = w.read_watch_timeout(Duration::from_millis(20)) {
                    let v = w.read(Tx::NONE, &e.path).unwrap();
                    states.lock().unwrap().push((e.path, v));
                }
            }
        })
    };

    let mut s = Stream::new(61);
    // Warm-up: the stream flows, nothing lost.
    let mark = s.begin_phase();
    flowing(&mut s, &mut nf, &mut hostile);
    stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(500));
    let warm = s.end_phase(&mut nf, mark);
    assert!(warm.sent > 100, "{warm:?}");
    assert_eq!(
        (warm.lost, warm.duplicates, warm.reordered),
        (0, 0, 0),
        "{warm:?}"
    );

    // 1. SIGKILL under load, then a new daemon, three times (the kill lands at a different
    // point of the loop each time): only frames in flight lost.
    let mut daemon = daemon;
    let mut total = (0, 0, 0, 0);
    for (i, (p, ms)) in [("b", 300), ("c", 170), ("d", 230)].into_iter().enumerate() {
        let mark = s.begin_phase();
        stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(ms));
        child(&mut daemon).kill().unwrap();
        child(&mut daemon).wait().unwrap();
        daemon.0 = None;
        s.killed = true;
        let prev = if i == 0 { "a" } else { ["b", "c"][i - 1] };
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{}", prefix(prev)));
        stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(100));
        std::fs::write(&cfg, config(&root, &prefix(p), &maddr, "keep")).unwrap();
        let t_start = Instant::now();
        daemon = start(&cfg, &log(p));
        let text = wait_log(&mut s, &mut nf, &mut hostile, &log(p), "vif resumed", 2);
        let resumed_after = t_start.elapsed();
        assert!(!text.contains("refused"), "{text}");
        flowing(&mut s, &mut nf, &mut hostile);
        stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(500));
        let kill = s.end_phase(&mut nf, mark);
        let line = text
            .lines()
            .find(|l| l.contains("vif resumed") && l.contains("domid=61"))
            .unwrap_or_default()
            .to_string();
        eprintln!(
            "kill -9 #{} under load: {} of {} frames lost, {} duplicated, {} reordered; pause \
             {:.0} ms (vifs resumed {:.0} ms after the new daemon's start)\n  {}",
            i + 1,
            kill.lost,
            kill.sent,
            kill.duplicates,
            kill.reordered,
            kill.pause.as_secs_f64() * 1e3,
            resumed_after.as_secs_f64() * 1e3,
            line.trim()
        );
        assert!(kill.sent > 200, "{kill:?}");
        assert!(kill.lost <= WINDOW, "more than in flight lost: {kill:?}");
        assert!(kill.duplicates <= WINDOW, "{kill:?}");
        assert_eq!(
            nf.stats.tx_unexpected, 0,
            "duplicate or unposted TX responses"
        );
        total.0 += kill.lost;
        total.1 += kill.sent;
        total.2 += kill.duplicates;
        total.3 += kill.reordered;
    }
    eprintln!(
        "kill -9, 3 times: {} of {} frames lost, {} duplicated, {} reordered",
        total.0, total.1, total.2, total.3
    );

    // 2. SIGTERM under load, then a new daemon: nothing lost, duplicated or reordered.
    let mark = s.begin_phase();
    stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child(&mut daemon).id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while child(&mut daemon).try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(15), "no exit on SIGTERM");
        stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(2));
    }
    assert!(child(&mut daemon).wait().unwrap().success());
    daemon.0 = None;
    let stopped = std::fs::read_to_string(log("d")).unwrap();
    assert!(
        stopped.contains("in flight delivered") && stopped.contains("left connected"),
        "{stopped}"
    );
    std::fs::write(&cfg, config(&root, &prefix("e"), &maddr, "keep")).unwrap();
    let mut daemon = start(&cfg, &log("e"));
    wait_log(&mut s, &mut nf, &mut hostile, &log("e"), "vif resumed", 2);
    flowing(&mut s, &mut nf, &mut hostile);
    stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(700));
    let term = s.end_phase(&mut nf, mark);
    eprintln!(
        "SIGTERM under load: {} of {} frames lost, {} duplicated, {} reordered; pause {:.0} ms",
        term.lost,
        term.sent,
        term.duplicates,
        term.reordered,
        term.pause.as_secs_f64() * 1e3
    );
    assert!(term.sent > 200, "{term:?}");
    assert_eq!(
        (term.lost, term.duplicates, term.reordered),
        (0, 0, 0),
        "{term:?}"
    );
    assert_eq!(nf.stats.tx_unexpected, 0);
    assert_eq!(nf.stats.tx_errors, 0);

    // 3. A guest that wrote an impossible producer index while no daemon ran: its vif is
    // closed with an error node naming the ring; the other vif resumes.
    let mark = s.begin_phase();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child(&mut daemon).id() as i32, libc::SIGTERM) };
    while child(&mut daemon).try_wait().unwrap().is_none() {
        stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(2));
    }
    daemon.0 = None;
    hostile.poke_tx_req_prod(0, 0x8000_0000);
    std::fs::write(&cfg, config(&root, &prefix("f"), &maddr, "keep")).unwrap();
    let mut daemon = start(&cfg, &log("f"));
    let hb = "/local/domain/0/backend/vif/62/0";
    wait_state(&xs, &format!("{hb}/state"), "6", 20);
    let err = xs
        .read(Tx::NONE, &format!("{hb}/error"))
        .unwrap()
        .unwrap_or_default();
    assert!(
        err.starts_with("tx-ring-ref: ring indices cannot be resumed (req_prod 2147483648"),
        "{err}"
    );
    wait_log(&mut s, &mut nf, &mut hostile, &log("f"), "vif resumed", 1);
    flowing(&mut s, &mut nf, &mut hostile);
    stream_for(&mut s, &mut nf, &mut hostile, Duration::from_millis(300));
    let after = s.end_phase(&mut nf, mark);
    eprintln!(
        "SIGTERM with a hostile neighbour: {} of {} frames lost, {} duplicated, {} reordered; \
         pause {:.0} ms",
        after.lost,
        after.sent,
        after.duplicates,
        after.reordered,
        after.pause.as_secs_f64() * 1e3
    );
    assert_eq!(
        (after.lost, after.duplicates, after.reordered),
        (0, 0, 0),
        "{after:?}"
    );

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = states.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.iter().all(|(_, v)| v.as_deref() == Some("4")),
        "the vif's states left Connected: {seen:?}"
    );
    eprintln!(
        "vif61 states across 5 restarts: {} watch events, every one Connected (4)",
        seen.len()
    );

    // 4. backend.on_stop = "close", applied live with SIGHUP: the stop closes the vifs.
    std::fs::write(&cfg, config(&root, &prefix("f"), &maddr, "close")).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child(&mut daemon).id() as i32, libc::SIGHUP) };
    wait_log(
        &mut s,
        &mut nf,
        &mut hostile,
        &log("f"),
        "backend.on_stop close",
        1,
    );
    assert!(term_and_wait(daemon).success());
    assert_eq!(xs.read(Tx::NONE, be).unwrap().as_deref(), Some("6"));
    let closed = std::fs::read_to_string(log("f")).unwrap();
    assert!(closed.contains("vif(s) closed"), "{closed}");

    assert!(term_and_wait(sim).success());
    // The killed daemons' DPDK runtime directories were ours to remove; the others
    // removed theirs.
    for p in ["a", "b", "c", "d", "e", "f"] {
        assert!(!std::path::Path::new(&format!("/var/run/dpdk/{}", prefix(p))).exists());
    }
    std::fs::remove_dir_all(&parent).unwrap();
}
