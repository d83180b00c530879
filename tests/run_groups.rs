//! `netbackd run` with two groups on the simulated host: two guests whose vifs land in
//! different groups (least loaded) reach each other directly, through the handoff ring,
//! never through the uplink (`net_ring0` would loop a hairpinned frame back and flood it
//! to the sender too); the handoffs show in the metrics. Restarted with both vifs pinned
//! to one group (`[[vif]] group`), they reconnect there and nothing is handed over.
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

#[test]
fn vifs_in_different_groups_reach_each_other() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-grp-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _sim_out) = start_sim(
        &[
            "--guest",
            "81",
            "--guest",
            "82",
            "--vif",
            "81:0:00:16:3e:00:08:01",
            "--vif",
            "82:0:00:16:3e:00:08:02",
        ],
        &parent,
    );
    let sock = format!("{root}/xenstored/socket");
    let xs = XenStore::open_at(&sock).unwrap();
    let maddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cfg = parent.join("netbackd.toml");
    let start = |pins: &str, run: &str| {
        std::fs::write(
            &cfg,
            format!(
                "host = \"sim\"\n[sim]\nroot = \"{root}\"\n[eal]\nargs = [\"-l\", \"0,1\", \"--no-huge\", \"-m\", \"512\", \"--no-pci\", \"--no-shconf\", \"--log-level\", \"*:error\"]\nfile_prefix = \"nbd-rgrp-{pid}-{run}\"\n[[port]]\ndevargs = \"net_ring0\"\n[ctl]\nsocket = \"\"\n[engine]\ngroups = 2\nidle_sleep_us = 0\n[metrics]\nlisten = \"{maddr}\"\n{pins}"
            ),
        )
        .unwrap();
        Guard(Some(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&cfg)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    // 1. Least loaded per queue: 81 in group 0, 82 in group 1.
    let run = start("", "a");
    let mut nfs = Vec::new();
    for d in [81u16, 82] {
        wait_state(
            &xs,
            &format!("/local/domain/0/backend/vif/{d}/0/state"),
            "2",
            10,
        );
        let mut nf = Netfront::new(
            &xen::sim::SimLayout::new(&root),
            XenStore::open_at(&sock).unwrap(),
            FrontConfig::new(d, 0),
        )
        .unwrap();
        nf.connect(Duration::from_secs(5)).unwrap();
        wait_state(
            &xs,
            &format!("/local/domain/0/backend/vif/{d}/0/state"),
            "4",
            5,
        );
        nfs.push(nf);
    }
    let n = 400u64;
    exchange(&mut nfs, n);
    let body = scrape_when_served(&maddr);
    // Each group handed its own vif's frames to the other.
    assert_eq!(handoffs(&body, "0"), n as f64, "{body}");
    assert_eq!(handoffs(&body, "1"), n as f64, "{body}");
    assert_eq!(
        sample(&body, "netbackd_port_xstat", &["stat=\"tx_good_packets\""]),
        Some(0.0),
        "no frame left through the uplink"
    );
    assert!(term_and_wait(run).success());

    // 2. Restarted with both vifs pinned to group 1 (`[[vif]] group`): they reconnect
    //    there, and nothing is handed over; group 0 moves nothing.
    let run = start(
        "[[vif]]\ndomid = 81\ngroup = 1\n[[vif]]\ndomid = 82\ngroup = 1\n",
        "b",
    );
    let _ = scrape_when_served(&maddr);
    exchange(&mut nfs, n);
    let body = scrape_when_served(&maddr);
    assert_eq!(handoffs(&body, "0"), 0.0, "{body}");
    assert_eq!(handoffs(&body, "1"), 0.0, "{body}");
    assert_eq!(
        sample(
            &body,
            "netbackd_group_batched_packets_total",
            &["group=\"0\""]
        ),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "netbackd_group_batched_packets_total",
            &["group=\"1\""]
        )
        .unwrap()
            >= (4 * n) as f64,
        "{body}"
    );
    let status = term_and_wait(run);
    assert!(status.success(), "{status:?}");
    for mut nf in nfs {
        nf.close().unwrap();
    }
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    for run in ["a", "b"] {
        assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rgrp-{pid}-{run}")).exists());
    }
}

/// 81 -> 82 and 82 -> 81, `n` frames each, sequence-checked at the receiver; nothing else
/// may arrive (a hairpin through net_ring0 would bring each frame back to its sender).
fn exchange(nfs: &mut [Netfront], n: u64) {
    let mac = |d: u8| [0x00, 0x16, 0x3e, 0x00, 0x08, d];
    let mut gens: Vec<PktGen> = [(1u8, 2u8), (2, 1)]
        .iter()
        .map(|&(s, d)| PktGen {
            src_mac: mac(s),
            dst_mac: mac(d),
            src_ip: [10, 0, 8, s],
            dst_ip: [10, 0, 8, d],
            sport: 9,
            dport: 9,
            frame_len: 300,
            seq: 0,
        })
        .collect();
    let mut sinks = [Sink::default(), Sink::default()];
    let mut sent = [0u64; 2];
    let mut f = Vec::new();
    let t = Instant::now();
    while (sinks[0].stats.packets < n || sinks[1].stats.packets < n)
        && t.elapsed() < Duration::from_secs(20)
    {
        for i in 0..2 {
            while sent[i] < n {
                gens[i].next_frame(&mut f);
                if nfs[i].send(0, &f, TxMeta::default()).is_err() {
                    gens[i].seq -= 1;
                    break;
                }
                sent[i] += 1;
            }
            for p in nfs[i].poll_rx(0).unwrap() {
                sinks[i].accept(&p.data);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..2 {
        for p in nfs[i].poll_rx(0).unwrap() {
            sinks[i].accept(&p.data);
        }
    }
    for s in &sinks {
        let st = &s.stats;
        assert_eq!(
            (st.packets, st.bad, st.lost, st.reordered),
            (n, 0, 0, 0),
            "{st:?}"
        );
    }
}

/// `/metrics` once both vifs are served (state 4 in the metrics), bounded.
fn scrape_when_served(maddr: &str) -> String {
    let t = Instant::now();
    loop {
        // A restarted daemon serves metrics only once it is up.
        if std::net::TcpStream::connect(maddr).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "no metrics endpoint");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let (code, body) = http_get(maddr, "/metrics");
        let served = |d: &str| {
            sample(&body, "netbackd_vif_state", &[&format!("domid=\"{d}\"")]) == Some(4.0)
        };
        if code == 200 && served("81") && served("82") {
            return body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "vifs not served: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn handoffs(body: &str, group: &str) -> f64 {
    sample(
        body,
        "netbackd_group_handoffs_total",
        &[&format!("group=\"{group}\""), "result=\"sent\""],
    )
    .unwrap_or(-1.0)
}
