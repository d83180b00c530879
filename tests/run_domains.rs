//! Per-domain totals in `/metrics` as the real `netbackd run` keeps them on the simulated
//! host, with a small cap (`metrics.remembered_domains = 2`) and grace period
//! (`metrics.closed_vif_grace_secs = 2`): refused configurations and a rogue frontend are
//! counted per domain by reason, a domain coming back adds to its totals, the series stay
//! bounded by the cap with the oldest domain forgotten and the eviction counted, and a
//! closed vif's own series go after the grace period while its domain's totals stay.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::sim::{toolstack, SimHost};
use xen::{Tx, XenStore};

mod common;
use common::*;

const OUT_OF_RANGE: &str = r#"rx-ring-ref = "4294967296" is out of range (max 4294967295)"#;

/// Attaches vif `devid` of `domid` with a frontend whose `rx-ring-ref` is out of range;
/// checks the backend closed it with the exact message.
fn refused(xs: &XenStore, domid: u16, devid: u32) {
    toolstack::add_vif(xs, 0, domid, devid, &mac(domid), &Default::default()).unwrap();
    let b = toolstack::backend_path(0, domid, devid);
    let fp = toolstack::frontend_path(domid, devid);
    wait_state(xs, &format!("{b}/state"), "2", 5);
    for (k, v) in [
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "4294967296"),
        ("event-channel", "3"),
        ("request-rx-copy", "1"),
    ] {
        xs.write(Tx::NONE, &format!("{fp}/{k}"), v).unwrap();
    }
    xs.write(Tx::NONE, &format!("{fp}/state"), "4").unwrap();
    wait_state(xs, &format!("{b}/state"), "6", 5);
    let err = xs.read(Tx::NONE, &format!("{b}/error")).unwrap();
    assert_eq!(err.as_deref(), Some(OUT_OF_RANGE));
}

fn closed(body: &str, domid: u16, reason: &str) -> Option<f64> {
    sample(
        body,
        "netbackd_domain_closed_total",
        &[
            &format!("domid=\"{domid}\""),
            &format!("name=\"d{domid}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

fn evictions(body: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix("netbackd_domain_evictions_total "))
        .and_then(|v| v.parse().ok())
}

/// (domid label of every `netbackd_domain_*` sample but the evictions, sample count).
fn domain_series(body: &str) -> (Vec<String>, usize) {
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("netbackd_domain_") && l.contains('{'))
        .collect();
    let mut doms: Vec<String> = lines
        .iter()
        .filter_map(|l| Some(l.split("domid=\"").nth(1)?.split('"').next()?.to_string()))
        .collect();
    doms.sort();
    doms.dedup();
    (doms, lines.len())
}

#[test]
fn domain_totals_are_bounded_and_outlive_vifs() {
    let pid = std::process::id();
    let host = SimHost::start(Default::default()).unwrap();
    for d in 31..=34 {
        host.add_domain(d, &format!("d{d}"), 4096, 8192).unwrap();
    }
    let xs = host.store();
    let root = host.root().to_string_lossy().into_owned();
    let dir = std::env::temp_dir().join(format!("nbd-doms-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let maddr = free_addr();
    let cfg = dir.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(
            &root,
            &format!("nbd-doms-{pid}"),
            &maddr,
            "remembered_domains = 2\nclosed_vif_grace_secs = 2\n",
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("netbackd.log")).unwrap();
    let daemon = Guard(Some(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let t = Instant::now();
    while std::net::TcpStream::connect(&maddr).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "daemon not up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Before any domain: the families are declared, with no domain samples.
    let body = scrape_until(&maddr, 5, |b| evictions(b) == Some(0.0));
    for m in [
        "netbackd_domain_rogue_total",
        "netbackd_domain_closed_total",
    ] {
        assert!(body.contains(&format!("# TYPE {m} counter")), "{body}");
    }
    assert_eq!(domain_series(&body), (vec![], 0));

    // 1. Two refused domains: both remembered.
    refused(xs, 31, 0);
    refused(xs, 32, 0);
    let body = scrape_until(&maddr, 5, |b| closed(b, 32, "rx-ring-ref").is_some());
    assert_eq!(closed(&body, 31, "rx-ring-ref"), Some(1.0));
    assert_eq!(evictions(&body), Some(0.0));

    // 2. A third: the oldest (31) is forgotten, and counted.
    refused(xs, 33, 0);
    let body = scrape_until(&maddr, 5, |b| closed(b, 33, "rx-ring-ref").is_some());
    assert_eq!(closed(&body, 31, "rx-ring-ref"), None);
    assert_eq!(closed(&body, 32, "rx-ring-ref"), Some(1.0));
    assert_eq!(evictions(&body), Some(1.0));

    // 3. Domain 32 again (another vif): its total goes on, and it is now the newest.
    refused(xs, 32, 1);
    let body = scrape_until(&maddr, 5, |b| closed(b, 32, "rx-ring-ref") == Some(2.0));
    assert_eq!(evictions(&body), Some(1.0));

    // 4. A rogue frontend (impossible req_prod) in a fourth domain: 33, whose last event
    // is now the oldest, goes.
    toolstack::add_vif(xs, 0, 34, 0, &mac(34), &Default::default()).unwrap();
    let mut rogue = connect(&host, 34, 0);
    rogue.poke_tx_req_prod(0, 5000);
    let be34 = toolstack::backend_path(0, 34, 0);
    wait_state(xs, &format!("{be34}/state"), "6", 5);
    let t_closed = Instant::now();
    let rogue_total = |b: &str| {
        sample(
            b,
            "netbackd_domain_rogue_total",
            &[
                "domid=\"34\"",
                "name=\"d34\"",
                "reason=\"impossible_tx_index\"",
            ],
        )
    };
    let vif34 = ["domid=\"34\"", "devid=\"0\"", "queue=\"0\""];
    let body = scrape_until(&maddr, 5, |b| rogue_total(b).is_some());
    assert!(t_closed.elapsed() < Duration::from_millis(1500));
    assert_eq!(rogue_total(&body), Some(1.0));
    assert_eq!(closed(&body, 34, "impossible_tx_index"), Some(1.0));
    assert_eq!(closed(&body, 33, "rx-ring-ref"), None);
    assert_eq!(closed(&body, 32, "rx-ring-ref"), Some(2.0));
    assert_eq!(evictions(&body), Some(2.0));
    // Within the grace period the vif's own final series are there too.
    assert_eq!(sample(&body, "netbackd_vif_rogue_total", &vif34), Some(1.0));
    assert_eq!(sample(&body, "netbackd_vif_state", &vif34), Some(6.0));
    // Bounded: two domains, three series (32 closed; 34 rogue and closed).
    assert_eq!(
        domain_series(&body),
        (vec!["32".to_string(), "34".to_string()], 3)
    );

    // 5. After the grace period the vif's series are gone; its domain's totals are not.
    std::thread::sleep(Duration::from_millis(2500).saturating_sub(t_closed.elapsed()));
    let body = scrape_until(&maddr, 5, |b| {
        sample(b, "netbackd_vif_state", &vif34).is_none()
    });
    assert!(t_closed.elapsed() >= Duration::from_secs(2));
    assert_eq!(sample(&body, "netbackd_vif_rogue_total", &vif34), None);
    assert_eq!(rogue_total(&body), Some(1.0));
    assert_eq!(closed(&body, 34, "impossible_tx_index"), Some(1.0));
    assert_eq!(domain_series(&body).1, 3);

    assert!(term_and_wait(daemon).success());
    rogue.close().ok();
    host.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-doms-{pid}")).exists());
}
