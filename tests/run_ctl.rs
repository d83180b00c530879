//! `netbackd ctl` and `netbackd top` against `netbackd run` on the simulated host: every
//! command's answer checked against the traffic the guests sent and against `/metrics`;
//! rates set and cleared, a vif detached, the log filter changed; bad requests, an
//! over-long line and a client that never writes disturb neither the traffic nor other
//! clients; the socket is 0600; `top` under tmux shows counters moving.
use guest::pktgen::PktGen;
use guest::{Netfront, TxMeta};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::sim::{toolstack, SimHost};
use xen::Tx;

mod common;
use common::*;

fn gen(domid: u16, src: [u8; 6]) -> PktGen {
    PktGen {
        src_mac: src,
        dst_mac: [2, 0, 0, 0, 0, 0x44],
        src_ip: [10, 0, 0, domid as u8],
        dst_ip: [10, 0, 0, 44],
        sport: 9,
        dport: 9,
        frame_len: 300,
        seq: 0,
    }
}

/// `netbackd ctl --json ARGS`, which must succeed, parsed.
fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, out, err) = ctl(sock, &a);
    assert!(ok, "ctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {out}"))
}

/// One raw request line on a fresh connection; the answer line.
fn raw(sock: &Path, line: &[u8]) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line).unwrap();
    let mut a = String::new();
    BufReader::new(s).read_line(&mut a).unwrap();
    serde_json::from_str(&a).unwrap_or_else(|e| panic!("{e}: {a:?}"))
}

fn metric(maddr: &str, name: &str, labels: &[&str]) -> f64 {
    let (code, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    sample(&body, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn wait_log(log: &Path, what: &str) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what:?} never logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` frames, waiting for ring space as needed, until all `n` came back.
fn pump(nf: &mut Netfront, g: &mut PktGen, n: u64) {
    let mut f = Vec::new();
    let (mut sent, mut got) = (0u64, 0u64);
    let t = Instant::now();
    while got < n {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "sent {sent}, got {got}"
        );
        let _ = nf.reap_tx(0);
        if sent < n {
            g.next_frame(&mut f);
            if nf.send(0, &f, TxMeta::default()).is_ok() {
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        got += nf.poll_rx(0).unwrap().len() as u64;
    }
}

/// The vif30.0 row's tx packets in a `top` screen.
fn top_tx(screen: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.starts_with("vif30.0"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

#[test]
fn ctl_and_top_against_the_daemon() {
    let pid = std::process::id();
    let host = SimHost::start(Default::default()).unwrap();
    host.add_domain(30, "alpha", 4096, 8192).unwrap();
    host.add_domain(31, "beta", 4096, 8192).unwrap();
    let xs = host.store();
    let root = host.root().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("nbd-ctl-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    // A directory of its own: the daemon creates it (0700) for the socket.
    let sock = dir.join("run").join("ctl.sock");
    let maddr = free_addr();
    let cfg = dir.join("netbackd.toml");
    // Two groups: vif 30 pinned to group 0 (the EAL worker lcore 1), vif 31 to group 1 (a
    // plain thread) and in VLAN 100, so the two never see each other's frames and every
    // count below is exact.
    std::fs::write(
        &cfg,
        ctl_socket(&sim_config(&root, &format!("nbd-ctl-{pid}"), &maddr, ""), &sock)
            + "[engine]\ngroups = 2\n[[vif]]\ndomid = 30\ngroup = 0\n[[vif]]\ndomid = 31\ngroup = 1\nvlan = 100\n",
    )
    .unwrap();
    let log = dir.join("netbackd.log");
    let daemon = Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NETBACKD_LOG", "info")
            .env_remove("NETBACKD_FAULT_INJECTION")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let t = Instant::now();
    while !sock.exists() || UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The socket: root only.
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let dmode = std::fs::metadata(sock.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700, "socket directory mode {dmode:o}");

    // No vifs yet.
    let (ok, out, _) = ctl(&sock, &["show", "vifs"]);
    assert!(ok);
    assert_eq!(out, "no vifs\n");

    for d in [30u16, 31] {
        toolstack::add_vif(xs, 0, d, 0, &mac(d), &Default::default()).unwrap();
    }
    let mut a: Netfront = connect(&host, 30, 0);
    let mut b: Netfront = connect(&host, 31, 0);
    let mut ga = gen(30, [0x00, 0x16, 0x3e, 0, 0, 30]);
    let mut gb = gen(31, [0x00, 0x16, 0x3e, 0, 0, 31]);
    traffic(&mut a, &mut ga, 50);
    traffic(&mut b, &mut gb, 20);

    // A client that connects and never writes, held all along: nobody waits for it.
    let silent = UnixStream::connect(&sock).unwrap();

    // show vifs: every field against the traffic sent and /metrics. (The control loop
    // publishes a vif's queues after the step that connected it.)
    let t = Instant::now();
    let vifs = loop {
        let v = ctl_json(&sock, &["show", "vifs"]);
        let ready = v.as_array().is_some_and(|a| {
            a.len() == 2
                && a.iter()
                    .all(|x| x["queues"].as_array().is_some_and(|q| q.len() == 1))
        });
        if ready {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let vifs = vifs.as_array().unwrap();
    assert_eq!(vifs.len(), 2, "{vifs:?}");
    let v30 = &vifs[0];
    assert_eq!(
        (u(&v30["domid"]), u(&v30["devid"]), v30["name"].as_str()),
        (30, 0, Some("alpha"))
    );
    assert_eq!(v30["state_name"], "Connected");
    assert_eq!(v30["vlan"], Value::Null);
    assert_eq!(v30["rate"], Value::Null);
    assert_eq!(vifs[1]["vlan"], 100);
    let q = &v30["queues"][0];
    assert_eq!((u(&q["queue"]), u(&q["group"])), (0, 0));
    assert_eq!(q["inspected"], true);
    assert_eq!(u(&q["tx_packets"]), 50);
    assert_eq!(u(&q["rx_packets"]), 50, "the uplink loops them back");
    assert_eq!(u(&q["tx_bytes"]), 50 * 300);
    // 50 one-slot requests from a fresh ring, each consumed and answered.
    let txr = &q["tx_ring"];
    assert_eq!(
        (
            u(&txr["req_prod"]),
            u(&txr["req_cons"]),
            u(&txr["rsp_prod"])
        ),
        (50, 50, 50),
        "{txr}"
    );
    // 50 buffers filled; the frontend keeps more posted.
    let rxr = &q["rx_ring"];
    assert_eq!(
        (u(&rxr["req_cons"]), u(&rxr["rsp_prod"])),
        (50, 50),
        "{rxr}"
    );
    assert!(u(&rxr["req_prod"]) > 50, "{rxr}");
    assert_eq!(u(&q["backlog_packets"]), 0);
    assert_eq!(q["credit_bytes"], Value::Null, "unlimited");
    assert!(q["drops"].as_object().unwrap().values().all(|d| d == 0));
    assert_eq!(q["drops"].as_object().unwrap().len(), 11);
    let l30 = ["domid=\"30\"", "queue=\"0\""];
    for (field, m) in [
        ("tx_packets", "netbackd_vif_tx_packets_total"),
        ("rx_packets", "netbackd_vif_rx_packets_total"),
        ("tx_bytes", "netbackd_vif_tx_bytes_total"),
        ("rx_bytes", "netbackd_vif_rx_bytes_total"),
        ("notifications", "netbackd_vif_notifications_total"),
    ] {
        assert_eq!(u(&q[field]) as f64, metric(&maddr, m, &l30), "{field}");
    }
    assert_eq!(
        metric(
            &maddr,
            "netbackd_vif_drops_total",
            &["domid=\"30\"", "reason=\"runt\""]
        ),
        0.0
    );
    let q31 = &vifs[1]["queues"][0];
    assert_eq!((u(&q31["group"]), u(&q31["tx_packets"])), (1, 20));
    // One vif, by name; the human table.
    let one = ctl_json(&sock, &["show", "vifs", "31.0"]);
    assert_eq!(one.as_array().unwrap().len(), 1);
    let (ok, table, _) = ctl(&sock, &["show", "vifs", "30"]);
    assert!(ok);
    assert!(
        table.starts_with("vif30.0 guest alpha state Connected vlan - rate unlimited\n"),
        "{table}"
    );
    assert!(table.contains("50/50/50"), "{table}");
    assert!(table.contains("drops: none"), "{table}");
    eprintln!("show vifs 30:\n{table}");

    // show groups: placement, lcores, and an interval's counts exactly the traffic.
    let g = ctl_json(&sock, &["show", "groups"]);
    let groups = g["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["lcore"], 1);
    assert_eq!(groups[1]["lcore"], Value::Null, "a plain thread");
    assert_eq!(groups[0]["queues"], serde_json::json!(["30.0/0"]));
    assert_eq!(groups[1]["queues"], serde_json::json!(["31.0/0"]));
    let tx0 = |name: &str, dir: &str| {
        metric(
            &maddr,
            name,
            &["group=\"0\"", &format!("direction=\"{dir}\"")],
        )
    };
    let (m_tx, m_rx) = (
        tx0("netbackd_group_direction_packets_total", "tx"),
        tx0("netbackd_group_direction_packets_total", "rx"),
    );
    assert_eq!(m_tx, 50.0);
    assert_eq!(m_rx, 50.0);
    let (ok, cleared, _) = ctl(&sock, &["show", "groups", "--clear"]);
    assert!(ok && cleared.contains("counters cleared"), "{cleared}");
    traffic(&mut a, &mut ga, 20);
    let g = ctl_json(&sock, &["show", "groups"]);
    let g0 = &g["groups"][0];
    let c = &g0["counts"];
    assert_eq!(
        (
            u(&c["tx_packets"]),
            u(&c["rx_packets"]),
            u(&c["batched_packets"])
        ),
        (20, 20, 40),
        "{g0}"
    );
    assert_eq!(
        tx0("netbackd_group_direction_packets_total", "tx") - m_tx,
        20.0
    );
    assert_eq!(u(&g["groups"][1]["counts"]["batched_packets"]), 0);
    assert!(u(&c["busy_cycles"]) > 0 && u(&c["idle_cycles"]) > 0);
    let busy = g0["busy_pct"].as_f64().unwrap();
    assert!(busy > 0.0 && busy < 100.0, "{busy}");
    let cpp = g0["cycles_per_packet"].as_f64().unwrap();
    assert_eq!(
        cpp,
        u(&c["busy_cycles"]) as f64 / u(&c["batched_packets"]) as f64
    );
    assert!(g0["tx_cycles_per_packet"].as_f64().unwrap() > 0.0);
    assert!(g0["rx_cycles_per_packet"].as_f64().unwrap() > 0.0);
    assert!(u(&c["grant_copy_ops"]) >= 40 && u(&c["grant_copy_calls"]) > 0);
    assert!(g["interval_secs"].as_f64().unwrap() < 30.0);
    // The cycles are the Prometheus counters' (which keep growing: >=).
    let busy_total = metric(
        &maddr,
        "netbackd_group_cycles_total",
        &["group=\"0\"", "state=\"busy\""],
    );
    assert!(busy_total >= u(&c["busy_cycles"]) as f64);
    let (ok, gt, _) = ctl(&sock, &["show", "groups"]);
    assert!(ok && gt.contains("30.0/0") && gt.contains("busy%"), "{gt}");
    eprintln!("show groups:\n{gt}");

    // show ports: the port's link, queues and counters, as /metrics has them.
    let p = ctl_json(&sock, &["show", "ports"]);
    let p = &p[0];
    assert_eq!(p["name"], "net_ring0");
    assert_eq!(p["driver"], "net_ring");
    assert_eq!(p["link_up"], true);
    assert_eq!(
        metric(&maddr, "netbackd_port_link_up", &["port=\"net_ring0\""]),
        1.0
    );
    assert_eq!((u(&p["rx_queues"]), u(&p["tx_queues"])), (2, 2));
    let good = u(&p["xstats"]["rx_good_packets"]);
    assert_eq!(
        good as f64,
        metric(&maddr, "netbackd_port_xstat", &["stat=\"rx_good_packets\""])
    );
    // Everything the guests sent went out and came back.
    assert_eq!(good, 50 + 20 + 20);
    assert_eq!(u(&p["stats"]["opackets"]), 90);
    let (ok, pt, _) = ctl(&sock, &["show", "ports"]);
    assert!(
        ok && pt.contains("port net_ring0 (net_ring): link up"),
        "{pt}"
    );
    eprintln!("show ports:\n{pt}");

    // show switch: the vifs' MACs (static, their VLANs) and a MAC the guest made up
    // (learned, young).
    let mut spoof = gen(30, [0x02, 0, 0, 0, 0, 0x99]);
    traffic(&mut a, &mut spoof, 5);
    let sw = ctl_json(&sock, &["show", "switch"]);
    assert_eq!(sw["mode"], "learning");
    assert_eq!(sw["ageing_secs"], 300.0);
    assert_eq!(sw["unanswered"], serde_json::json!([]));
    let entries = sw["entries"].as_array().unwrap();
    let find = |m: &str| entries.iter().find(|e| e["mac"] == m);
    let s30 = find("00:16:3e:00:00:1e").expect("vif 30's MAC");
    assert_eq!(
        (&s30["port"], &s30["learned"], &s30["vlan"]),
        (&Value::from("vif30.0"), &Value::from(false), &Value::Null)
    );
    assert_eq!(
        s30["groups"],
        serde_json::json!([0, 1]),
        "both groups know it"
    );
    let s31 = find("00:16:3e:00:00:1f").expect("vif 31's MAC");
    assert_eq!(
        (&s31["port"], &s31["vlan"]),
        (&Value::from("vif31.0"), &Value::from(100))
    );
    let l = find("02:00:00:00:00:99").expect("the learned MAC");
    assert_eq!(l["learned"], true);
    assert!(l["port"] == "uplink" || l["port"] == "vif30.0", "{l}");
    assert!(l["age_secs"].as_f64().unwrap() < 5.0, "{l}");
    let (ok, st, _) = ctl(&sock, &["show", "switch"]);
    assert!(
        ok && st.contains("02:00:00:00:00:99") && st.contains("learned"),
        "{st}"
    );
    eprintln!("show switch:\n{st}");

    // set rate / clear rate: the group runs the queue at that rate, then unlimited again.
    let (ok, out, err) = ctl(&sock, &["set", "rate", "30.0", "100000", "100000"]);
    assert!(ok, "{err}");
    assert!(out.contains("rate 100000 bytes per 100000 us"), "{out}");
    let t = Instant::now();
    loop {
        let v = ctl_json(&sock, &["show", "vifs", "30.0"]);
        if v[0]["rate"] == "100000,100000" {
            assert!(u(&v[0]["queues"][0]["credit_bytes"]) <= 100_000);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "rate not applied: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 1 MB/s: 600 KB of frames take at least half a second.
    let t = Instant::now();
    pump(&mut a, &mut ga, 2000);
    assert!(
        t.elapsed() > Duration::from_millis(400),
        "600 KB at 1 MB/s in {:?}",
        t.elapsed()
    );
    assert!(ctl(&sock, &["clear", "rate", "30.0"]).0);
    let t = Instant::now();
    while ctl_json(&sock, &["show", "vifs", "30.0"])[0]["rate"] != Value::Null {
        assert!(t.elapsed() < Duration::from_secs(5), "rate not cleared");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Bad requests: a clear error each, nothing else disturbed.
    for (line, want) in [
        (&b"garbage\n"[..], "bad request"),
        (b"{\"cmd\":\"reboot\"}\n", "unknown variant"),
        (
            b"{\"cmd\":\"show_vifs\",\"vif\":\"x.y\"}\n",
            "expected DOMID",
        ),
        (b"{\"cmd\":\"show_vifs\",\"vif\":\"99\"}\n", "no vif 99"),
        (
            b"{\"cmd\":\"set_rate\",\"vif\":\"30.0\",\"bytes\":0,\"usecs\":5}\n",
            "bytes must be > 0",
        ),
        (b"{\"cmd\":\"detach\",\"vif\":\"77.0\"}\n", "no vif 77.0"),
        (
            b"{\"cmd\":\"log_level\",\"filter\":\"x=loud\"}\n",
            "log filter",
        ),
        (
            b"{\"cmd\":\"debug_stall\",\"group\":0,\"ms\":10}\n",
            "NETBACKD_FAULT_INJECTION",
        ),
    ] {
        let a = raw(&sock, line);
        assert_eq!(a["ok"], false, "{a}");
        let e = a["error"].as_str().unwrap();
        assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
    }
    let mut long = vec![b'x'; 10_000];
    long.push(b'\n');
    let a2 = raw(&sock, &long);
    assert!(
        a2["error"].as_str().unwrap().contains("longer than"),
        "{a2}"
    );
    let (ok, _, err) = ctl(&sock, &["show", "vifs", "99.0"]);
    assert!(!ok && err.contains("no vif 99.0"), "{err}");
    // Several requests on one connection.
    {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(b"{\"cmd\":\"show_ports\"}\n{\"cmd\":\"show_switch\"}\n")
            .unwrap();
        let mut r = BufReader::new(s);
        for _ in 0..2 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(l.starts_with("{\"ok\":true"), "{l}");
        }
    }
    // With the silent client still connected, another answers at once and traffic flows.
    let t = Instant::now();
    assert!(ctl(&sock, &["show", "ports"]).0);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    traffic(&mut a, &mut ga, 20);
    drop(silent);

    // log level: the filter changes live (the refused requests are logged at debug).
    assert!(ctl(&sock, &["log", "level", "debug"]).0);
    let _ = raw(&sock, b"nonsense\n");
    wait_log(&log, "ctl: refused request");
    assert!(ctl(&sock, &["log", "level", "info"]).0);

    // top under tmux: the vif's counters move while the guest sends.
    let tmux = format!("nbd-ctl-{pid}");
    let top_cmd = format!("{BIN} top --socket {} --interval 0.3", sock.display());
    let st = Command::new("tmux")
        .args([
            "-L",
            &tmux,
            "new-session",
            "-d",
            "-x",
            "150",
            "-y",
            "12",
            &top_cmd,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let capture = || {
        let o = Command::new("tmux")
            .args(["-L", &tmux, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let t = Instant::now();
    let first = loop {
        let s = capture();
        if let Some(n) = top_tx(&s) {
            break (n, s);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "top shows no vif:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(first.1.contains("netbackd top"), "{}", first.1);
    traffic(&mut a, &mut ga, 200);
    let t = Instant::now();
    let second = loop {
        let s = capture();
        if top_tx(&s).is_some_and(|n| n >= first.0 + 200) {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "top's counters did not move from {}:\n{s}",
            first.0
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("top:\n{second}");
    let _ = Command::new("tmux")
        .args(["-L", &tmux, "kill-server"])
        .status();

    // detach: closed the way the toolstack does; the other vif is untouched.
    let (ok, out, err) = ctl(&sock, &["detach", "31.0"]);
    assert!(ok, "{err}");
    assert!(out.contains("detached"), "{out}");
    let be31 = toolstack::backend_path(0, 31, 0);
    assert_eq!(
        xs.read(Tx::NONE, &format!("{be31}/online"))
            .unwrap()
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        xs.read(Tx::NONE, &format!("{be31}/state"))
            .unwrap()
            .as_deref(),
        Some("6")
    );
    let v31 = ctl_json(&sock, &["show", "vifs", "31.0"]);
    assert_eq!(v31[0]["state_name"], "Closed");
    assert_eq!(v31[0]["queues"], serde_json::json!([]));
    traffic(&mut a, &mut ga, 20);
    let _ = b;

    assert!(term_and_wait(daemon).success());
    assert!(!sock.exists(), "the socket is removed on exit");
    drop(a);
    host.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
