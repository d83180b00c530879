//! Port faults (issue 14): the uplink's link going down and up under traffic, against
//! `netbackd run` on the simulated host with a real DPDK `net_tap` port whose kernel side is
//! in a namespace this test creates.
//! - link up: a guest's 2000 frames to the namespace's kernel arrive there;
//! - `ip link set down` in the namespace: the guest keeps sending 2000 frames; every one is
//!   answered on its TX ring (the ring never stalls: each burst's responses come back
//!   within a bound), none reaches the kernel, and the daemon counts each one the port
//!   refused (`netbackd_group_port_tx_full_total`; the device's own TX errors too);
//! - link up again: the next 2000 frames arrive, and the kernel's pings to the guest are
//!   answered, on the same vif, which never left Connected.
//!
//! And the port refusing frames for seconds (`uplink_refusing_for_seconds`): a `net_memif`
//! port whose peer, a `dpdk-testpmd` memif client in rxonly (the pktgen harness's
//! `MemifPeer`), is stopped (SIGSTOP) for two
//! seconds while the guest keeps sending: its TX ring keeps being answered, what the full
//! port refuses is counted, and once the peer runs again every frame gets through. At the
//! end testpmd's own RX count equals what the guest sent minus what netbackd counted as
//! refused.
use guest::netfront::NetfrontLink;
use guest::pktgen::PktGen;
use guest::stack::Stack;
use guest::{FrontConfig, Netfront, TxMeta};
use netbackd_benches::baseline::{memif_server_devargs, MemifMode, MemifPeer};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

fn mac(d: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x00, 0x0a, d as u8]
}

/// The namespace's tap counters: (rx_packets, rx_dropped).
fn kernel_rx(ns: &str, ifname: &str) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", ifname])
        .output()
        .unwrap();
    let js = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| -> u64 {
        let at = js.find("\"rx\":").expect("rx stats");
        let rest = &js[at..];
        let i = rest.find(&format!("\"{k}\":")).expect(k) + k.len() + 3;
        rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (field("packets"), field("dropped"))
}

/// Sends `n` frames, `burst` at a time; returns the longest wait for a burst's TX
/// responses (the guest sees its ring drain).
fn send(nf: &mut Netfront, g: &mut PktGen, n: u64, burst: u64) -> Duration {
    let mut f = Vec::new();
    let mut worst = Duration::ZERO;
    let mut sent = 0;
    while sent < n {
        let k = burst.min(n - sent);
        for _ in 0..k {
            g.next_frame(&mut f);
            nf.send(0, &f, TxMeta::default()).unwrap();
        }
        sent += k;
        // Every request answered: the ring is empty again (`send` reaps as it goes).
        let t = Instant::now();
        loop {
            nf.reap_tx(0).unwrap();
            let pending = 256 - nf.queues[0].tx.free_requests();
            if pending == 0 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "guest TX ring stalled: {pending} requests unanswered"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    worst
}

#[test]
fn uplink_link_down_and_up() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-pf-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(81, mac(81))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let ifname = format!("nbpf{}", pid % 100_000);
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rpf-{pid}"), &maddr, "")
            .replace("net_ring0", &format!("net_tap0,iface={ifname}"))
            + "[engine]\nidle_sleep_us = 200\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let ns = tap_into_netns(&maddr, &ifname, &format!("nbd-pf-{pid}"), "10.10.0.254/24");
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-j", "link", "show", &ifname])
        .output()
        .unwrap();
    let js = String::from_utf8_lossy(&out.stdout).to_string();
    let at = js.find("\"address\":\"").expect("tap MAC") + 11;
    let kmac: Vec<u8> = js[at..at + 17]
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();

    let mut nf = attach_front(&root, &xs, FrontConfig::new(81, 0));
    let mut g = PktGen {
        src_mac: mac(81),
        dst_mac: kmac.try_into().unwrap(),
        src_ip: [10, 10, 0, 81],
        dst_ip: [10, 10, 0, 254],
        sport: 9,
        dport: 9,
        frame_len: 200,
        seq: 0,
    };
    let drops = |maddr: &str| -> (f64, f64) {
        let (code, body) = http_get(maddr, "/metrics");
        assert_eq!(code, 200);
        let errors = sample(
            &body,
            "netbackd_port_drops_total",
            &["reason=\"tx_errors\""],
        );
        let full = sample(&body, "netbackd_group_port_tx_full_total", &[]);
        (errors.unwrap_or(0.0), full.unwrap_or(0.0))
    };

    // 1. Link up: the frames arrive.
    let (k0, _) = kernel_rx(&ns.0, &ifname);
    let w_up = send(&mut nf, &mut g, 2000, 50);
    std::thread::sleep(Duration::from_millis(300));
    let (k1, _) = kernel_rx(&ns.0, &ifname);
    assert!(
        k1 - k0 >= 1990,
        "kernel got {} of 2000 with the link up",
        k1 - k0
    );
    let d1 = drops(&maddr);

    // 2. Link down: the guest's ring keeps draining, nothing arrives, every frame counted.
    sh(&["ip", "-n", &ns.0, "link", "set", &ifname, "down"]);
    std::thread::sleep(Duration::from_millis(200));
    let (k2, _) = kernel_rx(&ns.0, &ifname);
    let w_down = send(&mut nf, &mut g, 2000, 50);
    std::thread::sleep(Duration::from_millis(300));
    let (k3, _) = kernel_rx(&ns.0, &ifname);
    let d2 = drops(&maddr);
    assert_eq!(k3, k2, "nothing reaches a kernel whose link is down");
    // The port refuses them (netbackd counts what a TX burst did not take) and the tap
    // device counts its failed writes.
    assert_eq!(d2.1 - d1.1, 2000.0, "frames the port refused while down");
    assert!(
        d2.0 - d1.0 >= 2000.0,
        "the device's TX errors: {}",
        d2.0 - d1.0
    );
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    let tx = sample(&body, "netbackd_vif_tx_packets_total", &["domid=\"81\""]).unwrap();
    assert_eq!(tx, 4000.0, "every guest frame was taken from its ring");

    // 3. Link up again: frames arrive, the kernel's pings are answered by the same vif.
    sh(&["ip", "-n", &ns.0, "link", "set", &ifname, "up"]);
    std::thread::sleep(Duration::from_millis(500));
    let w_again = send(&mut nf, &mut g, 2000, 50);
    std::thread::sleep(Duration::from_millis(300));
    let (k4, _) = kernel_rx(&ns.0, &ifname);
    assert!(
        k4 - k3 >= 1990,
        "kernel got {} of 2000 after the link came back",
        k4 - k3
    );
    let mut st = Stack::new(NetfrontLink::new(nf, 0), mac(81), [10, 10, 0, 81], 24);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.10.0.81",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        st.poll();
    }
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(out.contains("5 packets transmitted, 5 received"), "{out}");
    assert_eq!(
        xs.read(xen::Tx::NONE, "/local/domain/0/backend/vif/81/0/state")
            .unwrap()
            .as_deref(),
        Some("4")
    );
    eprintln!(
        "link down/up: port refused {} frames while down (device TX errors {}); longest \
         wait for a burst's TX responses: up {w_up:?}, down {w_down:?}, up again {w_again:?}",
        d2.1 - d1.1,
        d2.0 - d1.0
    );

    st.link.nf.close().unwrap();
    assert!(term_and_wait(run).success());
    drop(ns);
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rpf-{pid}")).exists());
}

#[test]
fn uplink_refusing_for_seconds() {
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-pfull-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(82, mac(82))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let socket = parent.join("memif.sock");
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rpfull-{pid}"), &maddr, "")
            .replace("net_ring0", &memif_server_devargs(&socket, 0))
            + "[engine]\nidle_sleep_us = 200\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    // testpmd as the memif client in rxonly on CPU 1 (it waits for the daemon's socket).
    let peer = MemifPeer::start(MemifMode::Rxonly, &socket, 64, [0; 6], 1, "pfull")
        .expect("dpdk-testpmd memif peer");
    let stop_cont = |sig: i32| {
        // SAFETY: signalling our own child (testpmd).
        unsafe { libc::kill(peer.pid() as i32, sig) };
    };
    let mut nf = attach_front(&root, &xs, FrontConfig::new(82, 0));
    let mut g = PktGen {
        src_mac: mac(82),
        dst_mac: [0x02, 0, 0, 0, 0, 0x99],
        src_ip: [10, 11, 0, 82],
        dst_ip: [10, 11, 0, 99],
        sport: 9,
        dport: 9,
        frame_len: 200,
        seq: 0,
    };
    let metrics = |maddr: &str| -> (f64, f64) {
        let (code, body) = http_get(maddr, "/metrics");
        assert_eq!(code, 200);
        (
            sample(&body, "netbackd_group_port_tx_full_total", &[]).unwrap_or(0.0),
            sample(&body, "netbackd_vif_tx_packets_total", &["domid=\"82\""]).unwrap_or(0.0),
        )
    };
    // The memif link comes up once the client connected.
    let mut sent = 0u64;
    let t = Instant::now();
    loop {
        let before = metrics(&maddr).0;
        sent += 50;
        send(&mut nf, &mut g, 50, 50);
        std::thread::sleep(Duration::from_millis(100));
        if metrics(&maddr).0 == before {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "memif link never took frames"
        );
    }

    // 1. The peer reads: nothing refused.
    let f0 = metrics(&maddr).0;
    let w_up = send(&mut nf, &mut g, 2000, 50);
    sent += 2000;
    std::thread::sleep(Duration::from_millis(300));
    let f1 = metrics(&maddr).0;
    assert_eq!(f1, f0, "refused while the peer reads");

    // 2. The peer stopped for 2 s: the ring fills, the port refuses, the guest's TX ring
    //    keeps being answered (each burst's responses within the bound `send` checks).
    stop_cont(libc::SIGSTOP);
    let t = Instant::now();
    let mut w_full = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(2) {
        w_full = w_full.max(send(&mut nf, &mut g, 500, 50));
        sent += 500;
    }
    let f2 = metrics(&maddr).0;
    let refused = f2 - f1;
    assert!(
        refused > 0.0,
        "a stopped peer's full ring refused nothing (sent {sent})"
    );
    assert!(
        w_full < Duration::from_secs(1),
        "guest TX responses waited {w_full:?} behind a full port"
    );

    // 3. The peer runs again: nothing more refused.
    stop_cont(libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let w_again = send(&mut nf, &mut g, 2000, 50);
    sent += 2000;
    std::thread::sleep(Duration::from_millis(500));
    let (f3, tx) = metrics(&maddr);
    assert_eq!(f3, f2, "refused after the peer came back");
    assert_eq!(tx, sent as f64, "every guest frame taken from its ring");

    // Both ends agree: what testpmd received is what the port did not refuse.
    let got = peer.stop().expect("testpmd's totals").rx_packets;
    eprintln!(
        "port full for 2 s: guest sent {sent}, port refused {refused} (counted), testpmd \
         received {got}; longest wait for a burst's TX responses: peer up {w_up:?}, \
         stopped {w_full:?}, up again {w_again:?}"
    );
    assert_eq!(
        got as f64,
        tx - f3,
        "testpmd's RX vs netbackd's sent minus refused"
    );
    assert_eq!(
        xs.read(xen::Tx::NONE, "/local/domain/0/backend/vif/82/0/state")
            .unwrap()
            .as_deref(),
        Some("4")
    );
    nf.close().unwrap();
    assert!(term_and_wait(run).success());
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rpfull-{pid}")).exists());
}
