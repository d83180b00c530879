//! Helpers shared by the tests that drive the real `netbackd` binary.
#![allow(dead_code)]
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::process::Child;
use std::time::{Duration, Instant};
use xen::sim::{toolstack, SimHost};
use xen::{Tx, XenStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_netbackd");

/// The rest of a sim's stdout, kept open while the sim runs (it may still write to it).
pub type SimOutput = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts `netbackd sim ARGS --parent PARENT`; returns its guard, the sim root it printed
/// first, and the rest of its output.
pub fn start_sim(args: &[&str], parent: &std::path::Path) -> (Guard, String, SimOutput) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .arg("sim")
        .args(args)
        .arg("--parent")
        .arg(parent)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let guard = Guard(Some(child));
    let root = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("sim root: ")
        .expect("the sim names its root first")
        .to_string();
    (guard, root, lines)
}

pub fn wait_state(xs: &XenStore, path: &str, want: &str, secs: u64) -> Duration {
    let t = Instant::now();
    loop {
        let cur = xs.read(Tx::NONE, path).unwrap();
        if cur.as_deref() == Some(want) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{path} never became {want} (is {cur:?})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t.elapsed()
}

/// Stops a child if the test panics before it was stopped (else it would outlive us):
/// SIGTERM first, so a daemon still removes its DPDK runtime files, then SIGKILL.
pub struct Guard(pub Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `netbackd sim --guest D --vif D:0:MAC ...` for each (domid, MAC) in `guests`, under
/// `parent`; as [`start_sim`].
pub fn start_sim_with(
    guests: &[(u16, [u8; 6])],
    parent: &std::path::Path,
) -> (Guard, String, SimOutput) {
    let mut args = Vec::new();
    for (d, m) in guests {
        args.push("--guest".to_string());
        args.push(d.to_string());
        args.push("--vif".to_string());
        args.push(format!(
            "{d}:0:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ));
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    start_sim(&args, parent)
}

/// `netbackd run --config CFG`, its log (stderr) in CFG with the extension `log` (kept
/// beside the config for a failed test to show).
pub fn spawn_run(cfg: &std::path::Path) -> Guard {
    let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
    Guard(Some(
        std::process::Command::new(BIN)
            .args(["run", "--config"])
            .arg(cfg)
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

/// A netfront of the sim at `root` connected as `fc` asks, once the daemon's backend is in
/// InitWait; returns once backend and frontend are Connected.
pub fn attach_front(root: &str, xs: &XenStore, fc: FrontConfig) -> Netfront {
    let be = format!(
        "/local/domain/0/backend/vif/{}/{}/state",
        fc.domid, fc.devid
    );
    wait_state(xs, &be, "2", 10);
    let sock = format!("{root}/xenstored/socket");
    let mut nf = Netfront::new(
        &xen::sim::SimLayout::new(root),
        XenStore::open_at(&sock).unwrap(),
        fc,
    )
    .unwrap();
    nf.connect(Duration::from_secs(5)).unwrap();
    wait_state(xs, &be, "4", 5);
    nf
}

/// `netbackd ctl --socket SOCK ARGS`: (success, stdout, stderr).
pub fn ctl(sock: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn term_and_wait(mut g: Guard) -> std::process::ExitStatus {
    let mut c = g.0.take().expect("running");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn traffic(nf: &mut Netfront, gen: &mut PktGen, n: u64) {
    let mut f = Vec::new();
    let mut sink = Sink::default();
    for _ in 0..n {
        gen.next_frame(&mut f);
        nf.send(0, &f, TxMeta::default()).unwrap();
    }
    let t = Instant::now();
    while sink.stats.packets < n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "traffic through the daemon: {:?}",
            sink.stats
        );
        for p in nf.poll_rx(0).unwrap() {
            sink.accept(&p.data);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `GET path` over plain HTTP/1.0; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    let code = r.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = r
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of the sample `name{...labels...}` whose labels contain all of `want`.
pub fn sample(body: &str, name: &str, want: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The MAC the tests give a domain's vif.
pub fn mac(domid: u16) -> String {
    format!("00:16:3e:00:00:{domid:02x}")
}

/// A netfront of `domid` connected to vif `devid` (the backend Connected).
pub fn connect(host: &SimHost, domid: u16, devid: u32) -> Netfront {
    let mut nf = Netfront::new(
        host.layout(),
        host.connect().unwrap(),
        FrontConfig::new(domid, devid),
    )
    .unwrap();
    nf.connect(Duration::from_secs(10)).unwrap();
    let be = toolstack::backend_path(0, domid, devid);
    wait_state(host.store(), &format!("{be}/state"), "4", 10);
    nf
}

/// A `netbackd run` config for the sim host at `root`: two lcores, no hugepages, metrics
/// on `maddr`, no control socket (`ctl_socket` puts one in); `metrics_extra` is appended to
/// its `[metrics]` section.
pub fn sim_config(root: &str, prefix: &str, maddr: &str, metrics_extra: &str) -> String {
    format!(
        "host = \"sim\"\n[sim]\nroot = \"{root}\"\n[eal]\nargs = [\"-l\", \"0,1\", \"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-shconf\", \"--log-level\", \"*:error\"]\nfile_prefix = \"{prefix}\"\n[[port]]\ndevargs = \"net_ring0\"\n[ctl]\nsocket = \"\"\n[metrics]\nlisten = \"{maddr}\"\n{metrics_extra}"
    )
}

/// A free loopback address for a metrics endpoint.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Scrapes `/metrics` until `ok` holds of the body (the control loop publishes what it did
/// after its step), at most `secs`; returns the last body.
pub fn scrape_until(addr: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let (code, body) = http_get(addr, "/metrics");
        assert_eq!(code, 200);
        if ok(&body) {
            return body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "/metrics never as expected:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `config` (from [`sim_config`]) with its control socket at `path`.
pub fn ctl_socket(config: &str, path: &std::path::Path) -> String {
    config.replace(
        "[ctl]\nsocket = \"\"\n",
        &format!("[ctl]\nsocket = \"{}\"\n", path.display()),
    )
}

/// A network namespace of the test's own, deleted (with what was moved into it) when
/// dropped.
pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Runs a command that must succeed (its stdout discarded).
pub fn sh(args: &[&str]) {
    let st = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{args:?}");
}

/// The wire of a `net_tap` uplink: once the daemon serves `/metrics` at `maddr` (its port
/// started: DPDK opens the tap's queues by name in our namespace, so moving the tap earlier
/// would leave them on a new tap of the same name), the tap's kernel side `ifname` goes
/// into a new namespace `name` with address `cidr`, up.
pub fn tap_into_netns(maddr: &str, ifname: &str, name: &str, cidr: &str) -> Netns {
    let t = Instant::now();
    while std::net::TcpStream::connect(maddr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::path::Path::new(&format!("/sys/class/net/{ifname}")).exists());
    let ns = Netns(name.to_string());
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&["ip", "link", "set", ifname, "netns", &ns.0]);
    sh(&["ip", "-n", &ns.0, "addr", "add", cidr, "dev", ifname]);
    sh(&["ip", "-n", &ns.0, "link", "set", ifname, "up"]);
    ns
}
