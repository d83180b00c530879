//! `[[port]] mtu` against `netbackd run` on the simulated host.
//! - `net_ring0` at MTU 9000 with `eal.mbuf_data_room = 2176` (2 KiB mbufs, as RX scatter
//!   gives): a guest's 8000-byte frames (two TX slots) go out through the port as mbuf
//!   chains, come back (net_ring loops TX to RX) and reach the guest again intact (two RX
//!   slots); a guest whose netfront did not negotiate scatter-gather gets
//!   none of them (each drop counted per vif) but small frames still, and neither does a
//!   guest whose vif has no `mtu` key (1500; 51's has `mtu = 9000` as libxl writes it);
//!   the port counts no errors.
//! - `net_tap` at MTU 9000: DPDK 22.11's tap reports 1522-byte frames at most, so the
//!   daemon refuses to start, naming `port[0]` and the limit;
//! - `net_ring0` at the default 1500: 8000-byte frames toward the wire are dropped, counted
//!   (`netbackd_port_drops_total{reason="tx_too_big"}`), smaller ones pass.
//! - a kernel at MTU 9000 (a namespace's veth, the other end a `net_pcap` port): 8000-byte
//!   pings and TCP both ways with guests at MTU 9000 (see `kernel_at_mtu_9000_over_net_pcap`).
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
        sim_config(&root, &format!("nbd-rjum-{pid}-{run}"), &maddr, "")
            .replace(
                "devargs = \"net_ring0\"",
                &format!("devargs = \"{devargs}\"\nmtu = 9000"),
            )
            .replace("[eal]\n", "[eal]\nmbuf_data_room = 2176\n")
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
    // What the first daemon still delivered goes first (drained until quiet).
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(300) {
        for nf in &mut nfs {
            if !nf.poll_rx(0).unwrap().is_empty() {
                quiet = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
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

/// Receives one TCP connection in the namespace and prints `bytes fnv1a64` of what came.
const RECEIVER: &str = r#"
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(1)
print("listening", flush=True)
c, _ = ls.accept()
h, n = 0xcbf29ce484222325, 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xffffffffffffffff
c.close()
print(n, h, flush=True)
"#;

/// Connects to a guest and sends `n` bytes whose byte i is `(i * 131 + (i >> 8)) & 255`.
const SENDER: &str = r#"
import socket, sys
data = bytes(((i * 131 + (i >> 8)) & 255) for i in range(int(sys.argv[3])))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(data); s.shutdown(socket.SHUT_WR)
while s.recv(65536): pass
s.close()
"#;

/// MTU 9000 end to end with a kernel: `net_pcap` on one end of a veth pair whose other end
/// is in a namespace at MTU 9000 (DPDK 22.11's `net_tap` reports 1522-byte frames at most,
/// see above). The pool's data room follows the MTU (9216 bytes): each frame one mbuf.
/// - the kernel's 8000-byte pings reach guest 91 (MTU 9000, smoltcp) and come back;
/// - a TCP transfer each way at MTU 9000, byte-exact (stream sums at both ends; smoltcp and
///   the kernel check every TCP checksum; toward the guest GRO coalesces the segments);
/// - guest 92 (no scatter-gather): 8000-byte pings get no answer, each counted as a too_big
///   drop for its vif; 1000-byte pings are answered;
/// - the namespace's veth and the port count no errors.
#[test]
fn kernel_at_mtu_9000_over_net_pcap() {
    use guest::netfront::NetfrontLink;
    use guest::stack::{BulkReceiver, BulkSender, Stack, StreamSum};
    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-jumbo9k-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(&[(91, mac(91)), (92, mac(92))], &parent);
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let (va, vb) = (
        format!("nbjv{}a", pid % 100_000),
        format!("nbjv{}b", pid % 100_000),
    );
    let ns = Netns(format!("nbd-j9k-{pid}"));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &ns.0,
    ]);
    sh(&["ip", "link", "set", &va, "mtu", "9000", "up"]);
    sh(&["ip", "-n", &ns.0, "link", "set", &vb, "mtu", "9000", "up"]);
    sh(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "10.9.0.254/24",
        "dev",
        &vb,
    ]);
    // A veth leaves TCP checksums to the receiver and marks what it receives as checked:
    // with both off, the kernel writes real checksums (what the pcap port captures) and
    // checks every one it receives.
    sh(&[
        "ip", "netns", "exec", &ns.0, "ethtool", "-K", &vb, "tx", "off", "rx", "off",
    ]);
    let cfg = parent.join("netbackd.toml");
    let devargs = format!("net_pcap0,rx_iface_in={va},tx_iface={va}");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rj9k-{pid}"), &maddr, "").replace(
            "devargs = \"net_ring0\"",
            &format!("devargs = \"{devargs}\"\nmtu = 9000"),
        ) + "[engine]\nidle_sleep_us = 200\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    for d in [91, 92] {
        xs.write(
            xen::Tx::NONE,
            &format!("/local/domain/0/backend/vif/{d}/0/mtu"),
            "9000",
        )
        .unwrap();
    }
    let mut fc = FrontConfig::new(92, 0);
    fc.sg = false;
    let ip = |d: u8| [10u8, 9, 0, d];
    let mut stacks: Vec<Stack<NetfrontLink>> = [FrontConfig::new(91, 0), fc]
        .into_iter()
        .enumerate()
        .map(|(k, fc)| {
            let d = 91 + k as u16;
            let nf = attach_front(&root, &xs, fc);
            let mtu = if k == 0 { 9000 } else { 1500 };
            Stack::with_mtu(NetfrontLink::new(nf, 0), mac(d), ip(d as u8), 24, mtu)
        })
        .collect();
    let poll = |stacks: &mut Vec<Stack<NetfrontLink>>| {
        for s in stacks.iter_mut() {
            s.poll();
        }
    };
    let ping = |stacks: &mut Vec<Stack<NetfrontLink>>, d: u8, size: u32| -> String {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s",
            ])
            .arg(size.to_string())
            .arg(format!("10.9.0.{d}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            poll(stacks);
        }
        std::io::read_to_string(child.stdout.take().unwrap()).unwrap()
    };

    // 1. 8000-byte pings to 91 and back.
    let out = ping(&mut stacks, 91, 8000);
    assert!(out.contains("5 packets transmitted, 5 received"), "{out}");
    // 2. No scatter-gather: 8000 bytes is over a page, dropped and counted; 1000 passes.
    let out = ping(&mut stacks, 92, 8000);
    assert!(out.contains(", 0 received"), "{out}");
    let out = ping(&mut stacks, 92, 1000);
    assert!(out.contains("5 packets transmitted, 5 received"), "{out}");
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    let too_big = sample(
        &body,
        "netbackd_vif_drops_total",
        &["domid=\"92\"", "reason=\"too_big\""],
    )
    .unwrap_or(0.0);
    assert!(too_big >= 5.0, "92's too_big drops: {too_big}");

    // 3. Kernel -> 91: 3 MB.
    let total = 3_000_000usize;
    let h = stacks[0].tcp_listen(5001);
    let mut rx = BulkReceiver::new(h);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "python3",
            "-c",
            SENDER,
            "10.9.0.91",
            "5001",
        ])
        .arg(total.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !(rx.step(&mut stacks[0]) && child.try_wait().unwrap().is_some()) {
        poll(&mut stacks);
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "kernel -> 91 stuck at {}",
            rx.got.bytes
        );
    }
    assert!(child.wait().unwrap().success());
    let mut want = StreamSum::default();
    want.update(
        &(0..total)
            .map(|i| ((i * 131 + (i >> 8)) & 255) as u8)
            .collect::<Vec<u8>>(),
    );
    assert_eq!(rx.got, want, "kernel -> 91 byte-exact");
    let biggest = stacks[0].link.rx_max_frame;
    assert!(
        biggest > 1514,
        "jumbo frames reached 91 (largest {biggest})"
    );

    // 4. 91 -> kernel: 3 MB.
    let mut recv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "python3",
            "-c",
            RECEIVER,
            "10.9.0.254",
            "5002",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(recv.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let h = stacks[0].tcp_connect([10, 9, 0, 254], 5002, 40001);
    let mut tx = BulkSender::new(h, total as u64, 0x9000);
    let t = Instant::now();
    while !(tx.step(&mut stacks[0]) && recv.try_wait().unwrap().is_some()) {
        poll(&mut stacks);
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "91 -> kernel stuck at {}",
            tx.sent.bytes
        );
    }
    let got = lines.next().unwrap().unwrap();
    assert_eq!(
        got,
        format!("{} {}", tx.sent.bytes, tx.sent.hash),
        "91 -> kernel byte-exact"
    );
    assert_eq!(tx.sent.bytes, total as u64);

    // 5. Clean counters: the namespace's veth, the port.
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-s", "-j", "link", "show", &vb])
        .output()
        .unwrap();
    let js = String::from_utf8_lossy(&out.stdout).to_string();
    for (i, _) in js.match_indices("\"errors\":") {
        let v: String = js[i + 9..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        assert_eq!(v, "0", "namespace veth errors: {js}");
    }
    let (code, body) = http_get(&maddr, "/metrics");
    assert_eq!(code, 200);
    for reason in ["rx_errors", "tx_errors", "tx_too_big"] {
        let r = format!("reason=\"{reason}\"");
        assert_eq!(
            sample(&body, "netbackd_port_drops_total", &[&r]),
            Some(0.0),
            "{reason}"
        );
    }
    eprintln!(
        "MTU 9000 over net_pcap: pings ok, TCP 3 MB each way byte-exact, 91's largest frame {biggest} B, 92 too_big {too_big}"
    );

    for s in stacks.iter_mut() {
        s.link.nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    drop(ns);
    let _ = Command::new("ip").args(["link", "del", &va]).status();
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rj9k-{pid}")).exists());
}
