//! One L2 domain over four groups, against `netbackd run` on the simulated host with a
//! real DPDK `net_tap` uplink (four queues, the kernel side in a network namespace this
//! test creates): eight guests (two with two queues) spread over the groups by the least
//! loaded placement. Each guest runs an IP stack (smoltcp) on its netfront:
//! - a broadcast from one guest reaches each other guest exactly once;
//! - every guest pings every other guest and the namespace's kernel; the kernel pings every
//!   guest (replies counted, no duplicates);
//! - four TCP transfers between guests in different groups, each byte-exact at both ends
//!   (stream checksums; smoltcp checks every TCP checksum), while not one frame leaves
//!   through the uplink (the port's TX counter);
//! - every group handed frames over to others.
use guest::netfront::NetfrontLink;
use guest::pktgen::PktGen;
use guest::stack::{BulkReceiver, BulkSender, Stack};
use guest::{FrontConfig, Netfront, TxMeta};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

const GUESTS: [u16; 8] = [71, 72, 73, 74, 75, 76, 77, 78];
const WIRE_IP: [u8; 4] = [10, 7, 0, 254];

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x07, d as u8]
}

fn ip(d: u16) -> [u8; 4] {
    [10, 7, 0, d as u8]
}

fn ip_s(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

type S = Stack<NetfrontLink>;

fn poll_all(stacks: &mut [Option<S>]) {
    for s in stacks.iter_mut().flatten() {
        s.poll();
    }
}

fn port_tx(maddr: &str) -> f64 {
    let (code, body) = http_get(maddr, "/metrics");
    assert_eq!(code, 200);
    sample(&body, "netbackd_port_xstat", &["stat=\"tx_good_packets\""]).unwrap_or(0.0)
}

#[test]
fn four_groups_one_l2_domain() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-fab-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let guests: Vec<(u16, [u8; 6])> = GUESTS.iter().map(|&d| (d, mac(d))).collect();
    let (sim, root, _out) = start_sim_with(&guests, &parent);
    let sock = format!("{root}/xenstored/socket");
    let xs = XenStore::open_at(&sock).unwrap();
    let maddr = free_addr();
    let ifname = format!("nbfab{}", pid % 100_000);
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rfab-{pid}"), &maddr, "")
            .replace("net_ring0", &format!("net_tap0,iface={ifname}"))
            + "[engine]\ngroups = 4\nidle_sleep_us = 200\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    // The wire: the tap's kernel side in a namespace of our own.
    let wire = format!("{}/24", ip_s(WIRE_IP));
    let ns = tap_into_netns(&maddr, &ifname, &format!("nbd-fab-{pid}"), &wire);

    // Eight guests; 72 and 76 with two queues. Least loaded per queue puts them in groups
    // 71:0 72:1,2 73:3 74:0 75:1 76:2,3 77:0 78:1.
    let mut nfs: Vec<Netfront> = GUESTS
        .into_iter()
        .map(|d| {
            let mut fc = FrontConfig::new(d, 0);
            fc.queues = if d == 72 || d == 76 { 2 } else { 1 };
            attach_front(&root, &xs, fc)
        })
        .collect();
    assert_eq!(nfs[1].queues.len(), 2);

    // 1. A broadcast from 71: once to every other guest (on whichever queue), never back.
    let mut g = PktGen {
        src_mac: mac(71),
        dst_mac: [0xff; 6],
        src_ip: ip(71),
        dst_ip: [10, 7, 0, 255],
        sport: 9,
        dport: 9,
        frame_len: 120,
        seq: 0,
    };
    let mut f = Vec::new();
    g.next_frame(&mut f);
    let marker = f.clone();
    nfs[0].send(0, &f, TxMeta::default()).unwrap();
    let mut got = [0usize; 8];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        for (i, nf) in nfs.iter_mut().enumerate() {
            for q in 0..nf.queues.len() {
                got[i] += nf
                    .poll_rx(q)
                    .unwrap()
                    .iter()
                    .filter(|p| p.data == marker)
                    .count();
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        got,
        [0, 1, 1, 1, 1, 1, 1, 1],
        "the broadcast once per other guest"
    );

    // 2. Stacks on the netfronts.
    let mut stacks: Vec<Option<S>> = nfs
        .into_iter()
        .zip(GUESTS)
        .map(|(nf, d)| Some(Stack::new(NetfrontLink::new(nf, 0), mac(d), ip(d), 24)))
        .collect();
    let ping = |stacks: &mut Vec<Option<S>>, i: usize, dst: [u8; 4], n: u16| -> u16 {
        let mut me = stacks[i].take().expect("stack");
        let got = me.ping(dst, n, Duration::from_secs(3), |_| poll_all(stacks));
        stacks[i] = Some(me);
        got
    };
    for (i, from) in GUESTS.into_iter().enumerate() {
        for to in GUESTS.into_iter().filter(|&to| to != from) {
            assert_eq!(ping(&mut stacks, i, ip(to), 1), 1, "{from} -> {to}");
        }
        assert_eq!(ping(&mut stacks, i, WIRE_IP, 3), 3, "{from} -> wire");
    }
    // The kernel pings every guest (its echo requests arrive on any of the tap's queues).
    for d in GUESTS {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "ping", "-c", "5", "-i", "0.2", "-W", "3",
            ])
            .arg(ip_s(ip(d)))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            poll_all(&mut stacks);
        }
        let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
        assert!(
            out.contains("5 packets transmitted, 5 received") && !out.contains("duplicates"),
            "kernel -> {d}: {out}"
        );
    }

    // 3. TCP between groups: 71 (g0) -> 72 (g1/g2), 73 (g3) -> 74 (g0), 75 (g1) -> 76
    //    (g2/g3), 77 (g0) -> 78 (g1); 2 MB each, while nothing goes out of the port.
    let tx0 = port_tx(&maddr);
    let total = 2_000_000u64;
    let mut flows = Vec::new();
    for (k, (a, b)) in [(0usize, 1usize), (2, 3), (4, 5), (6, 7)]
        .into_iter()
        .enumerate()
    {
        let port = 5001 + k as u16;
        let h_rx = stacks[b].as_mut().unwrap().tcp_listen(port);
        let h_tx = stacks[a]
            .as_mut()
            .unwrap()
            .tcp_connect(ip(GUESTS[b]), port, 40000 + k as u16);
        flows.push((
            a,
            b,
            BulkSender::new(h_tx, total, 0x5eed + k as u64),
            BulkReceiver::new(h_rx),
        ));
    }
    let t = Instant::now();
    loop {
        poll_all(&mut stacks);
        let mut done = 0;
        for (a, b, tx, rx) in flows.iter_mut() {
            tx.step(stacks[*a].as_mut().unwrap());
            if rx.step(stacks[*b].as_mut().unwrap()) {
                done += 1;
            }
        }
        if done == flows.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "transfers stuck: {:?}",
            flows.iter().map(|f| f.3.got.bytes).collect::<Vec<_>>()
        );
    }
    for (a, b, tx, rx) in &flows {
        assert_eq!(tx.sent.bytes, total);
        assert_eq!(rx.got, tx.sent, "{} -> {}", GUESTS[*a], GUESTS[*b]);
    }
    let out = port_tx(&maddr) - tx0;
    assert!(
        out <= 4.0,
        "{out} frames left through the uplink during vif-to-vif transfers"
    );

    // 4. Every group handed frames to the others; each vif was given a flow rule in the port
    //    or (net_tap here cannot steer by MAC) left to software handoff.
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    let steer = |r: &str| {
        sample(
            &body,
            "netbackd_port_steering_total",
            &[&format!("result=\"{r}\"")],
        )
        .unwrap_or(0.0)
    };
    eprintln!(
        "steering: installed {}, software {}",
        steer("installed"),
        steer("software")
    );
    assert_eq!(steer("installed") + steer("software"), 8.0, "{body}");
    for gi in 0..4 {
        let g = format!("group=\"{gi}\"");
        let sent = sample(
            &body,
            "netbackd_group_handoffs_total",
            &[&g, "result=\"sent\""],
        );
        assert!(sent.unwrap_or(0.0) > 0.0, "group {gi}: {sent:?}");
        let lost = sample(
            &body,
            "netbackd_group_handoffs_total",
            &[&g, "result=\"ring_full\""],
        );
        assert_eq!(lost, Some(0.0), "group {gi}");
    }

    for s in stacks.iter_mut().flatten() {
        s.link.nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    drop(ns);
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rfab-{pid}")).exists());
}
