//! `netbackd run` as an operator runs it, on the simulated host: `netbackd sim` provides
//! the host and a vif, `netbackd run --config` serves it, a guest's netfront connects and
//! passes traffic through the daemon (to the wire and back); SIGTERM stops the daemon and
//! leaves the vif connected, and a restarted daemon resumes it. A malformed config is
//! refused with the offending key named.
use guest::pktgen::PktGen;
use guest::{FrontConfig, Netfront};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::{Tx, XenStore};

mod common;
use common::*;

#[test]
fn run_serves_sim_vifs() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-run-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _sim_out) = start_sim(
        &["--guest", "71", "--vif", "71:0:00:16:3e:00:07:01"],
        &parent,
    );
    let sock = format!("{root}/xenstored/socket");
    let xs = XenStore::open_at(&sock).unwrap();
    let be = "/local/domain/0/backend/vif/71/0";

    // A malformed configuration: refused, the key named, exit code 2.
    let bad = parent.join("bad.toml");
    std::fs::write(&bad, format!("host = \"sim\"\n[sim]\nroot = \"{root}\"\n[[port]]\ndevargs = \"net_ring0\"\n[ctl]\nsocket = \"\"\n[engine]\ngroups = 0\n")).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("engine.groups"), "{msg}");

    let cfg = parent.join("netbackd.toml");
    // A free loopback port for the metrics endpoint.
    let maddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let write_cfg = |prefix: &str| {
        std::fs::write(
            &cfg,
            format!(
                "host = \"sim\"\n[sim]\nroot = \"{root}\"\n[eal]\nargs = [\"-l\", \"0,1\", \"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-shconf\", \"--log-level\", \"*:error\"]\nfile_prefix = \"{prefix}\"\n[[port]]\ndevargs = \"net_ring0\"\n[ctl]\nsocket = \"\"\n[metrics]\nlisten = \"{maddr}\"\n"
            ),
        )
        .unwrap();
    };
    write_cfg(&format!("nbd-run-{pid}-a"));
    let t0 = Instant::now();
    let run = Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_state(&xs, &format!("{be}/state"), "2", 10);
    let mut nf = Netfront::new(
        &xen::sim::SimLayout::new(&root),
        XenStore::open_at(&sock).unwrap(),
        FrontConfig::new(71, 0),
    )
    .unwrap();
    nf.connect(Duration::from_secs(5)).unwrap();
    wait_state(&xs, &format!("{be}/state"), "4", 5);
    eprintln!("netbackd run -> vif Connected in {:?}", t0.elapsed());
    let mut gen = PktGen {
        src_mac: [0x00, 0x16, 0x3e, 0, 7, 1],
        dst_mac: [2, 0, 0, 0, 0, 0x44],
        src_ip: [10, 0, 0, 71],
        dst_ip: [10, 0, 0, 44],
        sport: 9,
        dport: 9,
        frame_len: 400,
        seq: 0,
    };
    traffic(&mut nf, &mut gen, 50);

    // Prometheus metrics over HTTP match the traffic (read from the engine's atomics).
    // The control loop publishes a new vif to the metrics right after it writes Connected:
    // scrape until it is there (bounded).
    let vif = ["domid=\"71\"", "devid=\"0\"", "queue=\"0\""];
    let t = Instant::now();
    let (code, body) = loop {
        let (code, body) = http_get(&maddr, "/metrics");
        if sample(&body, "netbackd_vif_tx_packets_total", &vif).is_some()
            || t.elapsed() > Duration::from_secs(5)
        {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, 200);
    assert!(
        sample(&body, "netbackd_vif_tx_packets_total", &vif).unwrap() >= 50.0,
        "{body}"
    );
    assert!(sample(&body, "netbackd_vif_rx_packets_total", &vif).unwrap() >= 50.0);
    assert_eq!(sample(&body, "netbackd_vif_state", &vif), Some(4.0));
    assert_eq!(
        sample(
            &body,
            "netbackd_vif_drops_total",
            &["domid=\"71\"", "reason=\"runt\""]
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &body,
            "netbackd_group_grant_copy_calls_total",
            &["group=\"0\""]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(http_get(&maddr, "/").0, 404);
    // The uplink port's link and DPDK xstats are there too.
    assert_eq!(
        sample(&body, "netbackd_port_link_up", &["port=\"net_ring0\""]),
        Some(1.0)
    );
    assert!(body.contains("netbackd_port_xstat{port=\"net_ring0\",stat=\"rx_good_packets\"}"));
    // Every metric the shipped Grafana dashboard and alert rules query is one the daemon
    // exports (declared even before it has samples, like the per-domain totals here).
    for file in ["grafana-netbackd.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
        let mut names: Vec<&str> = text
            .match_indices("netbackd_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            // `netbackd_domain_*` in prose is not a query.
            .filter(|n| n.len() > "netbackd_".len() && !n.ends_with('_'))
            .collect();
        names.sort();
        names.dedup();
        let least = if file.ends_with(".json") { 15 } else { 3 };
        assert!(names.len() >= least, "{file}: {names:?}");
        for n in names {
            assert!(
                body.contains(&format!("# TYPE {n} ")),
                "{file} queries {n}, which /metrics does not export"
            );
        }
    }

    // SIGTERM: the daemon stops cleanly and leaves the vif as it is.
    assert!(term_and_wait(run).success());
    assert_eq!(
        xs.read(Tx::NONE, &format!("{be}/state"))
            .unwrap()
            .as_deref(),
        Some("4")
    );

    // A restarted daemon resumes the vif on the same frontend rings; traffic flows again.
    write_cfg(&format!("nbd-run-{pid}-b"));
    let run = Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let t = Instant::now();
    let mut sink_state_seen = false;
    while t.elapsed() < Duration::from_secs(10) {
        // The new daemon resumes the vif (tests/run_restart.rs watches that it stays
        // Connected throughout).
        if xs
            .read(Tx::NONE, &format!("{be}/hotplug-status"))
            .unwrap()
            .is_some()
            && xs
                .read(Tx::NONE, &format!("{be}/state"))
                .unwrap()
                .as_deref()
                == Some("4")
            && t.elapsed() > Duration::from_millis(500)
        {
            sink_state_seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sink_state_seen);
    traffic(&mut nf, &mut gen, 50);
    assert!(term_and_wait(run).success());
    nf.close().unwrap();
    assert!(term_and_wait(sim).success());
    assert_eq!(
        std::fs::read_dir(&parent)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
            .count(),
        0
    );
    std::fs::remove_dir_all(&parent).unwrap();
    for p in ["a", "b"] {
        assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-run-{pid}-{p}")).exists());
    }
}
