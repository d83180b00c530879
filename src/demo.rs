//! `netbackd demo`: everything on one machine with nothing else installed. A simulated Xen
//! host (Xen's real xenstored), the real daemon (`netbackd run`, a child process) serving
//! two or more simulated guests (netfront + IP stack each), and an uplink: a DPDK `net_tap`
//! port moved into a network namespace the demo creates (root), or a `net_ring` loopback.
//! The guests ping each other and the namespace and stream TCP to each other and to a
//! server in the namespace; a live per-vif table is read from the daemon's `/metrics`.
//! Everything it creates is removed on the way out; the last line is the summary.
use anyhow::{bail, Context};
use guest::netfront::{FrontConfig, Netfront, NetfrontLink};
use guest::stack::{BulkReceiver, BulkSender, Stack, StreamSum};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which uplink the demo gives the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Uplink {
    /// net_tap in a namespace when running as root with /dev/net/tun and `ip`, else net_ring.
    Auto,
    /// A DPDK net_tap port moved into a network namespace (needs root).
    Tap,
    /// A DPDK net_ring loopback (no privileges needed for the port itself).
    Ring,
}

/// Demo options (from the command line).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub duration: Option<u64>,
    pub guests: u16,
    pub uplink: Uplink,
    pub metrics_listen: Option<String>,
}

const NAMES: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];
const NET: [u8; 3] = [10, 77, 0];
const NS_IP: [u8; 4] = [10, 77, 0, 1];
const STREAM_PORT: u16 = 5000;
const NS_PORT: u16 = 5001;

fn guest_ip(i: usize) -> [u8; 4] {
    [NET[0], NET[1], NET[2], 11 + i as u8]
}

fn guest_mac(i: usize) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x77, 0x00, 1 + i as u8]
}

fn ip_str(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// A child process killed (if still running) when dropped.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.0.take()?;
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The network namespace of the tap uplink, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Minimal HTTP GET on loopback (the daemon's metrics endpoint).
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|_| head.contains(" 200 "))?;
    Some(rest.to_string())
}

/// A metrics scrape: when, and each vif's totals.
type Scrape = (Instant, BTreeMap<(u16, u32), VifRow>);

/// One vif's totals as the metrics say.
#[derive(Clone, Debug, Default)]
struct VifRow {
    name: String,
    state: u32,
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    drops: u64,
}

/// Sums the per-queue samples of the exposition text per (domid, devid).
fn parse_metrics(body: &str) -> BTreeMap<(u16, u32), VifRow> {
    let mut out: BTreeMap<(u16, u32), VifRow> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let mut domid = None;
        let mut devid = None;
        let mut gname = String::new();
        for kv in labels.trim_end_matches('}').split(',') {
            if let Some((k, val)) = kv.split_once('=') {
                let val = val.trim_matches('"');
                match k {
                    "domid" => domid = val.parse().ok(),
                    "devid" => devid = val.parse().ok(),
                    "name" => gname = val.to_string(),
                    _ => {}
                }
            }
        }
        let (Some(d), Some(n)) = (domid, devid) else {
            continue;
        };
        let row = out.entry((d, n)).or_default();
        row.name = gname;
        let v = v as u64;
        match name {
            "netbackd_vif_tx_packets_total" => row.tx_packets += v,
            "netbackd_vif_tx_bytes_total" => row.tx_bytes += v,
            "netbackd_vif_rx_packets_total" => row.rx_packets += v,
            "netbackd_vif_rx_bytes_total" => row.rx_bytes += v,
            "netbackd_vif_drops_total" => row.drops += v,
            "netbackd_vif_state" => row.state = v as u32,
            _ => {}
        }
    }
    out
}

/// A xenbus state's name for the table ("-" before the backend has one).
fn state_name(s: u32) -> &'static str {
    match s {
        1..=6 => crate::ctl::state_name(s),
        _ => "-",
    }
}

/// What the guests report back.
#[derive(Default)]
struct Results {
    pings_sent: AtomicU64,
    pings_answered: AtomicU64,
    /// Streams that ended with equal sums at both ends, and their bytes.
    streams_ok: AtomicU64,
    streams_bad: AtomicU64,
    stream_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Stream sums by receiving guest: what its peer sent it, and what it received.
    sent_to: Mutex<BTreeMap<usize, StreamSum>>,
    received: Mutex<BTreeMap<usize, StreamSum>>,
    /// What guest 0 sent to the namespace's server.
    ns_sent: Mutex<Option<StreamSum>>,
}

impl Results {
    fn error(&self, e: String) {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
}

/// The CPUs this process may run on (for the daemon's `-l` list).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for our own pid.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn free_metrics_addr() -> String {
    for a in ["127.0.0.1:9750", "127.0.0.1:0"] {
        if let Ok(l) = std::net::TcpListener::bind(a) {
            if let Ok(addr) = l.local_addr() {
                return addr.to_string();
            }
        }
    }
    "127.0.0.1:9750".into()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the demo until `duration` or `stop` (Ctrl-C); prints the summary last.
pub fn demo(opts: DemoOptions, stop: &'static AtomicBool) -> anyhow::Result<()> {
    let n = usize::from(opts.guests);
    if !(2..=NAMES.len()).contains(&n) {
        bail!("--guests must be between 2 and {}", NAMES.len());
    }
    let have_ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tap_possible = is_root() && std::path::Path::new("/dev/net/tun").exists() && have_ip;
    let tap = match opts.uplink {
        Uplink::Tap if !tap_possible => {
            bail!("--uplink tap needs root, /dev/net/tun and the `ip` tool (iproute2)")
        }
        Uplink::Tap => true,
        Uplink::Ring => false,
        Uplink::Auto => tap_possible,
    };
    let pid = std::process::id();
    let exe = std::env::current_exe().context("locating the netbackd binary")?;
    let t_start = Instant::now();

    // 1. The simulated Xen host and its guests (as `xl create` + `xl network-attach`).
    let host =
        xen::sim::SimHost::start(Default::default()).context("starting the simulated host")?;
    for (i, name) in NAMES.iter().enumerate().take(n) {
        let domid = 1 + i as u16;
        host.add_domain(domid, name, 64 * 256, 8192)
            .with_context(|| format!("creating guest {name}"))?;
        let m = guest_mac(i);
        let mac = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        xen::sim::toolstack::add_vif(host.store(), 0, domid, 0, &mac, &Default::default())
            .with_context(|| format!("adding the vif of {name}"))?;
    }
    let root = host.root().to_string_lossy().into_owned();
    println!("demo: simulated Xen host at {root} (xenstored running), guests:");
    for (i, name) in NAMES.iter().enumerate().take(n) {
        println!(
            "  dom{} {:<8} vif{}.0 {}",
            1 + i,
            name,
            1 + i,
            ip_str(guest_ip(i))
        );
    }

    // 2. The daemon, as an operator runs it: a config file and `netbackd run`.
    let dir = std::env::temp_dir().join(format!("netbackd-demo-{pid}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = DirGuard(dir.clone());
    let ifname = format!("nbdemo{}", pid % 100_000);
    let devargs = if tap {
        format!("net_tap0,iface={ifname}")
    } else {
        "net_ring0".to_string()
    };
    let cpus = allowed_cpus();
    let lcores = if cpus.len() >= 2 {
        format!("{},{}", cpus[0], cpus[1])
    } else {
        format!("{}", cpus.first().copied().unwrap_or(0))
    };
    let metrics = match opts.metrics_listen.as_deref() {
        None => free_metrics_addr(),
        // Port 0: pick a free port now, the demo has to know where to scrape.
        Some(a) if a.ends_with(":0") => std::net::TcpListener::bind(a)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("--metrics-listen {a}"))?
            .to_string(),
        Some(a) => a.to_string(),
    };
    let cfg_path = dir.join("netbackd.toml");
    // A socket of its own: the demo must not take (or be refused) the system daemon's.
    let ctl_sock = dir.join("ctl.sock");
    std::fs::write(
        &cfg_path,
        format!(
            "# Written by `netbackd demo`.\nhost = \"sim\"\n[sim]\nroot = \"{root}\"\n\
             [eal]\nargs = [\"-l\", \"{lcores}\", \"--no-huge\", \"-m\", \"512\", \"--no-pci\", \
             \"--no-shconf\", \"--log-level\", \"*:error\"]\nfile_prefix = \"netbackd-demo-{pid}\"\n\
             [[port]]\ndevargs = \"{devargs}\"\n[engine]\ngroups = 1\n[ctl]\nsocket = \"{}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n",
            ctl_sock.display()
        ),
    )?;
    let log_path = dir.join("netbackd.log");
    let log = std::fs::File::create(&log_path)?;
    let t_run = Instant::now();
    let mut daemon = ChildGuard(Some(
        Command::new(&exe)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("NETBACKD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches the demo, which stops it in order.
            .process_group(0)
            .spawn()
            .context("starting netbackd run")?,
    ));
    println!(
        "demo: netbackd run --config {} (uplink {devargs}, lcores {lcores}); log {}",
        cfg_path.display(),
        log_path.display()
    );
    let ready = Instant::now() + Duration::from_secs(30);
    while http_get(&metrics, "/metrics").is_none() {
        if !daemon.alive() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("netbackd run exited during start-up:\n{tail}");
        }
        if Instant::now() > ready || stop.load(Ordering::Relaxed) {
            bail!(
                "netbackd run did not come up within 30 s (log: {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // 3. The tap uplink goes into a namespace of its own with the "host" address.
    let mut ns_guard = None;
    let mut ns_server = None;
    if tap {
        let ns = format!("netbackd-demo-{pid}");
        let t = Instant::now();
        while !std::path::Path::new(&format!("/sys/class/net/{ifname}")).exists() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the daemon's tap interface {ifname} did not appear");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sh(&["ip", "netns", "add", &ns])?;
        ns_guard = Some(Netns(ns.clone()));
        sh(&["ip", "link", "set", &ifname, "netns", &ns])?;
        let cidr = format!("{}/24", ip_str(NS_IP));
        sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &ifname])?;
        sh(&["ip", "-n", &ns, "link", "set", &ifname, "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        ns_server = Some(NsServer::start(&ns)?);
        println!(
            "demo: uplink {ifname} (DPDK net_tap) in network namespace {ns} as {}",
            ip_str(NS_IP)
        );
    }

    // 4. The guests: netfront handshake, then pings and TCP streams until told to stop.
    let results = Arc::new(Results::default());
    let draining = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(Mutex::new(Vec::<(usize, Duration)>::new()));
    let layout = host.layout().clone();
    let sock = host.xenstore_path();
    let mut threads = Vec::new();
    for (i, name) in NAMES.iter().enumerate().take(n) {
        let (layout, sock) = (layout.clone(), sock.clone());
        let (results, draining, connected) = (results.clone(), draining.clone(), connected.clone());
        let plan = GuestPlan {
            index: i,
            peer: (i + 1) % n,
            ns_stream: tap && i == 0,
            ping_ns: tap,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("guest-{name}"))
                .spawn(move || {
                    let r = run_guest(&layout, &sock, plan, &results, &draining, &connected, t_run);
                    if let Err(e) = r {
                        results.error(format!("{name}: {e:#}"));
                    }
                })?,
        );
    }
    if let Some(ns) = &ns_guard {
        // The namespace's kernel pings every guest too.
        let ns = ns.0.clone();
        let results = results.clone();
        threads.push(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            for i in 0..n {
                let ok = Command::new("ip")
                    .args([
                        "netns", "exec", &ns, "ping", "-c", "3", "-i", "0.2", "-W", "2",
                    ])
                    .arg(ip_str(guest_ip(i)))
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .filter(|l| l.contains("bytes from"))
                            .count() as u64
                    })
                    .unwrap_or(0);
                results.pings_sent.fetch_add(3, Ordering::Relaxed);
                results.pings_answered.fetch_add(ok, Ordering::Relaxed);
            }
        }));
    }

    // 5. The live table, from the daemon's metrics, once a second.
    println!("demo: metrics at http://{metrics}/metrics (guest TX = what the guest sent)");
    println!(
        "demo: ask the daemon: netbackd ctl --socket {0} show vifs | show groups | ...; \
         netbackd top --socket {0}",
        ctl_sock.display()
    );
    let until = opts
        .duration
        .map(|d| Instant::now() + Duration::from_secs(d));
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<Scrape> = None;
    let mut last = BTreeMap::new();
    let mut printed = 0usize;
    let t_traffic = Instant::now();
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(1000).min(
            until.map_or(Duration::from_secs(1), |u| {
                u.saturating_duration_since(Instant::now())
            }),
        ));
        if !daemon.alive() {
            results.error("netbackd run exited unexpectedly".into());
            break;
        }
        let Some(body) = http_get(&metrics, "/metrics") else {
            continue;
        };
        let now = (Instant::now(), parse_metrics(&body));
        let table = render_table(&now, prev.as_ref(), t_traffic.elapsed(), &results);
        let mut out = std::io::stdout().lock();
        if tty && printed > 0 {
            let _ = write!(out, "\x1b[{printed}A\x1b[J");
        }
        let _ = out.write_all(table.as_bytes());
        let _ = out.flush();
        printed = table.lines().count();
        last = now.1.clone();
        prev = Some(now);
    }
    let elapsed = t_traffic.elapsed();
    let interrupted = stop.load(Ordering::Relaxed);

    // 6. Wind down: senders finish their streams, receivers check them, then the totals.
    draining.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    settle_streams(&results);
    if let Some(s) = ns_server.take() {
        s.finish(&results);
    }
    // Closed vifs leave the metrics: keep each vif's highest totals seen.
    if let Some(body) = http_get(&metrics, "/metrics") {
        for (k, v) in parse_metrics(&body) {
            let keep = last.get(&k).is_some_and(|o: &VifRow| {
                o.tx_packets + o.rx_packets > v.tx_packets + v.rx_packets
            });
            if !keep {
                last.insert(k, v);
            }
        }
    }
    let status = daemon.stop(Duration::from_secs(10));
    drop(ns_guard);
    host.stop().context("stopping the simulated host")?;
    drop(_dir_guard);
    let clean = status.is_some_and(|s| s.success());

    let packets: u64 = last.values().map(|r| r.tx_packets + r.rx_packets).sum();
    let bytes: u64 = last.values().map(|r| r.tx_bytes + r.rx_bytes).sum();
    let drops: u64 = last.values().map(|r| r.drops).sum();
    let (ps, pa) = (
        results.pings_sent.load(Ordering::Relaxed),
        results.pings_answered.load(Ordering::Relaxed),
    );
    let (so, sb) = (
        results.streams_ok.load(Ordering::Relaxed),
        results.streams_bad.load(Ordering::Relaxed),
    );
    let errors = results
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut conn = connected.lock().unwrap_or_else(|p| p.into_inner()).clone();
    conn.sort_by_key(|c| c.1);
    if let Some((i, d)) = conn.first() {
        println!(
            "demo: first vif Connected {:.0} ms after `netbackd run` started (dom{} {}); all {} in {:.0} ms",
            d.as_secs_f64() * 1e3,
            i + 1,
            NAMES[*i],
            conn.len(),
            conn.last().map_or(0.0, |c| c.1.as_secs_f64() * 1e3)
        );
    }
    for e in &errors {
        println!("demo: problem: {e}");
    }
    println!(
        "demo: netbackd exited {}; {}sim host and temporary files removed ({:.1} s in all)",
        if clean { "cleanly" } else { "with an error" },
        if tap { "namespace, " } else { "" },
        t_start.elapsed().as_secs_f64()
    );
    let ok =
        errors.is_empty() && packets > 0 && sb == 0 && clean && (interrupted || pa * 10 >= ps * 9);
    println!(
        "netbackd demo: {} — forwarded {packets} packets ({:.1} MB) in {:.1} s across {} vifs and a {} uplink; pings {pa}/{ps}; TCP streams {so} intact, {sb} corrupt ({:.1} MiB); drops {drops}",
        if ok { "OK" } else { "FAILED" },
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        last.len(),
        if tap { "net_tap" } else { "net_ring" },
        results.stream_bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
    );
    if !ok {
        bail!("the demo did not pass its own checks (see above)");
    }
    Ok(())
}

fn render_table(now: &Scrape, prev: Option<&Scrape>, t: Duration, results: &Results) -> String {
    let mut s = format!(
        "t={:>3.0}s  {:<9} {:<8} {:<10} {:>11} {:>11} {:>10} {:>10} {:>6}\n",
        t.as_secs_f64(),
        "vif",
        "guest",
        "state",
        "tx packets",
        "rx packets",
        "tx Mbit/s",
        "rx Mbit/s",
        "drops"
    );
    for ((d, n), r) in &now.1 {
        let (txr, rxr) = match prev.and_then(|p| p.1.get(&(*d, *n)).map(|o| (p.0, o))) {
            Some((t0, o)) => {
                let dt = now.0.duration_since(t0).as_secs_f64().max(1e-3);
                (
                    r.tx_bytes.saturating_sub(o.tx_bytes) as f64 * 8.0 / dt / 1e6,
                    r.rx_bytes.saturating_sub(o.rx_bytes) as f64 * 8.0 / dt / 1e6,
                )
            }
            None => (0.0, 0.0),
        };
        s += &format!(
            "        {:<9} {:<8} {:<10} {:>11} {:>11} {:>10.1} {:>10.1} {:>6}\n",
            format!("vif{d}.{n}"),
            r.name,
            state_name(r.state),
            r.tx_packets,
            r.rx_packets,
            txr,
            rxr,
            r.drops
        );
    }
    s += &format!(
        "        pings {}/{} answered, TCP streams checked {} ok / {} corrupt\n",
        results.pings_answered.load(Ordering::Relaxed),
        results.pings_sent.load(Ordering::Relaxed),
        results.streams_ok.load(Ordering::Relaxed),
        results.streams_bad.load(Ordering::Relaxed),
    );
    s
}

/// Removes the demo's temporary directory when dropped.
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy)]
struct GuestPlan {
    index: usize,
    /// The guest this one streams TCP to.
    peer: usize,
    /// Also stream to the server in the namespace.
    ns_stream: bool,
    ping_ns: bool,
}

/// One guest: connect its netfront, ping, then stream to its peer (and to the namespace)
/// while receiving its own peer's stream, until the demo drains.
fn run_guest(
    layout: &xen::sim::SimLayout,
    sock: &str,
    plan: GuestPlan,
    results: &Results,
    draining: &AtomicBool,
    connected: &Mutex<Vec<(usize, Duration)>>,
    t_run: Instant,
) -> anyhow::Result<()> {
    let i = plan.index;
    let domid = 1 + i as u16;
    let xs = xen::XenStore::open_at(sock)?;
    let mut nf = Netfront::new(layout, xs, FrontConfig::new(domid, 0))?;
    nf.connect(Duration::from_secs(20))?;
    nf.wait_backend_state(4, Duration::from_secs(20))?;
    connected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((i, t_run.elapsed()));
    let mut st = Stack::new(NetfrontLink::new(nf, 0), guest_mac(i), guest_ip(i), 24);
    let listen = st.tcp_listen(STREAM_PORT);
    let mut rx = BulkReceiver::new(listen);

    // Pings first (ARP warms up on the way); the listener keeps being served meanwhile.
    let targets: Vec<[u8; 4]> = std::iter::once(guest_ip(plan.peer))
        .chain(plan.ping_ns.then_some(NS_IP))
        .collect();
    for dst in targets {
        let got = st.ping(dst, 5, Duration::from_secs(2), |s| {
            let _ = rx.step(s);
        });
        results.pings_sent.fetch_add(5, Ordering::Relaxed);
        results
            .pings_answered
            .fetch_add(u64::from(got), Ordering::Relaxed);
    }

    let seed = 0x4e42_0000 + i as u64;
    let c = st.tcp_connect(guest_ip(plan.peer), STREAM_PORT, 40000 + i as u16);
    let mut tx = BulkSender::new(c, u64::MAX, seed);
    let mut ns_tx = plan.ns_stream.then(|| {
        let h = st.tcp_connect(NS_IP, NS_PORT, 41000);
        BulkSender::new(h, u64::MAX, seed ^ 0xff)
    });
    let mut rx_done = false;
    let mut drain_since: Option<Instant> = None;
    loop {
        let moved = st.poll();
        if draining.load(Ordering::Relaxed) && drain_since.is_none() {
            drain_since = Some(Instant::now());
            // End the streams where they are: the senders close after what they sent.
            tx.total = tx.sent.bytes;
            if let Some(n) = ns_tx.as_mut() {
                n.total = n.sent.bytes;
            }
        }
        let tx_done = tx.step(&mut st);
        let ns_done = ns_tx.as_mut().is_none_or(|n| n.step(&mut st));
        if !rx_done && rx.step(&mut st) {
            rx_done = true;
        }
        if let Some(t) = drain_since {
            let all = tx_done && ns_done && rx_done;
            if all || t.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        if !moved {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    lock(&results.received).insert(i, rx.got);
    lock(&results.sent_to).insert(plan.peer, tx.sent);
    if let Some(n) = ns_tx {
        lock(&results.ns_sent).replace(n.sent);
    }
    let _ = st.link.nf.close();
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compares sender and receiver sums of every guest-to-guest stream whose ends both reported.
fn settle_streams(results: &Results) {
    let sent = lock(&results.sent_to).clone();
    let received = lock(&results.received).clone();
    for (to, sa) in sent {
        let Some(sb) = received.get(&to).copied() else {
            continue;
        };
        if sa == sb {
            results.streams_ok.fetch_add(1, Ordering::Relaxed);
            results.stream_bytes.fetch_add(sa.bytes, Ordering::Relaxed);
        } else {
            results.streams_bad.fetch_add(1, Ordering::Relaxed);
            results.error(format!(
                "stream to guest {} differs: sent {} bytes, received {} bytes (sums {:x} / {:x})",
                NAMES[to], sa.bytes, sb.bytes, sa.hash, sb.hash
            ));
        }
    }
}

/// A TCP sink in the namespace (a thread that entered it with setns), summing what the
/// guest streams to the "host" side of the uplink.
struct NsServer {
    thread: std::thread::JoinHandle<anyhow::Result<StreamSum>>,
    stop: Arc<AtomicBool>,
}

impl NsServer {
    fn start(ns: &str) -> anyhow::Result<NsServer> {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("ns-server".into()).spawn(
            move || -> anyhow::Result<StreamSum> {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace fd we opened; affects this thread only.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = ready_tx.send(Err(format!("setns: {e}")));
                    bail!("setns: {e}");
                }
                let l = std::net::TcpListener::bind((ip_str(NS_IP).as_str(), NS_PORT));
                let l = match l {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind: {e}")));
                        bail!("bind: {e}");
                    }
                };
                l.set_nonblocking(true)?;
                let _ = ready_tx.send(Ok(()));
                let mut sum = StreamSum::default();
                let conn = loop {
                    match l.accept() {
                        Ok((c, _)) => break Some(c),
                        Err(_) if s2.load(Ordering::Relaxed) => break None,
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                let Some(c) = conn else {
                    return Ok(sum);
                };
                c.set_nonblocking(false)?;
                c.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut r = std::io::BufReader::with_capacity(256 * 1024, c);
                let mut idle_after_stop = 0;
                loop {
                    match r.fill_buf() {
                        Ok([]) => break,
                        Ok(b) => {
                            sum.update(b);
                            let k = b.len();
                            r.consume(k);
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            if s2.load(Ordering::Relaxed) {
                                idle_after_stop += 1;
                                if idle_after_stop > 25 {
                                    break;
                                }
                            }
                        }
                        Err(e) => bail!("reading the guest's stream: {e}"),
                    }
                }
                Ok(sum)
            },
        )?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(NsServer { thread, stop }),
            Ok(Err(e)) => bail!("TCP server in namespace {ns}: {e}"),
            Err(_) => bail!("TCP server in namespace {ns} did not start"),
        }
    }

    /// Stops the sink and compares what it got with what the guest sent.
    fn finish(self, results: &Results) {
        self.stop.store(true, Ordering::Relaxed);
        let got = match self.thread.join() {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                results.error(format!("namespace TCP server: {e:#}"));
                return;
            }
            Err(_) => {
                results.error("namespace TCP server panicked".into());
                return;
            }
        };
        let sent = lock(&results.ns_sent).take();
        match sent {
            Some(s) if s == got => {
                results.streams_ok.fetch_add(1, Ordering::Relaxed);
                results.stream_bytes.fetch_add(s.bytes, Ordering::Relaxed);
            }
            Some(s) => {
                results.streams_bad.fetch_add(1, Ordering::Relaxed);
                results.error(format!(
                    "stream to the namespace differs: sent {} bytes, received {}",
                    s.bytes, got.bytes
                ));
            }
            None => results.error("the guest's stream to the namespace never ended".into()),
        }
    }
}
