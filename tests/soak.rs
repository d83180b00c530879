//! Soak (issue 14 item 3): `netbackd run` on the simulated host under mixed traffic,
//! attach/detach churn and hostile frontends at random, for `NBD_SOAK_SECS` seconds (60 in
//! `./dev test`; `./dev soak [MINUTES]` runs the long one in a release build).
//! - two guests stream to each other through the daemon, sequence-checked both ways, and
//!   to the wire (`net_ring0` loops it back, flooded to every vif);
//! - a third vif is attached, carries a little traffic and is detached, over and over;
//! - now and then a frontend with malformed keys (each of the cases the daemon must refuse)
//!   attaches and is refused, or a frontend posts an impossible ring index and is closed;
//! - after a warm-up the daemon's RSS, fd count and in-use mbufs (traffic paused) are the
//!   baseline; at the end (traffic stopped, churn vif gone) the mbufs in use are back to it
//!   (within the 32 a group allocates ahead),
//!   RSS is within 5% of it and the fds are the same; the streams lost nothing; once the
//!   daemon and the sim stop, no DPDK runtime files or xenstored are left.
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::time::{Duration, Instant};
use xen::sim::toolstack;
use xen::Tx;

mod common;
use common::*;

fn mac(d: u16) -> [u8; 6] {
    // As `common::mac` (what the toolstack writes for the vif), as bytes.
    [0x00, 0x16, 0x3e, 0x00, 0x00, d as u8]
}

fn gen(from: u16, to: u16) -> PktGen {
    PktGen {
        src_mac: mac(from),
        dst_mac: mac(to),
        src_ip: [10, 12, 0, from as u8],
        dst_ip: [10, 12, 0, to as u8],
        sport: 9,
        dport: 9,
        frame_len: 64 + 37 * usize::from(from % 7),
        seq: 0,
    }
}

/// (fds, RSS KiB) of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

fn mbufs_in_use(maddr: &str) -> f64 {
    let (code, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    sample(&body, "netbackd_mempool_mbufs", &["state=\"in_use\""]).expect("mempool gauge")
}

/// A cheap deterministic random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The two streaming guests: each sends a burst to the other and one frame to the wire,
/// and takes what arrived (sequence-checking what came from the other).
struct Pair {
    nfs: [Netfront; 2],
    gens: [PktGen; 2],
    wire: [PktGen; 2],
    sinks: [Sink; 2],
    frame: Vec<u8>,
}

impl Pair {
    fn step(&mut self, send: bool) {
        for i in 0..2 {
            if send {
                for _ in 0..8 {
                    self.gens[i].next_frame(&mut self.frame);
                    if self.nfs[i].send(0, &self.frame, TxMeta::default()).is_err() {
                        self.gens[i].seq -= 1;
                        break;
                    }
                }
                self.wire[i].next_frame(&mut self.frame);
                let _ = self.nfs[i].send(0, &self.frame, TxMeta::default());
            }
            let from = 1 - i;
            for p in self.nfs[i].poll_rx(0).unwrap() {
                // Only the other guest's stream is sequence-checked (its wire frames come
                // back flooded to both vifs).
                if p.data[6..12] == self.gens[from].src_mac
                    && p.data[0..6] == self.gens[from].dst_mac
                {
                    self.sinks[i].accept(&p.data);
                }
            }
        }
    }

    fn drain(&mut self) {
        let t = Instant::now();
        while (self.sinks[0].stats.packets < self.gens[1].seq
            || self.sinks[1].stats.packets < self.gens[0].seq)
            && t.elapsed() < Duration::from_secs(5)
        {
            self.step(false);
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn soak() {
    let secs: u64 = std::env::var("NBD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-soak-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let host = xen::sim::SimHost::start(Default::default()).unwrap();
    for d in [101u16, 102, 103, 104] {
        host.add_domain(d, &format!("soak{d}"), 4096, 8192).unwrap();
    }
    let xs = host.store();
    let root = host.root().to_string_lossy().into_owned();
    let maddr = free_addr();
    let cfg = parent.join("netbackd.toml");
    let prefix = format!("nbd-rsoak-{pid}");
    std::fs::write(&cfg, sim_config(&root, &prefix, &maddr, "")).unwrap();
    let run = spawn_run(&cfg);
    let dpid = run.0.as_ref().unwrap().id();
    for d in [101u16, 102] {
        toolstack::add_vif(xs, 0, d, 0, &common::mac(d), &Default::default()).unwrap();
    }
    let pair = Pair {
        nfs: [
            attach_front(&root, xs, FrontConfig::new(101, 0)),
            attach_front(&root, xs, FrontConfig::new(102, 0)),
        ],
        gens: [gen(101, 102), gen(102, 101)],
        wire: [
            PktGen {
                dst_mac: [0x02, 0, 0, 0, 0, 0x99],
                ..gen(101, 0x99)
            },
            PktGen {
                dst_mac: [0x02, 0, 0, 0, 0, 0x99],
                ..gen(102, 0x99)
            },
        ],
        sinks: [Sink::default(), Sink::default()],
        frame: Vec::new(),
    };
    let be = |d: u16| toolstack::backend_path(0, d, 0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(pid));
    let cases = guest::harness::malformed_frontend_cases();
    let (mut churns, mut refused, mut rogues) = (0u32, 0u32, 0u32);
    let mut churn_gen = gen(103, 101);

    // Events (churn, hostile frontends) on this thread, at random intervals.
    let mut run_for = |dur: Duration, counts: &mut (u32, u32, u32)| {
        let t = Instant::now();
        while t.elapsed() < dur {
            std::thread::sleep(Duration::from_millis(100 + rng.next(300)));
            match rng.next(10) {
                // Churn: vif 103 attached, a little traffic, detached.
                0..=5 => {
                    toolstack::add_vif(xs, 0, 103, 0, &common::mac(103), &Default::default())
                        .unwrap();
                    let mut nf = connect(&host, 103, 0);
                    let mut f = Vec::new();
                    for _ in 0..20 {
                        churn_gen.next_frame(&mut f);
                        let _ = nf.send(0, &f, TxMeta::default());
                    }
                    toolstack::request_detach(xs, 0, 103, 0).unwrap();
                    wait_state(xs, &format!("{}/state", be(103)), "6", 10);
                    nf.close().unwrap();
                    toolstack::remove_vif(xs, 0, 103, 0).unwrap();
                    counts.0 += 1;
                }
                // A frontend whose keys the daemon must refuse.
                6..=8 => {
                    let (want, keys) = &cases[rng.next(cases.len() as u64) as usize];
                    toolstack::add_vif(xs, 0, 104, 0, &common::mac(104), &Default::default())
                        .unwrap();
                    wait_state(xs, &format!("{}/state", be(104)), "2", 10);
                    let fe = toolstack::frontend_path(104, 0);
                    for (k, v) in keys {
                        xs.write(Tx::NONE, &format!("{fe}/{k}"), v).unwrap();
                    }
                    xs.write(Tx::NONE, &format!("{fe}/state"), "4").unwrap();
                    wait_state(xs, &format!("{}/state", be(104)), "6", 10);
                    let err = xs.read(Tx::NONE, &format!("{}/error", be(104))).unwrap();
                    assert_eq!(err.as_deref(), Some(*want), "refused frontend");
                    toolstack::remove_vif(xs, 0, 104, 0).unwrap();
                    counts.1 += 1;
                }
                // A frontend that posts an impossible producer index: closed as rogue.
                _ => {
                    toolstack::add_vif(xs, 0, 103, 0, &common::mac(103), &Default::default())
                        .unwrap();
                    let mut nf = connect(&host, 103, 0);
                    nf.poke_tx_req_prod(0, 0x4000_0000);
                    wait_state(xs, &format!("{}/state", be(103)), "6", 10);
                    let _ = nf.close();
                    toolstack::request_detach(xs, 0, 103, 0).unwrap();
                    toolstack::remove_vif(xs, 0, 103, 0).unwrap();
                    counts.2 += 1;
                }
            }
        }
    };

    // The pair streams on its own thread all along (paused for the two samples).
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (sending, stop) = (AtomicBool::new(true), AtomicBool::new(false));
    let settle = || std::thread::sleep(Duration::from_millis(500));
    let warm = Duration::from_secs((secs / 10).max(5));
    let mut counts = (0, 0, 0);
    let (pair, fds0, rss0, mbufs0, fds1, rss1, mbufs1, t) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut pair = pair;
            while !stop.load(Relaxed) {
                pair.step(sending.load(Relaxed));
                std::thread::sleep(Duration::from_millis(1));
            }
            pair.drain();
            pair
        });
        // Warm-up, then the baseline with traffic paused.
        run_for(warm, &mut counts);
        sending.store(false, Relaxed);
        settle();
        let (fds0, rss0) = usage(dpid);
        let mbufs0 = mbufs_in_use(&maddr);
        sending.store(true, Relaxed);
        let t = Instant::now();
        run_for(Duration::from_secs(secs).saturating_sub(warm), &mut counts);
        sending.store(false, Relaxed);
        settle();
        let (fds1, rss1) = usage(dpid);
        let mbufs1 = mbufs_in_use(&maddr);
        stop.store(true, Relaxed);
        let pair = h.join().unwrap();
        (pair, fds0, rss0, mbufs0, fds1, rss1, mbufs1, t)
    });
    let mut pair = pair;
    (churns, refused, rogues) = (churns + counts.0, refused + counts.1, rogues + counts.2);
    let s = [pair.sinks[0].stats, pair.sinks[1].stats];
    eprintln!(
        "soak {secs} s ({:?} after warm-up): streams {}+{} frames, lost {}+{}, reordered {}+{}, \
         bad {}+{}; churn {churns} attach/detach cycles, {refused} refused frontends, {rogues} \
         rogue frontends closed; fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB, mbufs in use \
         {mbufs0} -> {mbufs1}",
        t.elapsed(),
        s[0].packets,
        s[1].packets,
        s[0].lost,
        s[1].lost,
        s[0].reordered,
        s[1].reordered,
        s[0].bad,
        s[1].bad
    );
    let (_, body) = http_get(&maddr, "/metrics");
    let drops: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("drops_total") && !l.starts_with('#') && !l.ends_with(" 0"))
        .collect();
    eprintln!("drops: {drops:?}");
    assert_eq!((s[0].lost, s[1].lost, s[0].bad, s[1].bad), (0, 0, 0, 0));
    assert_eq!((s[0].reordered, s[1].reordered), (0, 0));
    assert_eq!(
        s[0].packets, pair.gens[1].seq,
        "101 got all of 102's stream"
    );
    assert_eq!(
        s[1].packets, pair.gens[0].seq,
        "102 got all of 101's stream"
    );
    assert!(
        churns > 0 && refused > 0 && rogues > 0,
        "{churns} {refused} {rogues}"
    );
    assert_eq!(fds1, fds0, "fds");
    assert!(
        (rss1 as f64) <= rss0 as f64 * 1.05,
        "RSS grew more than 5%: {rss0} -> {rss1} KiB"
    );
    // A group keeps up to 32 mbufs allocated ahead for guest TX (its burst cache), which
    // count as in use: the baseline is exact to within that.
    assert!(
        mbufs1 <= mbufs0 + 32.0,
        "mbufs in use back to the baseline: {mbufs0} -> {mbufs1}"
    );

    for nf in pair.nfs.iter_mut() {
        nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    host.stop().unwrap();
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/{prefix}")).exists());
    assert!(
        !std::path::Path::new(&root).exists(),
        "the sim root (and its xenstored) is gone"
    );
}
