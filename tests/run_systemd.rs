//! `netbackd run` under a (test) systemd: READY=1 only once the port is up and the control
//! socket and metrics answer, STATUS= with the vif counts, WATCHDOG=1 at half of
//! $WATCHDOG_USEC while every group polls, and none while a group is stalled on purpose
//! (the fault-injection hook `ctl debug stall`). Then SIGHUP: a valid file changes a vif's
//! VLAN and rate, the switch's ageing and the log filter live (the vif still passes
//! traffic, now tagged); a file changing what needs a restart, and a broken file, are
//! refused by name and the daemon keeps its configuration.
use guest::pktgen::PktGen;
use serde_json::Value;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xen::sim::{toolstack, SimHost};

mod common;
use common::*;

fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the daemon's log has `what` (counted from `from` bytes on); returns the
/// log's length after it.
fn wait_log(log: &Path, from: usize, what: &str) -> usize {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.get(from..).and_then(|t| t.find(what)) {
            return from + i + what.len();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what:?} never logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn systemd_notify_watchdog_and_sighup() {
    let pid = std::process::id();
    let host = SimHost::start(Default::default()).unwrap();
    host.add_domain(40, "gamma", 4096, 8192).unwrap();
    let xs = host.store();
    let root = host.root().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("nbd-sysd-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("ctl.sock");
    let maddr = free_addr();
    let cfg = dir.join("netbackd.toml");
    let base = ctl_socket(
        &sim_config(&root, &format!("nbd-sysd-{pid}"), &maddr, ""),
        &sock,
    );
    std::fs::write(&cfg, base.clone()).unwrap();

    // The test's systemd: a datagram socket; every message with when it came.
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let msgs: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    {
        let msgs = msgs.clone();
        let n = notify.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(k) = n.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..k]).into_owned();
                msgs.lock().unwrap().push((Instant::now(), m));
            }
        });
    }
    let log = dir.join("netbackd.log");
    let t_start = Instant::now();
    let daemon = Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("NETBACKD_FAULT_INJECTION", "1")
            .env_remove("NETBACKD_LOG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let dpid = daemon.0.as_ref().unwrap().id();
    let seen = |what: &str| -> Option<Instant> {
        msgs.lock()
            .unwrap()
            .iter()
            .find(|(_, m)| m.contains(what))
            .map(|x| x.0)
    };
    let t = Instant::now();
    while seen("READY=1").is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "no READY=1");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Ready means serving: the control socket, the port and /metrics answer at once.
    assert!(UnixStream::connect(&sock).is_ok());
    let ports = ctl_json(&sock, &["show", "ports"]);
    assert_eq!(ports[0]["link_up"], true);
    assert_eq!(http_get(&maddr, "/metrics").0, 200);
    {
        let m = msgs.lock().unwrap();
        assert!(
            m[0].1.starts_with("READY=1\nSTATUS=0 vif(s), 0 connected"),
            "{:?}",
            m[0].1
        );
    }
    eprintln!("READY=1 after {:?}", t_start.elapsed());

    // A vif: STATUS says so.
    toolstack::add_vif(xs, 0, 40, 0, &mac(40), &Default::default()).unwrap();
    let mut nf = connect(&host, 40, 0);
    let t = Instant::now();
    while seen("STATUS=1 vif(s), 1 connected, 1 queue(s) in 1 group(s)").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            msgs.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut g = PktGen {
        src_mac: [0x00, 0x16, 0x3e, 0, 0, 40],
        dst_mac: [2, 0, 0, 0, 0, 0x44],
        src_ip: [10, 0, 0, 40],
        dst_ip: [10, 0, 0, 44],
        sport: 9,
        dport: 9,
        frame_len: 200,
        seq: 0,
    };
    traffic(&mut nf, &mut g, 20);

    // Watchdog pings every ~0.5 s while the group polls.
    std::thread::sleep(Duration::from_millis(2200));
    let pings = |from: Instant, to: Instant| -> Vec<Instant> {
        msgs.lock()
            .unwrap()
            .iter()
            .filter(|(t, m)| m == "WATCHDOG=1" && *t >= from && *t < to)
            .map(|x| x.0)
            .collect()
    };
    let before = pings(Instant::now() - Duration::from_millis(2000), Instant::now());
    assert!(
        (2..=6).contains(&before.len()),
        "pings in 2 s: {}",
        before.len()
    );

    // The group stalls for 4 s (fault injection): after at most one more ping (the group
    // moved since the last), none until it polls again; then they resume.
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&sock)
        .args(["debug", "stall", "0", "4000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t_stall = Instant::now();
    std::thread::sleep(Duration::from_millis(5500));
    let during = pings(
        t_stall + Duration::from_millis(1200),
        t_stall + Duration::from_millis(3900),
    );
    assert!(
        during.is_empty(),
        "pings while the group was stuck: {during:?}"
    );
    let after = pings(t_stall + Duration::from_millis(4000), Instant::now());
    assert!(!after.is_empty(), "no ping after the group resumed");
    wait_log(&log, 0, "made no poll iteration");
    traffic(&mut nf, &mut g, 20);

    // SIGHUP with a valid file: VLAN, rate, ageing and log filter, live.
    let sighup = || {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(dpid as i32, libc::SIGHUP) }, 0);
    };
    std::fs::write(
        &cfg,
        base.clone()
            + "[switch]\nageing_secs = 42\n[log]\nfilter = \"debug\"\n[[vif]]\ndomid = 40\nvlan = 200\nrate = \"50000,100000\"\n",
    )
    .unwrap();
    sighup();
    let mut at = wait_log(&log, 0, "reloaded; applied: vif40.0 vlan Some(200), vif40.0 rate 50000,100000, switch.ageing_secs 42, log.filter \"debug\"");
    let t = Instant::now();
    loop {
        let v = ctl_json(&sock, &["show", "vifs", "40.0"]);
        if v[0]["vlan"] == 200
            && v[0]["rate"] == "50000,100000"
            && v[0]["state_name"] == "Connected"
        {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sw = ctl_json(&sock, &["show", "switch"]);
    assert_eq!(sw["ageing_secs"], 42.0);
    let e40 = sw["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "00:16:3e:00:00:28")
        .cloned()
        .unwrap();
    assert_eq!(e40["vlan"], 200, "{sw}");
    // Plugged again on the same rings: traffic flows (to the uplink tagged with VLAN 200,
    // back from it into VLAN 200's only vif).
    traffic(&mut nf, &mut g, 20);
    let v = ctl_json(&sock, &["show", "vifs", "40.0"]);
    assert!(v[0]["queues"][0]["tx_packets"].as_u64().unwrap() >= 20);
    // The filter is debug now: a refused ctl request is logged.
    let _ = Command::new(BIN)
        .arg("ctl")
        .arg("--socket")
        .arg(&sock)
        .args(["show", "vifs", "99"])
        .output()
        .unwrap();
    at = wait_log(&log, at, "ctl: refused request: no vif 99");

    // SIGHUP with keys that need a restart: refused by name, nothing applied.
    std::fs::write(
        &cfg,
        base.replace("\"512\"", "\"256\"")
            + "[engine]\ngroups = 2\n[switch]\nageing_secs = 7\n[[vif]]\ndomid = 40\nvlan = 300\n",
    )
    .unwrap();
    sighup();
    at = wait_log(
        &log,
        at,
        "eal.args, engine.groups cannot change while netbackd runs",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ctl_json(&sock, &["show", "switch"])["ageing_secs"], 42.0);
    assert_eq!(ctl_json(&sock, &["show", "vifs", "40.0"])[0]["vlan"], 200);

    // SIGHUP with a broken file: refused, the running configuration kept.
    std::fs::write(&cfg, "host = \"sim\"\n[engine\n").unwrap();
    sighup();
    wait_log(&log, at, "keeping the running configuration");
    traffic(&mut nf, &mut g, 20);
    assert_eq!(
        ctl_json(&sock, &["show", "vifs", "40.0"])[0]["rate"],
        "50000,100000"
    );

    // SIGTERM: STOPPING=1.
    assert!(term_and_wait(daemon).success());
    std::thread::sleep(Duration::from_millis(100));
    assert!(seen("STOPPING=1").is_some());
    drop(nf);
    host.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
