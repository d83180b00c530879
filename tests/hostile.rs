//! The attack suite (issue 14, item 2): hostile frontends attached to `netbackd run` on the
//! simulated host through the sim ABI itself (`guest::hostile`: any xenstore key, grant
//! entry, ring slot or index, any number of notifications), never through the
//! well-behaved netfront.
//!
//! Every case runs while a healthy neighbour streams sequence-numbered frames guest to
//! guest (dom 10 -> dom 11, in a thread of its own) and must lose none of them; the
//! notification storm must leave that stream's rate within 10% of its rate without it.
//! Each case asserts its expected outcome as DESIGN.md §5 tiers it: a counted drop (the
//! vif's `netbackd_vif_drops_total{reason}` moved, the requests answered ERROR, the vif
//! still forwarding), a rogue frontend (the vif Closed with its `error` node, counted in
//! `netbackd_domain_rogue_total{reason}`), or a refused configuration (Closed with the
//! `error` node naming the key, no event channel left bound, no ring left mapped); and the
//! daemon never exits. The daemon's RSS, fd count, mappings and CPU time are read from
//! /proc around each case, and a table of case -> tier -> outcome is printed.
use dataplane::netif::{
    ExtraInfo, RxRequest, TxRequest, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RSP_ERROR,
    XEN_NETIF_RSP_NULL, XEN_NETIF_RSP_OKAY,
};
use guest::hostile::Hostile;
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use xen::sim::grant::{GTF_PERMIT_ACCESS, GTF_READONLY};
use xen::sim::{toolstack, SimLayout};
use xen::XenStore;

mod common;
use common::*;

/// The healthy pair (sender, receiver), the feeder (sends to and receives from the
/// hostile vifs) and the hostile domain.
const SENDER: u16 = 10;
const RECEIVER: u16 = 11;
const FEEDER: u16 = 12;
const HOSTILE: u16 = 30;
/// The healthy stream's rate, frames/s.
const PACE: f64 = 10000.0;
/// Grant entries per sim guest (`netbackd sim`).
const GRANTS: u32 = 8192;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x00, d as u8]
}

fn hmac(devid: u32) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x30, devid as u8]
}

fn mac_s(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------
// The daemon as /proc sees it.

#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_kib: i64,
    fds: i64,
    /// Mappings of the hostile domain's RAM (ring pages the daemon has mapped).
    maps: i64,
    cpu_ms: i64,
}

fn proc_sample(pid: u32) -> ProcSample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    let state = stat.rsplit_once(") ").unwrap().1.chars().next();
    assert_ne!(state, Some('Z'), "the daemon exited");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as i64;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(&format!("/dom{HOSTILE}/memory")))
        .count() as i64;
    // Fields after the command (which may hold spaces): utime and stime are 14 and 15.
    let rest: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: i64 = rest[11].parse::<i64>().unwrap() + rest[12].parse::<i64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ProcSample {
        rss_kib,
        fds,
        maps,
        cpu_ms: ticks * 1000 / hz,
    }
}

/// A sample once the daemon's descriptors are back to `fds`, or after 2 s. A metrics
/// scrape's socket outlives the response the test has read (the HTTP server's connection
/// thread closes its half a moment later), so one sample can count a socket that is
/// already going; a descriptor the daemon leaks is still there after the 2 s.
fn settled_sample(pid: u32, fds: i64) -> ProcSample {
    let t = Instant::now();
    loop {
        let s = proc_sample(pid);
        if s.fds <= fds || t.elapsed() > Duration::from_secs(2) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// The healthy neighbour: dom 10 streams to dom 11 (unicast, guest to guest), sequence-
// checked, in a thread of its own, phase by phase.

enum Cmd {
    /// Stream (at most `pace` frames/s when given) until the next command.
    Run {
        pace: Option<f64>,
    },
    /// Stop sending, wait for what is in flight, report the phase.
    Drain(mpsc::Sender<Phase>),
    Stop,
}

#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    sent: u64,
    received: u64,
    bad: u64,
    secs: f64,
}

impl Phase {
    fn lost(&self) -> u64 {
        self.sent - self.received.min(self.sent)
    }
    fn rate(&self) -> f64 {
        self.received as f64 / self.secs
    }
}

struct Healthy {
    cmd: mpsc::Sender<Cmd>,
    thread: Option<std::thread::JoinHandle<Sink>>,
}

impl Healthy {
    fn start(root: &str) -> Healthy {
        let (cmd, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready) = mpsc::channel();
        let root = root.to_string();
        let thread = std::thread::spawn(move || {
            let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
            let mut a = attach_front(&root, &xs, FrontConfig::new(SENDER, 0));
            let mut b = attach_front(&root, &xs, FrontConfig::new(RECEIVER, 0));
            // The group installs a queue a moment after the backend says Connected; until
            // then frames for it are unknown unicast (flooded, and looped by the port).
            std::thread::sleep(Duration::from_millis(300));
            ready_tx.send(()).unwrap();
            let mut gen = PktGen {
                src_mac: mac(SENDER),
                dst_mac: mac(RECEIVER),
                src_ip: [10, 0, 0, SENDER as u8],
                dst_ip: [10, 0, 0, RECEIVER as u8],
                sport: 5000,
                dport: 5001,
                frame_len: 128,
                seq: 0,
            };
            let mut sink = Sink::default();
            let mut f = Vec::new();
            let mut ph = Phase::default();
            let mut pace = None;
            let mut running = false;
            let mut t0 = Instant::now();
            loop {
                match rx.try_recv() {
                    Ok(Cmd::Run { pace: p }) => {
                        running = true;
                        pace = p;
                        ph = Phase::default();
                        t0 = Instant::now();
                    }
                    Ok(Cmd::Drain(reply)) => {
                        let secs = t0.elapsed().as_secs_f64();
                        let t = Instant::now();
                        while ph.received < ph.sent && t.elapsed() < Duration::from_secs(3) {
                            for p in b.poll_rx(0).unwrap() {
                                if p.data[6..12] == mac(SENDER) {
                                    let before = sink.stats.packets;
                                    sink.accept(&p.data);
                                    ph.received += sink.stats.packets - before;
                                }
                            }
                            let _ = a.reap_tx(0);
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        ph.secs = secs;
                        ph.bad = sink.stats.bad;
                        running = false;
                        reply.send(ph).unwrap();
                    }
                    Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        a.close().ok();
                        b.close().ok();
                        return sink;
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                let mut busy = false;
                if running {
                    let due = pace.map_or(u64::MAX, |r| (t0.elapsed().as_secs_f64() * r) as u64);
                    // At most a ring's worth in flight: nothing is ever dropped for lack
                    // of buffers at the receiver.
                    while ph.sent < due && ph.sent - ph.received < 128 {
                        gen.next_frame(&mut f);
                        if a.send(0, &f, TxMeta::default()).is_err() {
                            gen.seq -= 1;
                            break;
                        }
                        ph.sent += 1;
                        busy = true;
                    }
                }
                for p in b.poll_rx(0).unwrap() {
                    busy = true;
                    if p.data[6..12] == mac(SENDER) {
                        let before = sink.stats.packets;
                        sink.accept(&p.data);
                        ph.received += sink.stats.packets - before;
                    }
                }
                let _ = a.poll_rx(0);
                if !busy {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(20))
            .expect("healthy pair connected");
        Healthy {
            cmd,
            thread: Some(thread),
        }
    }

    fn run(&self, pace: Option<f64>) {
        self.cmd.send(Cmd::Run { pace }).unwrap();
    }

    fn drain(&self) -> Phase {
        let (tx, rx) = mpsc::channel();
        self.cmd.send(Cmd::Drain(tx)).unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .expect("healthy stream reports")
    }

    fn stop(mut self) -> Sink {
        self.cmd.send(Cmd::Stop).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// The test's context: the sim, the daemon, the feeder netfront and the table.

struct Row {
    case: String,
    tier: &'static str,
    observed: String,
    lost: u64,
    d: ProcSample,
}

struct Ctx {
    root: String,
    layout: SimLayout,
    xs: XenStore,
    maddr: String,
    pid: u32,
    feeder: Netfront,
    feeder_gen: PktGen,
    next_devid: u32,
    rows: Vec<Row>,
    /// The daemon's mappings of the hostile domain's RAM when the current case began.
    maps0: i64,
}

/// Frames and grant references each hostile vif may use (they share the domain's).
const FRAMES_PER_VIF: u32 = 300;
const GREFS_PER_VIF: u32 = 150;

impl Ctx {
    fn metrics(&self) -> String {
        let (code, body) = http_get(&self.maddr, "/metrics");
        assert_eq!(code, 200);
        body
    }

    /// A hostile vif's sample (0 when absent).
    fn vif(&self, body: &str, name: &str, devid: u32, extra: &[&str]) -> f64 {
        let d = format!("domid=\"{HOSTILE}\"");
        let n = format!("devid=\"{devid}\"");
        let mut want = vec![d.as_str(), n.as_str()];
        want.extend_from_slice(extra);
        sample(body, name, &want).unwrap_or(0.0)
    }

    fn drops(&self, devid: u32, dir: &str, reason: &str) -> f64 {
        let body = self.metrics();
        let (d, r) = (
            format!("direction=\"{dir}\""),
            format!("reason=\"{reason}\""),
        );
        self.vif(&body, "netbackd_vif_drops_total", devid, &[&d, &r])
    }

    fn domain_rogue(&self, label: &str) -> f64 {
        let body = self.metrics();
        sample(
            &body,
            "netbackd_domain_rogue_total",
            &[
                &format!("domid=\"{HOSTILE}\""),
                &format!("reason=\"{label}\""),
            ],
        )
        .unwrap_or(0.0)
    }

    /// A new vif of the hostile domain (toolstack side done, backend in InitWait).
    fn hostile(&mut self) -> Hostile {
        let devid = self.next_devid;
        self.next_devid += 1;
        toolstack::add_vif(
            &self.xs,
            0,
            HOSTILE,
            devid,
            &mac_s(hmac(devid)),
            &Default::default(),
        )
        .unwrap();
        let f0 = devid * FRAMES_PER_VIF;
        let g0 = 16 + devid * GREFS_PER_VIF;
        let h = Hostile::new(
            &self.layout,
            XenStore::open_at(&format!("{}/xenstored/socket", self.root)).unwrap(),
            HOSTILE,
            devid,
            f0..f0 + FRAMES_PER_VIF,
            g0..g0 + GREFS_PER_VIF,
        )
        .unwrap();
        assert!(h.wait_backend(2, Duration::from_secs(5)), "InitWait");
        h
    }

    /// A hostile vif connected the well-behaved way, its metrics published.
    fn connected(&mut self) -> Hostile {
        let h = self.hostile();
        h.connect(Duration::from_secs(5)).unwrap();
        let devid = h.devid;
        scrape_until(&self.maddr, 5, |b| {
            self.vif(b, "netbackd_vif_state", devid, &[]) == 4.0
        });
        h
    }

    /// Runs one case with the healthy stream on; records its row.
    fn case(
        &mut self,
        healthy: &Healthy,
        case: &str,
        tier: &'static str,
        f: impl FnOnce(&mut Ctx) -> String,
    ) {
        let t = Instant::now();
        healthy.run(Some(PACE));
        let before = proc_sample(self.pid);
        self.maps0 = before.maps;
        let observed = f(self);
        let ph = healthy.drain();
        let after = settled_sample(self.pid, before.fds);
        assert!(
            std::fs::metadata(format!("/proc/{}", self.pid)).is_ok(),
            "{case}: the daemon exited"
        );
        eprintln!(
            "case {case}: {observed}; healthy {} sent, {} received in {:.2}s ({:?})",
            ph.sent,
            ph.received,
            ph.secs,
            t.elapsed()
        );
        assert_eq!(ph.bad, 0, "{case}: the healthy stream saw corrupt frames");
        assert!(ph.sent > 0, "{case}: the healthy stream did not run");
        assert_eq!(ph.lost(), 0, "{case}: the healthy stream lost frames");
        self.rows.push(Row {
            case: case.to_string(),
            tier,
            observed,
            lost: ph.lost(),
            d: ProcSample {
                rss_kib: after.rss_kib - before.rss_kib,
                fds: after.fds - before.fds,
                maps: after.maps - before.maps,
                cpu_ms: after.cpu_ms - before.cpu_ms,
            },
        });
    }

    /// Frames the hostile vifs sent to the feeder (polls for up to `wait`, until `n`).
    fn feeder_rx(&mut self, n: usize, wait: Duration) -> Vec<Vec<u8>> {
        let t = Instant::now();
        let mut out = Vec::new();
        loop {
            // Only what the hostile vifs sent (the healthy pair's stream is unicast, but
            // a frame switched before its receiver's queue was installed is flooded).
            out.extend(
                self.feeder
                    .poll_rx(0)
                    .unwrap()
                    .into_iter()
                    .map(|p| p.data)
                    .filter(|d| d.len() >= 12 && d[6..11] == hmac(0)[..5]),
            );
            if out.len() >= n || t.elapsed() > wait {
                return out;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `n` frames of `len` bytes from the feeder to hostile vif `devid`.
    fn feed(&mut self, devid: u32, n: u64, len: usize) {
        self.feeder_gen.dst_mac = hmac(devid);
        self.feeder_gen.frame_len = len;
        let mut f = Vec::new();
        let mut sent = 0;
        let t = Instant::now();
        while sent < n {
            assert!(t.elapsed() < Duration::from_secs(5), "feeder stuck");
            self.feeder_gen.next_frame(&mut f);
            if self.feeder.send(0, &f, TxMeta::default()).is_ok() {
                sent += 1;
            } else {
                self.feeder_gen.seq -= 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = self.feeder.poll_rx(0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames and requests.

/// A valid UDP frame from hostile vif `devid` to the feeder.
fn frame_to_feeder(devid: u32, len: usize, seq: u64) -> Vec<u8> {
    let mut g = PktGen {
        src_mac: hmac(devid),
        dst_mac: mac(FEEDER),
        src_ip: [10, 0, 1, devid as u8],
        dst_ip: [10, 0, 0, FEEDER as u8],
        sport: 7000,
        dport: 7001,
        frame_len: len,
        seq,
    };
    let mut f = Vec::new();
    g.next_frame(&mut f);
    f
}

fn req(gref: u32, offset: u16, size: u16, flags: u16, id: u16) -> TxRequest {
    TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

/// The requests of one packet whose bytes lie contiguously from offset 0 of `gref`'s page,
/// cut into slots of the given sizes (the first slot's `size` is the packet's).
fn sliced(gref: u32, sizes: &[u16], first_flags: u16) -> Vec<TxRequest> {
    let total: u16 = sizes.iter().sum();
    let mut off = 0u16;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let more = if i + 1 < sizes.len() {
                NETTXF_MORE_DATA
            } else {
                0
            };
            let flags = more | if i == 0 { first_flags } else { 0 };
            let r = req(gref, off, if i == 0 { total } else { s }, flags, i as u16);
            off += s;
            r
        })
        .collect()
}

fn statuses(rsps: &[dataplane::netif::TxResponse]) -> Vec<i16> {
    rsps.iter().map(|r| r.status).collect()
}

/// A TCP/IPv4 frame of `len` bytes (checksum left for offload) from the feeder to `dst`.
fn tcp_frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac(FEEDER));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, FEEDER as u8]);
    ip[16..20].copy_from_slice(&[10, 0, 1, 99]);
    let c = guest::pktgen::csum(ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&9000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9001u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
    f
}

// ---------------------------------------------------------------------------------------
// Expected outcomes.

/// Tier 2: the vif is Closed with an `error` node holding `msg`, and the domain's rogue
/// counter for `label` went up by one.
fn expect_rogue(ctx: &Ctx, h: &Hostile, label: &str, msg: &str, before: f64) -> String {
    assert!(
        h.wait_backend(6, Duration::from_secs(5)),
        "{label}: vif not closed (state {:?})",
        h.backend("state")
    );
    let err = h.backend("error").expect("error node");
    assert_eq!(err, format!("frontend broke the netif protocol: {msg}"));
    let t = Instant::now();
    while ctx.domain_rogue(label) != before + 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "netbackd_domain_rogue_total{{reason={label}}} did not count it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = ctx.metrics();
    assert_eq!(
        ctx.vif(&body, "netbackd_vif_rogue_total", h.devid, &[]),
        1.0
    );
    // Its rings are unmapped and its channels unbound.
    while proc_sample(ctx.pid).maps != ctx.maps0 {
        assert!(t.elapsed() < Duration::from_secs(5), "rings left mapped");
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in [h.evtchn_tx, h.evtchn_rx] {
        assert_eq!(h.port_state(p), 1, "port {p} left bound");
    }
    format!("Closed, rogue{{{label}}} +1, error \"{msg}\"")
}

/// Tier 1: `n` packets counted under (dir, reason) for this vif, still Connected, and it
/// still forwards a valid frame to the feeder afterwards.
fn expect_drop(ctx: &mut Ctx, h: &mut Hostile, dir: &str, reason: &str, n: f64) -> String {
    let t = Instant::now();
    while ctx.drops(h.devid, dir, reason) != n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drops {{{dir},{reason}}} = {}, want {n}",
            ctx.drops(h.devid, dir, reason)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.backend("state").as_deref(), Some("4"), "vif disabled");
    still_forwards(ctx, h);
    format!("{dir} drop{{{reason}}} +{n}, still Connected and forwarding")
}

/// A valid frame from the hostile vif reaches the feeder intact.
fn still_forwards(ctx: &mut Ctx, h: &mut Hostile) {
    let f = frame_to_feeder(h.devid, 100, 0xabcdef);
    let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS | GTF_READONLY).unwrap();
    h.tx_put(&[req(g, 0, f.len() as u16, 0, 0x77)]);
    h.tx_push();
    let got = ctx.feeder_rx(1, Duration::from_secs(3));
    assert!(
        got.contains(&f),
        "a valid frame after the bad one was not forwarded"
    );
}

/// Posts `n` RX buffers (fresh frames, granted writable) on the hostile vif.
fn post_rx(h: &mut Hostile, n: usize) -> Vec<u32> {
    let mut frames = Vec::new();
    for _ in 0..n {
        let f = h.frame().unwrap();
        let be = h.backend_dom;
        let g = h.grant(f, GTF_PERMIT_ACCESS, be).unwrap();
        let id = (h.rx_prod % 256) as u16;
        h.rx_put(&[RxRequest {
            id,
            pad: 0,
            gref: g,
        }]);
        frames.push(f);
    }
    h.rx_push();
    frames
}

/// A refused configuration: Closed, the `error` node exactly `msg`, the vif's channels not
/// left bound (unbound again, offered to the backend) and no ring left mapped.
fn expect_refused(ctx: &Ctx, h: &Hostile, msg: &str, maps_before: i64) -> String {
    assert!(
        h.wait_backend(6, Duration::from_secs(5)),
        "not refused (state {:?}, error {:?})",
        h.backend("state"),
        h.backend("error")
    );
    assert_eq!(h.backend("error").as_deref(), Some(msg));
    for p in [h.evtchn_tx, h.evtchn_rx] {
        assert_eq!(h.port_state(p), 1, "port {p} left bound after a refusal");
    }
    assert_eq!(
        proc_sample(ctx.pid).maps,
        maps_before,
        "ring pages left mapped after a refusal"
    );
    format!("Closed, error \"{msg}\", nothing left bound or mapped")
}

#[test]
fn hostile_frontends() {
    let t_all = Instant::now();
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-hostile-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim(
        &[
            "--guest",
            &SENDER.to_string(),
            "--vif",
            &format!("{SENDER}:0:{}", mac_s(mac(SENDER))),
            "--guest",
            &RECEIVER.to_string(),
            "--vif",
            &format!("{RECEIVER}:0:{}", mac_s(mac(RECEIVER))),
            "--guest",
            &FEEDER.to_string(),
            "--vif",
            &format!("{FEEDER}:0:{}", mac_s(mac(FEEDER))),
            "--guest",
            &format!("{HOSTILE}:rogue"),
        ],
        &parent,
    );
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let cfg = parent.join("netbackd.toml");
    // A one-second stall timeout, so the XSA-392 case fits the run.
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-hostile-{pid}"), &maddr, "") + "[engine]\nstall_secs = 1\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let dpid = run.0.as_ref().unwrap().id();
    let feeder = attach_front(&root, &xs, FrontConfig::new(FEEDER, 0));
    let healthy = Healthy::start(&root);
    let mut ctx = Ctx {
        layout: SimLayout::new(&root),
        root: root.clone(),
        xs,
        maddr,
        pid: dpid,
        feeder,
        feeder_gen: PktGen {
            src_mac: mac(FEEDER),
            dst_mac: [0; 6],
            src_ip: [10, 0, 0, FEEDER as u8],
            dst_ip: [10, 0, 1, 1],
            sport: 6000,
            dport: 6001,
            frame_len: 200,
            seq: 0,
        },
        next_devid: 0,
        rows: Vec::new(),
        maps0: 0,
    };
    // Warm-up (the first connection's allocations are not a case's).
    ctx.case(&healthy, "warm-up: a well-behaved vif", "-", |ctx| {
        let mut h = ctx.connected();
        still_forwards(ctx, &mut h);
        "Connected, forwards".into()
    });

    ring_cases(&mut ctx, &healthy);
    slot_cases(&mut ctx, &healthy);
    extra_cases(&mut ctx, &healthy);
    grant_cases(&mut ctx, &healthy);
    race_cases(&mut ctx, &healthy);
    rx_cases(&mut ctx, &healthy);
    storm_case(&mut ctx, &healthy);
    xenstore_cases(&mut ctx, &healthy);

    let sink = healthy.stop();
    println!(
        "\n{:<52} {:<18} {:<8} {:>9} {:>6} {:>5} {:>7}  observed",
        "case", "expected tier", "lost", "RSS KiB", "fds", "maps", "CPU ms"
    );
    for r in &ctx.rows {
        println!(
            "{:<52} {:<18} {:<8} {:>+9} {:>+6} {:>+5} {:>7}  {}",
            r.case, r.tier, r.lost, r.d.rss_kib, r.d.fds, r.d.maps, r.d.cpu_ms, r.observed
        );
    }
    println!(
        "healthy stream: {} frames, {} lost, {} bad, {} reordered; {} cases in {:?}",
        sink.stats.packets,
        sink.stats.lost,
        sink.stats.bad,
        sink.stats.reordered,
        ctx.rows.len(),
        t_all.elapsed()
    );
    assert_eq!(sink.stats.lost + sink.stats.bad + sink.stats.reordered, 0);
    let first = ctx.rows[0].d;
    let total_fds: i64 = ctx.rows[1..].iter().map(|r| r.d.fds).sum();
    assert!(
        total_fds <= 0,
        "the daemon's fd count grew by {total_fds} over the cases (warm-up {first:?})"
    );
    let rss: i64 = ctx.rows[1..].iter().map(|r| r.d.rss_kib).sum();
    assert!(
        rss < 32 * 1024,
        "the daemon's RSS grew by {rss} KiB over the cases"
    );
    assert!(
        term_and_wait(run).success(),
        "the daemon did not stop cleanly"
    );
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-hostile-{pid}")).exists());
}

// ---------------------------------------------------------------------------------------
// The cases.

fn ring_cases(ctx: &mut Ctx, healthy: &Healthy) {
    ctx.case(healthy, "TX req_prod = rsp_prod + 5000", "2 rogue", |ctx| {
        let h = ctx.connected();
        let before = ctx.domain_rogue("impossible_tx_index");
        h.set_tx_req_prod(5000);
        h.notify_tx();
        expect_rogue(
            ctx,
            &h,
            "impossible_tx_index",
            "impossible TX ring index (req_prod)",
            before,
        )
    });
    ctx.case(
        healthy,
        "RX req_prod = rsp_prod - 1 (wrapped)",
        "2 rogue",
        |ctx| {
            let h = ctx.connected();
            let before = ctx.domain_rogue("impossible_rx_index");
            h.set_rx_req_prod(u32::MAX);
            h.notify_rx();
            // The RX ring is looked at when a frame waits for the vif.
            ctx.feed(h.devid, 1, 100);
            expect_rogue(
                ctx,
                &h,
                "impossible_rx_index",
                "impossible RX ring index (req_prod)",
                before,
            )
        },
    );
}

fn slot_cases(ctx: &mut Ctx, healthy: &Healthy) {
    // 19 data slots: more than 18, fewer than the fatal 20: every slot answered ERROR.
    ctx.case(healthy, "19 slots", "1 drop", |ctx| {
        let mut h = ctx.connected();
        let f = frame_to_feeder(h.devid, 19 * 64, 1);
        let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
        h.tx_put(&sliced(g, &[64; 19], 0));
        h.tx_push();
        let r = h.wait_tx_responses(19, Duration::from_secs(3));
        assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_ERROR; 19]);
        expect_drop(ctx, &mut h, "tx", "too_many_slots", 1.0)
    });
    for n in [20u16, 255] {
        ctx.case(healthy, &format!("{n} slots"), "2 rogue", |ctx| {
            let mut h = ctx.connected();
            let (g, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
            let before = ctx.domain_rogue("fatal_slot_count");
            let reqs: Vec<TxRequest> = (0..n)
                .map(|i| {
                    let more = if i + 1 < n { NETTXF_MORE_DATA } else { 0 };
                    req(g, 0, if i == 0 { n * 8 } else { 8 }, more, i)
                })
                .collect();
            h.tx_put(&reqs);
            h.tx_push();
            let out = expect_rogue(
                ctx,
                &h,
                "fatal_slot_count",
                "malformed TX request: a packet of 20 or more slots",
                before,
            );
            assert!(
                h.tx_responses().is_empty(),
                "a rogue packet is not answered"
            );
            out
        });
    }
    ctx.case(healthy, "frag larger than the frame", "1 drop", |ctx| {
        let mut h = ctx.connected();
        let (g, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
        h.tx_put(&[req(g, 0, 100, NETTXF_MORE_DATA, 0), req(g, 100, 200, 0, 1)]);
        h.tx_push();
        let r = h.wait_tx_responses(2, Duration::from_secs(3));
        assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_ERROR; 2]);
        expect_drop(ctx, &mut h, "tx", "frag_overflow", 1.0)
    });
    ctx.case(healthy, "first slot offset+size > 4096", "2 rogue", |ctx| {
        let mut h = ctx.connected();
        let (g, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
        let before = ctx.domain_rogue("first_slot_crosses_page");
        h.tx_put(&[req(g, 4000, 200, 0, 0)]);
        h.tx_push();
        expect_rogue(
            ctx,
            &h,
            "first_slot_crosses_page",
            "malformed TX request: the first slot crosses its 4 KiB page",
            before,
        )
    });
    ctx.case(
        healthy,
        "continuation offset+size > 4096",
        "2 rogue",
        |ctx| {
            let mut h = ctx.connected();
            let (g, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
            let before = ctx.domain_rogue("slot_crosses_page");
            h.tx_put(&[
                req(g, 0, 1000, NETTXF_MORE_DATA, 0),
                req(g, 3800, 500, 0, 1),
            ]);
            h.tx_push();
            expect_rogue(
                ctx,
                &h,
                "slot_crosses_page",
                "malformed TX request: a continuation slot crosses its 4 KiB page",
                before,
            )
        },
    );
    // XSA-448: zero-length slots are answered and never attached.
    ctx.case(
        healthy,
        "zero-length continuation slots",
        "accepted",
        |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 60, 2);
            let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            h.tx_put(&[
                req(g, 0, 60, NETTXF_MORE_DATA, 0),
                req(g, 30, 0, NETTXF_MORE_DATA, 1),
                req(g, 30, 30, NETTXF_MORE_DATA, 2),
                req(g, 60, 0, 0, 3),
            ]);
            h.tx_push();
            let r = h.wait_tx_responses(4, Duration::from_secs(3));
            assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_OKAY; 4]);
            let got = ctx.feeder_rx(1, Duration::from_secs(3));
            assert_eq!(got, vec![f], "the frame, intact, once");
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            "4 slots OKAY, the 60-byte frame delivered intact".into()
        },
    );
    // XSA-423 shape: the headers spread over 18 tiny slots (14 + 17 slots of 2-3 bytes).
    ctx.case(
        healthy,
        "18 tiny slots carrying one header",
        "accepted",
        |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 60, 3);
            let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            let mut sizes = vec![14u16];
            sizes.extend([3u16; 12]);
            sizes.extend([2u16; 5]);
            assert_eq!((sizes.len(), sizes.iter().sum::<u16>()), (18, 60));
            h.tx_put(&sliced(g, &sizes, 0));
            h.tx_push();
            let r = h.wait_tx_responses(18, Duration::from_secs(3));
            assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_OKAY; 18]);
            let got = ctx.feeder_rx(1, Duration::from_secs(3));
            assert_eq!(got, vec![f], "the frame, intact, once");
            "18 slots OKAY, the frame delivered intact".into()
        },
    );
    ctx.case(
        healthy,
        "18 tiny slots, first under an Ethernet header",
        "1 drop",
        |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 60, 4);
            let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            let mut sizes = vec![4u16];
            sizes.extend([4u16; 13]);
            sizes.extend([1u16; 4]);
            assert_eq!((sizes.len(), sizes.iter().sum::<u16>()), (18, 60));
            h.tx_put(&sliced(g, &sizes, 0));
            h.tx_push();
            let r = h.wait_tx_responses(18, Duration::from_secs(3));
            assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_ERROR; 18]);
            expect_drop(ctx, &mut h, "tx", "runt", 1.0)
        },
    );
}

fn extra_cases(ctx: &mut Ctx, healthy: &Healthy) {
    let gso = |size: u16, ty: u8, more: bool| ExtraInfo::gso(size, ty, more).to_tx_slot();
    type Build = Box<dyn Fn(u32) -> Vec<TxRequest>>;
    let cases: Vec<(&str, &str, &str, Build)> = vec![
        (
            "extra chain without end (ring ends)",
            "missing_extra",
            "malformed TX request: extra-info slot missing at the end of the ring",
            Box::new(move |g| {
                vec![
                    req(g, 0, 60, NETTXF_EXTRA_INFO, 0),
                    gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, true),
                ]
            }),
        ),
        (
            "extra chain of 30, every one MORE",
            "bad_extra_type",
            "malformed TX request: extra-info type 1 is not valid",
            Box::new(move |g| {
                let mut v = vec![req(g, 0, 60, NETTXF_EXTRA_INFO, 0)];
                v.extend((0..30).map(|_| gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, true)));
                v
            }),
        ),
        (
            "unknown extra type 9",
            "bad_extra_type",
            "malformed TX request: extra-info type 9 is not valid",
            Box::new(move |g| {
                let mut e = ExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, false);
                e.ty = 9;
                vec![req(g, 0, 60, NETTXF_EXTRA_INFO, 0), e.to_tx_slot()]
            }),
        ),
        (
            "GSO size 0",
            "zero_gso_size",
            "malformed TX request: GSO extra with size 0",
            Box::new(move |g| {
                vec![
                    req(g, 0, 60, NETTXF_EXTRA_INFO, 0),
                    gso(0, XEN_NETIF_GSO_TYPE_TCPV4, false),
                ]
            }),
        ),
        (
            "unknown GSO type 7",
            "bad_gso_type",
            "malformed TX request: GSO type 7 is not valid",
            Box::new(move |g| vec![req(g, 0, 60, NETTXF_EXTRA_INFO, 0), gso(1448, 7, false)]),
        ),
    ];
    for (name, label, msg, build) in cases {
        ctx.case(healthy, name, "2 rogue", |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 60, 5);
            let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            let before = ctx.domain_rogue(label);
            h.tx_put(&build(g));
            h.tx_push();
            expect_rogue(ctx, &h, label, msg, before)
        });
    }
}

fn grant_cases(ctx: &mut Ctx, healthy: &Healthy) {
    // (case, how the request's grant is made bad)
    type Spoil = Box<dyn Fn(&mut Hostile, u32, u32) -> u32>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "revoked grant",
            Box::new(|h, g, _| {
                h.set_grant(g, 0, 0, 0).unwrap();
                g
            }),
        ),
        (
            "grant ref beyond the table",
            Box::new(|_, _, _| GRANTS + 100),
        ),
        (
            "grant for another domain (dom 11)",
            Box::new(|h, g, f| {
                h.set_grant(g, GTF_PERMIT_ACCESS, RECEIVER, f).unwrap();
                g
            }),
        ),
        (
            "grant of a frame beyond the guest's RAM",
            Box::new(|h, g, _| {
                h.set_grant(g, GTF_PERMIT_ACCESS, 0, 1 << 30).unwrap();
                g
            }),
        ),
    ];
    for (name, spoil) in cases {
        ctx.case(healthy, &format!("TX: {name}"), "1 drop", |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 200, 6);
            let (g, frame) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            let bad = spoil(&mut h, g, frame);
            h.tx_put(&[req(bad, 0, 200, 0, 9)]);
            h.tx_push();
            let r = h.wait_tx_responses(1, Duration::from_secs(3));
            assert_eq!(statuses(&r), vec![XEN_NETIF_RSP_ERROR]);
            expect_drop(ctx, &mut h, "tx", "copy_error", 1.0)
        });
    }
    ctx.case(
        healthy,
        "RX: read-only grants posted as buffers",
        "1 drop",
        |ctx| {
            let mut h = ctx.connected();
            for _ in 0..8 {
                let f = h.frame().unwrap();
                let g = h.grant(f, GTF_PERMIT_ACCESS | GTF_READONLY, 0).unwrap();
                let id = (h.rx_prod % 256) as u16;
                h.rx_put(&[RxRequest {
                    id,
                    pad: 0,
                    gref: g,
                }]);
            }
            h.rx_push();
            ctx.feed(h.devid, 8, 300);
            let t = Instant::now();
            let mut rsps = Vec::new();
            while rsps.len() < 8 && t.elapsed() < Duration::from_secs(3) {
                rsps.extend(h.rx_responses());
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(rsps.len(), 8);
            assert!(
                rsps.iter().all(|r| r.status < 0),
                "a copy into a read-only grant succeeded: {rsps:?}"
            );
            let t = Instant::now();
            while ctx.drops(h.devid, "rx", "copy_error") != 8.0 {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "rx copy_error not counted"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            // Writable buffers again: delivered.
            let frames = post_rx(&mut h, 4);
            ctx.feed(h.devid, 1, 300);
            let t = Instant::now();
            let mut ok = Vec::new();
            while ok.is_empty() && t.elapsed() < Duration::from_secs(3) {
                ok.extend(h.rx_responses());
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(ok.len(), 1);
            assert_eq!(ok[0].status, 300, "{ok:?}");
            let got = h
                .read_page(frames[0], usize::from(ok[0].offset), 300)
                .unwrap();
            assert!(Sink::default().accept(&got), "the frame arrived intact");
            "8 RX responses ERROR, rx drop{copy_error} +8, then delivers".into()
        },
    );
}

/// Requests rewritten in a tight loop while the backend reads them (XSA-155 double fetch):
/// every slot's size word flips between 60 (a valid frame) and 10 (a runt) from another
/// thread. Read once, each request is one or the other: a valid frame delivered intact, or
/// a runt answered ERROR; a backend that validated one read and copied with another would
/// deliver a 10-byte frame or fail a copy.
fn race_cases(ctx: &mut Ctx, healthy: &Healthy) {
    ctx.case(
        healthy,
        "requests rewritten while read (double fetch)",
        "1 drop",
        |ctx| {
            let mut h = ctx.connected();
            let f = frame_to_feeder(h.devid, 60, 7);
            let (g, _) = h.grant_data(&f, GTF_PERMIT_ACCESS).unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let layout = ctx.layout.clone();
            let tx_frame = h.tx_frame;
            let flipper = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mem = xen::sim::DomainMem::open(&layout, HOSTILE).unwrap();
                    let ptr = mem.frame_ptr(tx_frame).unwrap();
                    let mut flips = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for slot in 0..256usize {
                            let size: u32 = if (flips + slot as u64).is_multiple_of(2) {
                                60
                            } else {
                                10
                            };
                            // SAFETY: the word at 64 + 12*slot + 8 (id, size) lies in the TX
                            // ring page of the guest's RAM mapping, 4-aligned; it is shared
                            // with the backend, so only written atomically.
                            let w = unsafe {
                                &*(ptr.add(64 + 12 * slot + 8)
                                    as *const std::sync::atomic::AtomicU32)
                            };
                            w.store(
                                slot as u32 | size << 16,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        flips += 1;
                    }
                    flips
                })
            };
            let t = Instant::now();
            let (mut posted, mut okay, mut error) = (0u64, 0u64, 0u64);
            let mut delivered = 0usize;
            let mut unanswered = [0u32; 256];
            let answer = |u: &mut [u32; 256], id: u16| {
                let left = &mut u[usize::from(id) % 256];
                assert!(
                    *left > 0,
                    "a response for id {id}, which no request waits for"
                );
                *left -= 1;
            };
            // At least 1.5 s, and until both outcomes were seen (the flipper shares a core
            // with this thread; bounded).
            while t.elapsed() < Duration::from_millis(1500) || okay == 0 || error == 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(8),
                    "the race did not happen: {okay} ok, {error} err"
                );
                std::thread::sleep(Duration::from_micros(100));
                while posted - (okay + error) < 128 {
                    let id = (h.tx_prod % 256) as u16;
                    h.tx_put(&[req(g, 0, 60, 0, id)]);
                    unanswered[usize::from(id)] += 1;
                    posted += 1;
                }
                h.tx_push();
                for r in h.tx_responses() {
                    // Each with the id of a request still unanswered (not necessarily in
                    // request order: a drop is answered before earlier copies finish).
                    answer(&mut unanswered, r.id);
                    match r.status {
                        XEN_NETIF_RSP_OKAY => okay += 1,
                        XEN_NETIF_RSP_ERROR => error += 1,
                        s => panic!("response status {s}"),
                    }
                }
                for p in ctx.feeder_rx(0, Duration::ZERO) {
                    assert_eq!(p, f, "a frame other than the one granted was delivered");
                    delivered += 1;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let flips = flipper.join().unwrap();
            let r = h.wait_tx_responses((posted - okay - error) as usize, Duration::from_secs(3));
            for x in r {
                answer(&mut unanswered, x.id);
                match x.status {
                    XEN_NETIF_RSP_OKAY => okay += 1,
                    XEN_NETIF_RSP_ERROR => error += 1,
                    s => panic!("response status {s}"),
                }
            }
            assert_eq!(okay + error, posted, "every request answered exactly once");
            assert!(unanswered.iter().all(|&n| n == 0));
            let more = ctx.feeder_rx(okay as usize - delivered, Duration::from_secs(3));
            assert!(more.iter().all(|p| *p == f), "a torn frame was delivered");
            delivered += more.len();
            assert_eq!(
                delivered as u64, okay,
                "every OKAY frame delivered, nothing else"
            );
            let body = ctx.metrics();
            let dev = h.devid;
            let runts = ctx.drops(dev, "tx", "runt");
            let copy_err = ctx.drops(dev, "tx", "copy_error");
            let tx = ctx.vif(&body, "netbackd_vif_tx_packets_total", dev, &[]);
            assert_eq!((runts, copy_err), (error as f64, 0.0));
            assert_eq!(tx, okay as f64);
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            format!(
                "{posted} requests, {flips} ring rewrites: {okay} delivered intact, {error} runts \
             (drop{{runt}}), 0 copy errors"
            )
        },
    );
}

fn rx_cases(ctx: &mut Ctx, healthy: &Healthy) {
    // XSA-392: the guest never posts a buffer while frames keep coming for it.
    ctx.case(
        healthy,
        "RX ring never refilled (XSA-392)",
        "1 drop",
        |ctx| {
            let mut h = ctx.connected();
            let t = Instant::now();
            let mut n = 0;
            while t.elapsed() < Duration::from_millis(1800) {
                ctx.feed(h.devid, 20, 1000);
                n += 20;
                std::thread::sleep(Duration::from_millis(20));
            }
            let body = ctx.metrics();
            let stalls = ctx.vif(&body, "netbackd_vif_rx_stalls_total", h.devid, &[]);
            let stalled = ctx.drops(h.devid, "rx", "stalled");
            let full = ctx.drops(h.devid, "rx", "backlog_full");
            assert!(stalls >= 1.0, "no stall counted");
            assert!(stalled >= 1.0, "nothing dropped as stalled");
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            // What is still queued for it goes the same way within a stall timeout; then
            // buffers again, and frames reach it again.
            std::thread::sleep(Duration::from_millis(1200));
            let frames = post_rx(&mut h, 8);
            ctx.feed(h.devid, 2, 300);
            let t = Instant::now();
            let mut got = Vec::new();
            while got.len() < 2 && t.elapsed() < Duration::from_secs(3) {
                got.extend(h.rx_responses());
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(got.len(), 2, "delivery did not resume");
            let d = h
                .read_page(frames[0], usize::from(got[0].offset), 300)
                .unwrap();
            assert!(Sink::default().accept(&d));
            format!(
                "{n} frames offered: stall +{stalls}, rx drop{{stalled}} +{stalled}, \
             {{backlog_full}} +{full}; resumes when refilled"
            )
        },
    );
    // One buffer at a time under 64 KiB GSO frames: the backend takes a packet's
    // buffers only once all of them are posted, never counts the slow refill as a stall,
    // drops nothing, and the TCP byte stream arrives whole and in order (as GSO frames
    // with their extra, or as segments where the sender's group segmented them).
    ctx.case(
        healthy,
        "RX refilled one slot at a time, 64 KiB GSO",
        "accepted",
        |ctx| {
            let mut h = ctx.connected();
            let frames: Vec<Vec<u8>> = (0..5)
                .map(|i| tcp_frame(hmac(h.devid), 65_000, i))
                .collect();
            let stream: Vec<u8> = frames.iter().flat_map(|f| f[54..].to_vec()).collect();
            let meta = TxMeta {
                csum_blank: true,
                gso: Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)),
                ..Default::default()
            };
            let (got, max_slots) = trickle(ctx, &mut h, &frames, meta, |got| {
                got.iter()
                    .map(|(d, _)| d.len().saturating_sub(54))
                    .sum::<usize>()
                    >= stream.len()
            });
            let mut payload = Vec::new();
            for (d, g) in &got {
                assert!(
                    d.len() > 54 && d[..14] == frames[0][..14],
                    "a foreign frame"
                );
                payload.extend_from_slice(&d[54..]);
                // A frame longer than one segment came whole, with its GSO extra.
                assert_eq!(
                    d.len() > 1502,
                    g.is_some(),
                    "GSO extra and frame size disagree"
                );
            }
            assert!(
                payload == stream,
                "the byte stream arrived corrupt or out of order"
            );
            no_rx_trouble(ctx, h.devid);
            let whole = got.iter().filter(|(_, g)| g.is_some()).count();
            format!(
                "5 x 65000-byte GSO frames: {} bytes intact in order as {} packets ({whole} whole \
             GSO, up to {max_slots} slots each) over {} single-slot refills; no stall, no drop",
                payload.len(),
                got.len(),
                h.rx_prod
            )
        },
    );
    // The same with frames that need several buffers each (a vif with mtu 9000).
    ctx.case(
        healthy,
        "RX refilled one slot at a time, 9000-byte frames",
        "accepted",
        |ctx| {
            let mut h = ctx.hostile();
            let be = h.be.clone();
            ctx.xs
                .write(xen::Tx::NONE, &format!("{be}/mtu"), "9000")
                .unwrap();
            h.connect(Duration::from_secs(5)).unwrap();
            let frames: Vec<Vec<u8>> = (0..8)
                .map(|i| {
                    let mut g = ctx.feeder_gen.clone();
                    g.dst_mac = hmac(h.devid);
                    g.frame_len = 9000;
                    g.seq = 1000 + i;
                    let mut f = Vec::new();
                    g.next_frame(&mut f);
                    f
                })
                .collect();
            let meta = TxMeta {
                slot_size: 4096,
                ..Default::default()
            };
            let (got, max_slots) = trickle(ctx, &mut h, &frames, meta, |got| got.len() >= 8);
            let got: Vec<Vec<u8>> = got.into_iter().map(|(d, _)| d).collect();
            assert!(got == frames, "every frame whole, in order");
            assert_eq!(max_slots, 3, "9000 bytes in 4 KiB buffers");
            no_rx_trouble(ctx, h.devid);
            format!(
            "8 x 9000-byte frames delivered whole in 3 slots each over {} single-slot refills; \
             no stall, no drop",
            h.rx_prod
        )
        },
    );
    // Buffers revoked after they were posted: the copies into them fail, counted.
    ctx.case(
        healthy,
        "RX: buffers revoked after posting",
        "1 drop",
        |ctx| {
            let mut h = ctx.connected();
            let mut grefs = Vec::new();
            for _ in 0..4 {
                let f = h.frame().unwrap();
                let g = h.grant(f, GTF_PERMIT_ACCESS, 0).unwrap();
                let id = (h.rx_prod % 256) as u16;
                h.rx_put(&[RxRequest {
                    id,
                    pad: 0,
                    gref: g,
                }]);
                grefs.push(g);
            }
            h.rx_push();
            for g in &grefs {
                h.set_grant(*g, 0, 0, 0).unwrap();
            }
            ctx.feed(h.devid, 4, 300);
            let t = Instant::now();
            let mut rsps = Vec::new();
            while rsps.len() < 4 && t.elapsed() < Duration::from_secs(3) {
                rsps.extend(h.rx_responses());
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(rsps.len(), 4);
            assert!(rsps.iter().all(|r| r.status < 0), "{rsps:?}");
            let t = Instant::now();
            while ctx.drops(h.devid, "rx", "copy_error") != 4.0 {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "rx copy_error not counted"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            "4 RX responses ERROR, rx drop{copy_error} +4, still Connected".into()
        },
    );
}

/// No RX stall and no RX drop of any reason counted for hostile vif `devid`.
fn no_rx_trouble(ctx: &Ctx, devid: u32) {
    let body = ctx.metrics();
    assert_eq!(
        ctx.vif(&body, "netbackd_vif_rx_stalls_total", devid, &[]),
        0.0
    );
    for reason in ["stalled", "backlog_full", "copy_error", "too_big"] {
        assert_eq!(ctx.drops(devid, "rx", reason), 0.0, "{reason}");
    }
}

/// A received packet: its bytes and its GSO extra's size.
type RxPkt = (Vec<u8>, Option<u16>);

/// The feeder sends `frames` to hostile vif `h` at once while `h` posts one RX buffer
/// per tick (from a pool of 64 pages), until `done` holds of the packets received
/// (bounded). Returns the packets and the most data slots one used.
fn trickle(
    ctx: &mut Ctx,
    h: &mut Hostile,
    frames: &[Vec<u8>],
    meta: TxMeta,
    done: impl Fn(&[RxPkt]) -> bool,
) -> (Vec<RxPkt>, usize) {
    let pool: Vec<(u32, u32)> = (0..64)
        .map(|_| {
            let f = h.frame().unwrap();
            (f, h.grant(f, GTF_PERMIT_ACCESS, 0).unwrap())
        })
        .collect();
    let mut sent = 0;
    let mut got: Vec<RxPkt> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let (mut in_extra, mut gso) = (false, None);
    let (mut max_slots, mut slots) = (0, 0);
    let mut answered = 0u32;
    let t = Instant::now();
    while !done(&got) {
        if t.elapsed() > Duration::from_secs(20) {
            let body = ctx.metrics();
            let dev = format!("devid=\"{}\"", h.devid);
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| {
                    (l.contains("domid=\"30\"") && l.contains(&dev) || l.contains("domid=\"12\""))
                        && !l.ends_with(" 0")
                })
                .collect();
            panic!(
                "{} packets ({sent} sent) after {:?}, rx_prod {}:\n{}",
                got.len(),
                t.elapsed(),
                h.rx_prod,
                lines.join("\n")
            );
        }
        // Everything is sent at once: the vif's backlog always holds a packet waiting
        // for buffers.
        while sent < frames.len() && ctx.feeder.send(0, &frames[sent], meta).is_ok() {
            sent += 1;
        }
        let _ = ctx.feeder.poll_rx(0);
        // One more buffer (never more outstanding than the pool, which is less than the
        // ring).
        let slot = h.rx_prod;
        if slot.wrapping_sub(answered) < pool.len() as u32 {
            let (_, g) = pool[slot as usize % pool.len()];
            h.rx_put(&[RxRequest {
                id: (slot % 256) as u16,
                pad: 0,
                gref: g,
            }]);
            h.rx_push();
        }
        std::thread::sleep(Duration::from_micros(500));
        for r in h.rx_responses() {
            answered = answered.wrapping_add(1);
            if in_extra {
                let e = ExtraInfo::from_rx_slot(&r);
                assert_eq!(e.ty, XEN_NETIF_EXTRA_TYPE_GSO);
                gso = Some(e.as_gso().size);
                in_extra = e.more();
                continue;
            }
            slots += 1;
            assert!(r.status > 0, "RX error {r:?}");
            assert_ne!(r.status, XEN_NETIF_RSP_NULL);
            let (frame, _) = pool[usize::from(r.id) % pool.len()];
            cur.extend(
                h.read_page(frame, usize::from(r.offset), r.status as usize)
                    .unwrap(),
            );
            if r.flags & NETRXF_EXTRA_INFO != 0 {
                in_extra = true;
            }
            if r.flags & NETRXF_MORE_DATA == 0 {
                max_slots = max_slots.max(slots);
                slots = 0;
                got.push((std::mem::take(&mut cur), gso.take()));
            }
        }
    }
    (got, max_slots)
}

/// XSA-332 shape: a million notifications on the hostile vif's channels; the healthy
/// stream (paced) keeps its rate within 10%.
fn storm_case(ctx: &mut Ctx, healthy: &Healthy) {
    let h = ctx.connected();
    // The storm is real: both channels bound, every notify raises the backend's port.
    for p in [h.evtchn_tx, h.evtchn_rx] {
        assert_eq!(h.port_state(p), 2, "port {p} not bound");
    }
    let window = Duration::from_millis(1500);
    healthy.drain();
    let c0 = proc_sample(ctx.pid).cpu_ms;
    healthy.run(Some(PACE));
    std::thread::sleep(window);
    let base = healthy.drain();
    let base_cpu = proc_sample(ctx.pid).cpu_ms - c0;
    ctx.case(
        healthy,
        "10^6 event-channel notifications",
        "no effect",
        |ctx| {
            healthy.drain();
            let c0 = proc_sample(ctx.pid).cpu_ms;
            healthy.run(Some(PACE));
            let t = Instant::now();
            for i in 0..1_000_000u32 {
                if i % 2 == 0 {
                    h.notify_tx();
                } else {
                    h.notify_rx();
                }
            }
            let flood = t.elapsed();
            if flood < window {
                std::thread::sleep(window - flood);
            }
            let during = healthy.drain();
            let cpu = proc_sample(ctx.pid).cpu_ms - c0;
            // The case's own phase (checked for losses like every case's).
            healthy.run(Some(PACE));
            std::thread::sleep(Duration::from_millis(100));
            let ratio = during.rate() / base.rate();
            assert!(
                (0.9..=1.1).contains(&ratio),
                "healthy rate {:.0}/s during the storm vs {:.0}/s without",
                during.rate(),
                base.rate()
            );
            assert_eq!(during.lost(), 0);
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            format!(
                "10^6 notifies in {flood:.2?}; healthy {:.0}/s vs {:.0}/s without ({:+.1}%), \
             daemon CPU {cpu} ms over {:.1?} ({base_cpu} ms without)",
                during.rate(),
                base.rate(),
                (ratio - 1.0) * 100.0,
                t.elapsed()
            )
        },
    );
}

fn xenstore_cases(ctx: &mut Ctx, healthy: &Healthy) {
    // (case, the keys changed from a good frontend's, the error node's text)
    type Keys = Box<dyn Fn(&mut Hostile, &mut Vec<(String, String)>) -> String>;
    let set = |keys: &mut Vec<(String, String)>, k: &str, v: String| {
        keys.retain(|(x, _)| x != k);
        keys.push((k.to_string(), v));
    };
    let cases: Vec<(&str, Keys)> = vec![
        (
            "tx-ring-ref never granted",
            Box::new(move |h, keys| {
                let g = h.grant(0, 0, 0).unwrap();
                set(keys, "tx-ring-ref", g.to_string());
                format!("mapping tx-ring-ref (grant reference {g}) failed")
            }),
        ),
        (
            "rx-ring-ref beyond the grant table",
            Box::new(move |_, keys| {
                set(keys, "rx-ring-ref", (GRANTS + 7).to_string());
                format!(
                    "mapping rx-ring-ref (grant reference {}) failed",
                    GRANTS + 7
                )
            }),
        ),
        (
            "rx-ring-ref granted read-only",
            Box::new(move |h, keys| {
                let f = h.frame().unwrap();
                let g = h.grant(f, GTF_PERMIT_ACCESS | GTF_READONLY, 0).unwrap();
                set(keys, "rx-ring-ref", g.to_string());
                format!("mapping rx-ring-ref (grant reference {g}) failed")
            }),
        ),
        (
            "event channels missing",
            Box::new(move |_, keys| {
                keys.retain(|(k, _)| !k.starts_with("event-channel"));
                "event-channel missing".into()
            }),
        ),
        (
            "event-channel-rx not offered (port 1000)",
            Box::new(move |_, keys| {
                set(keys, "event-channel-rx", "1000".into());
                "binding event-channel-rx (port 1000) failed".into()
            }),
        ),
        (
            "two queues sharing their channels",
            Box::new(move |h, keys| {
                let mut q = Vec::new();
                for i in 0..2 {
                    let (tx, rx) = if i == 0 {
                        (h.tx_ring_ref, h.rx_ring_ref)
                    } else {
                        let (a, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
                        let (b, _) = h.grant_data(&[0u8; 4096], GTF_PERMIT_ACCESS).unwrap();
                        (a, b)
                    };
                    q.push((format!("queue-{i}/tx-ring-ref"), tx.to_string()));
                    q.push((format!("queue-{i}/rx-ring-ref"), rx.to_string()));
                    q.push((
                        format!("queue-{i}/event-channel-tx"),
                        h.evtchn_tx.to_string(),
                    ));
                    q.push((
                        format!("queue-{i}/event-channel-rx"),
                        h.evtchn_rx.to_string(),
                    ));
                }
                keys.retain(|(k, _)| !k.contains("ring-ref") && !k.starts_with("event-channel"));
                keys.extend(q);
                set(keys, "multi-queue-num-queues", "2".into());
                format!(
                    "binding queue-1/event-channel-tx (port {}) failed",
                    h.evtchn_tx
                )
            }),
        ),
        (
            "multi-queue-num-queues = 0",
            Box::new(move |_, keys| {
                set(keys, "multi-queue-num-queues", "0".into());
                "multi-queue-num-queues = \"0\" is out of range (min 1)".into()
            }),
        ),
        (
            "multi-queue-num-queues = 9999",
            Box::new(move |h, keys| {
                set(keys, "multi-queue-num-queues", "9999".into());
                let max = h.backend("multi-queue-max-queues").unwrap();
                format!("multi-queue-num-queues = \"9999\" is out of range (max {max})")
            }),
        ),
        (
            "request-rx-copy = 0",
            Box::new(move |_, keys| {
                set(keys, "request-rx-copy", "0".into());
                "request-rx-copy = \"0\" is not valid: only copying receive is supported".into()
            }),
        ),
    ];
    for (name, spoil) in cases {
        ctx.case(healthy, &format!("xenstore: {name}"), "refused", |ctx| {
            let mut h = ctx.hostile();
            let maps = proc_sample(ctx.pid).maps;
            let mut keys = h.standard_keys();
            let msg = spoil(&mut h, &mut keys);
            h.write_keys(&keys).unwrap();
            h.set_state(4).unwrap();
            expect_refused(ctx, &h, &msg, maps)
        });
    }
    ctx.case(
        healthy,
        "xenstore: event-channel-tx = -rx",
        "accepted",
        |ctx| {
            let mut h = ctx.hostile();
            let mut keys = h.standard_keys();
            let tx = h.evtchn_tx.to_string();
            set(&mut keys, "event-channel-rx", tx);
            h.connect_with(&keys, Duration::from_secs(5)).unwrap();
            still_forwards(ctx, &mut h);
            "Connected on one channel, forwards".into()
        },
    );
    ctx.case(
        healthy,
        "xenstore: state flapping 1<->4 x1000",
        "no effect",
        |ctx| {
            let mut h = ctx.hostile();
            let maps = proc_sample(ctx.pid).maps;
            h.write_keys(&h.standard_keys()).unwrap();
            let t = Instant::now();
            for _ in 0..1000 {
                h.set_state(4).unwrap();
                h.set_state(1).unwrap();
            }
            h.set_state(4).unwrap();
            let flaps = t.elapsed();
            // The backend follows the last state: Connected, one connection's worth mapped
            // and bound.
            let t = Instant::now();
            while h.backend("state").as_deref() != Some("4") {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "never Connected again"
                );
                // A backend that went Closed needs the frontend to start over, as Linux's does.
                if h.backend("state").as_deref() == Some("6") {
                    h.set_state(1).unwrap();
                    h.set_state(4).unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(h.backend("state").as_deref(), Some("4"));
            still_forwards(ctx, &mut h);
            assert_eq!(proc_sample(ctx.pid).maps, maps + 2, "ring mappings leaked");
            for p in [h.evtchn_tx, h.evtchn_rx] {
                assert_eq!(h.port_state(p), 2, "port {p}");
            }
            format!("2000 state writes in {flaps:.2?}; Connected, forwards, 2 rings mapped")
        },
    );
    ctx.case(
        healthy,
        "xenstore: frontend dir removed mid-handshake",
        "no effect",
        |ctx| {
            let h = ctx.hostile();
            let maps = proc_sample(ctx.pid).maps;
            h.write_keys(&h.standard_keys()).unwrap();
            h.set_state(3).unwrap();
            h.rm("").unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let st = h.backend("state");
            assert_ne!(
                st.as_deref(),
                Some("4"),
                "Connected to a frontend that is gone"
            );
            for p in [h.evtchn_tx, h.evtchn_rx] {
                assert_eq!(h.port_state(p), 1, "port {p} left bound");
            }
            assert_eq!(proc_sample(ctx.pid).maps, maps, "rings left mapped");
            format!(
                "backend state {}, nothing bound or mapped",
                st.unwrap_or_default()
            )
        },
    );
    ctx.case(
        healthy,
        "xenstore: frontend dir removed while Connected",
        "closed",
        |ctx| {
            let maps = proc_sample(ctx.pid).maps;
            let h = ctx.connected();
            h.rm("").unwrap();
            assert!(
                h.wait_backend(6, Duration::from_secs(5)),
                "still {:?} with the frontend gone",
                h.backend("state")
            );
            for p in [h.evtchn_tx, h.evtchn_rx] {
                assert_eq!(h.port_state(p), 1, "port {p} left bound");
            }
            let t = Instant::now();
            while proc_sample(ctx.pid).maps != maps {
                assert!(t.elapsed() < Duration::from_secs(3), "rings left mapped");
                std::thread::sleep(Duration::from_millis(20));
            }
            "Closed, channels unbound, rings unmapped".into()
        },
    );
}
