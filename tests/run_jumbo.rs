//! `[[port]] mtu` against `netbackd run` on the simulated host.
//! - `net_ring0` at MTU 9000: a guest's 8000-byte frames (two TX slots) go out through the
//!   port as mbuf chains, come back (net_ring loops TX to RX) and reach the guest again
//!   intact (two RX slots); a guest whose netfront did not negotiate scatter-gather gets
//!   none of them (each drop counted per vif) but small frames still, and neither does a
//!   guest whose vif has no `mtu` key (1500; 51's has `mtu = 9000` as libxl writes it);
//!   the port counts no errors.
//! - `net_tap` at MTU 9000: DPDK 22.11's tap reports 1522-byte frames at most, so the
//!   daemon refuses to start, naming `port[0]` and the limit;
//! - `net_ring0` at the default 1500: 8000-byte frames toward the wire are dropped, counted
//!   (`netbackd_port_drops_total{reason="tx_too_big"}`), smaller ones pass.
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x05, d as u8]
}

/// `n` frames of `len` bytes from guest `from` to an unknown MAC (out through the port,
/// back from net_ring, flooded to every vif); what guest `to` received, sequence-checked.
fn looped(nfs: &mut [Netfront], from: usize, to: usize, len: usize, n: u64) -> Sink {
    let mut g = PktGen {
        src_mac: mac(51),
        dst_mac: [0x02, 0, 0, 0, 0, 0x99],
        src_ip: [10, 5, 0, 51],
        dst_ip: [10, 5, 0, 99],
        sport: 7,
        dport: 7,
        frame_len: len,
        seq: 0,
    };
    let mut f = Vec::new();
    let mut sink = Sink::default();
    let mut sent = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) && (sent < n || sink.stats.packets < n) {
        if sent < n {
            g.next_frame(&mut f);
            let meta = TxMeta {
                slot_size: 4096,
                ..Default::default()
            };
            if nfs[from].send(0, &f, meta).is_ok() {
                sent += 1;
            } else {
                g.seq -= 1;
            }
        }
        for (i, nf) in nfs.iter_mut().enumerate() {
            for p in nf.poll_rx(0).unwrap() {
                if i == to {
                    sink.accept(&p.data);
                } else {
                    assert!(
                        i != 1 || p.data.len() <= 4096,
                        "over a page to a non-SG vif"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sink
}

#[test]
fn port_mtu_9000() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-jumbo-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(51, mac(51)), (52, mac(52)), (53, mac(53))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let cfg = parent.join("netbackd.toml");
    let config = |devargs: &str, run: &str| {
        sim_config(&root, &format!("nbd-rjum-{pid}-{run}"), &maddr, "").replace(
            "devargs = \"net_ring0\"",
            &format!("devargs = \"{devargs}\"\nmtu = 9000"),
        )
    };

    // 1. net_tap cannot: the daemon says so and exits.
    let ifname = format!("nbjum{}", pid % 100_000);
    std::fs::write(&cfg, config(&format!("net_tap0,iface={ifname}"), "tap")).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("port[0], mtu = 9000") && err.contains("at most 1522 bytes"),
        "{err}"
    );

    // 2. net_ring at MTU 9000.
    std::fs::write(&cfg, config("net_ring0", "ring")).unwrap();
    let run = spawn_run(&cfg);
    // 51's vif has `mtu = 9000` from the toolstack (as libxl writes it); 53's none (1500).
    xs.write(
        xen::Tx::NONE,
        "/local/domain/0/backend/vif/51/0/mtu",
        "9000",
    )
    .unwrap();
    let mut fc = FrontConfig::new(52, 0);
    fc.sg = false;
    let mut nfs = vec![
        attach_front(&root, &xs, FrontConfig::new(51, 0)),
        attach_front(&root, &xs, fc),
        attach_front(&root, &xs, FrontConfig::new(53, 0)),
    ];
    let sink = looped(&mut nfs, 0, 0, 8000, 200);
    let st = &sink.stats;
    assert_eq!((st.packets, st.lost, st.bad), (200, 0, 0), "{st:?}");
    assert_eq!(st.bytes, 200 * 8000);
    // 52 (no scatter-gather) got each frame twice (flooded from 51, and again from the
    // wire): none delivered, every one counted.
    std::thread::sleep(Duration::from_millis(100));
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    let too_big = sample(
        &body,
        "netbackd_vif_drops_total",
        &["domid=\"52\"", "reason=\"too_big\""],
    );
    assert_eq!(too_big, Some(400.0), "{body}");
    // 53 (MTU 1500) likewise: dropped over its MTU, counted.
    let too_big = sample(
        &body,
        "netbackd_vif_drops_total",
        &["domid=\"53\"", "reason=\"too_big\""],
    );
    assert_eq!(too_big, Some(400.0), "{body}");
    // Small frames still reach 52 (each twice, as above: the second copy counts as out of
    // order in the sink).
    let sink = looped(&mut nfs, 0, 1, 1000, 50);
    assert!(sink.stats.packets >= 50 && sink.stats.lost == 0 && sink.stats.bad == 0);
    for reason in ["rx_errors", "tx_errors"] {
        let r = format!("reason=\"{reason}\"");
        assert_eq!(
            sample(&body, "netbackd_port_drops_total", &[&r]),
            Some(0.0),
            "{reason}"
        );
    }

    assert!(term_and_wait(run).success());

    // 3. net_ring at the default MTU 1500: the same 8000-byte frames are not sent (a
    //    bridge would drop them too), each counted; 1000-byte ones still go round.
    std::fs::write(
        &cfg,
        config("net_ring0", "1500").replace("mtu = 9000", "mtu = 1500"),
    )
    .unwrap();
    let run = spawn_run(&cfg);
    wait_state(&xs, "/local/domain/0/backend/vif/51/0/state", "4", 10);
    wait_state(&xs, "/local/domain/0/backend/vif/52/0/state", "4", 10);
    wait_state(&xs, "/local/domain/0/backend/vif/53/0/state", "4", 10);
    // What the first daemon still delivered goes first.
    std::thread::sleep(Duration::from_millis(200));
    for nf in &mut nfs {
        let _ = nf.poll_rx(0).unwrap();
    }
    let sink = looped(&mut nfs, 0, 0, 8000, 100);
    assert_eq!(sink.stats.packets, 0, "nothing over the MTU came back");
    let sink = looped(&mut nfs, 0, 0, 1000, 50);
    assert_eq!((sink.stats.packets, sink.stats.lost), (50, 0));
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &body,
            "netbackd_port_drops_total",
            &["reason=\"tx_too_big\""]
        ),
        Some(100.0),
        "{body}"
    );

    for nf in &mut nfs {
        nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    for run in ["tap", "ring", "1500"] {
        assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rjum-{pid}-{run}")).exists());
    }
}
