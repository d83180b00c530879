//! GRO toward guests (`engine.gro`) against `netbackd run` on the simulated host with a real
//! DPDK `net_tap` uplink whose kernel side is in a namespace this test creates. The
//! namespace's kernel sends TCP streams (Python's socket module: real Linux TCP, its
//! segments MSS-sized on the wire) to two guests running smoltcp on their netfronts:
//! - 61 negotiated `feature-gso-tcpv4`: its stream arrives as coalesced GSO frames (counted
//!   by the guest and by `netbackd_vif_rx_gro_total`), each with a partial checksum the
//!   guest completes and smoltcp checks, and reassembles byte-exact;
//! - 62 did not: the same stream arrives as plain segments (no frame over 1514 bytes, no
//!   GSO extra, no GRO counted), byte-exact too;
//! - the namespace's tap counts no errors.
//!
//! Each guest receives two streams, alternately (61, 62, 61, 62); the test prints, per
//! transfer, the frames the guest got, the bytes and the group's guest-RX cycles per byte
//! (`netbackd_group_direction_cycles_total{direction="rx"}`): GRO against no GRO in one run
//! (figures, not asserted: a test is no benchmark).
use guest::netfront::NetfrontLink;
use guest::stack::{BulkReceiver, Stack, StreamSum};
use guest::FrontConfig;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

const WIRE_IP: &str = "10.8.0.254";
const BYTES: usize = 4_000_000;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x08, d as u8]
}

fn ip(d: u16) -> [u8; 4] {
    [10, 8, 0, d as u8]
}

/// Byte `i` of the stream the kernel sends (the Python sender computes the same).
fn stream(i: usize) -> u8 {
    ((i * 131 + (i >> 8)) & 255) as u8
}

const SENDER: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes(((i * 131 + (i >> 8)) & 255) for i in range(n))
s = socket.create_connection((host, port), timeout=60)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
s.close()
"#;

fn metric(maddr: &str, name: &str, labels: &[&str]) -> f64 {
    let (code, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    sample(&body, name, labels).unwrap_or(0.0)
}

#[test]
fn gro_over_net_tap() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-gro-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(61, mac(61)), (62, mac(62))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let ifname = format!("nbgro{}", pid % 100_000);
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rgro-{pid}"), &maddr, "")
            .replace("net_ring0", &format!("net_tap0,iface={ifname}"))
            + "[engine]\nidle_sleep_us = 200\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let ns = tap_into_netns(
        &maddr,
        &ifname,
        &format!("nbd-gro-{pid}"),
        &format!("{WIRE_IP}/24"),
    );

    let mut stacks: Vec<Stack<NetfrontLink>> = [(61, true), (62, false)]
        .into_iter()
        .map(|(d, gso)| {
            let fc = FrontConfig {
                gso,
                ..FrontConfig::new(d, 0)
            };
            let nf = attach_front(&root, &xs, fc);
            Stack::new(NetfrontLink::new(nf, 0), mac(d), ip(d), 24)
        })
        .collect();
    let mut want = StreamSum::default();
    want.update(&(0..BYTES).map(stream).collect::<Vec<u8>>());

    let mut report = Vec::new();
    for (round, k) in [0usize, 1, 0, 1].into_iter().enumerate() {
        let d = [61u16, 62][k];
        let port = 5001 + round as u16;
        let h = stacks[k].tcp_listen(port);
        let mut rx = BulkReceiver::new(h);
        let vif = [format!("domid=\"{d}\"")];
        let vl = [vif[0].as_str()];
        let rx_pkts0 = metric(&maddr, "netbackd_vif_rx_packets_total", &vl);
        let cyc0 = metric(
            &maddr,
            "netbackd_group_direction_cycles_total",
            &["direction=\"rx\""],
        );
        let frames0 = stacks[k].link.rx_gso_frames;
        let dst = format!("{}.{}.{}.{}", 10, 8, 0, d);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-c", SENDER, &dst])
            .arg(port.to_string())
            .arg(BYTES.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        loop {
            for s in stacks.iter_mut() {
                s.poll();
            }
            if rx.step(&mut stacks[k]) && child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "stream to {d} stuck at {} bytes",
                rx.got.bytes
            );
        }
        let st = child.wait().unwrap();
        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        assert!(st.success(), "sender to {d}: {err}");
        assert_eq!(rx.got, want, "stream to {d} byte-exact");
        let pkts = metric(&maddr, "netbackd_vif_rx_packets_total", &vl) - rx_pkts0;
        let cyc = metric(
            &maddr,
            "netbackd_group_direction_cycles_total",
            &["direction=\"rx\""],
        ) - cyc0;
        let gso = stacks[k].link.rx_gso_frames - frames0;
        report.push((d, pkts, gso, cyc / BYTES as f64));
    }
    for (d, pkts, gso, cpb) in &report {
        eprintln!(
            "guest {d} ({}): {pkts} frames for {BYTES} bytes ({:.0} B/frame), {gso} GSO frames, \
             group guest-RX {cpb:.2} cycles/byte",
            if *d == 61 { "GRO" } else { "no GSO" },
            BYTES as f64 / pkts
        );
    }

    // 61: coalesced frames, counted on both sides; 62: plain segments only.
    let gro = |d: u16, kind: &str| {
        metric(
            &maddr,
            "netbackd_vif_rx_gro_total",
            &[&format!("domid=\"{d}\""), &format!("kind=\"{kind}\"")],
        )
    };
    let (frames61, segs61) = (gro(61, "frames"), gro(61, "segments"));
    eprintln!(
        "61: {frames61} GRO frames of {segs61} segments; guest saw {} GSO frames, largest {} B",
        stacks[0].link.rx_gso_frames, stacks[0].link.rx_max_frame
    );
    assert!(
        frames61 > 0.0 && segs61 >= 2.0 * frames61,
        "61 coalesced: {frames61} / {segs61}"
    );
    assert!(stacks[0].link.rx_gso_frames > 0);
    assert!(stacks[0].link.rx_max_frame > 1514);
    assert_eq!(gro(62, "frames"), 0.0);
    assert_eq!(stacks[1].link.rx_gso_frames, 0);
    assert!(
        stacks[1].link.rx_max_frame <= 1514,
        "62 largest {}",
        stacks[1].link.rx_max_frame
    );
    let (p61, p62) = (report[0].1 + report[2].1, report[1].1 + report[3].1);
    assert!(
        p61 < p62,
        "GRO delivers fewer frames for the same bytes: {p61} vs {p62}"
    );

    // The namespace's side of the tap: no errors either way.
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-s", "-j", "link", "show", &ifname])
        .output()
        .unwrap();
    let js = String::from_utf8_lossy(&out.stdout).to_string();
    for k in ["\"errors\":", "\"dropped\":"] {
        for (i, _) in js.match_indices(k) {
            let v: String = js[i + k.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            assert_eq!(v, "0", "namespace tap counters clean: {js}");
        }
    }

    for s in stacks.iter_mut() {
        s.link.nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    drop(ns);
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rgro-{pid}")).exists());
}
