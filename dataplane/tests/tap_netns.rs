//! DPDK `net_tap` ports inside network namespaces this test creates, with the kernel's own
//! networking on the far side:
//! 1. the L2 switch forwards between two taps: `ping` and a 50 MB TCP transfer (SHA-256
//!    compared at both ends) cross it;
//! 2. guest-style packets (csum_blank, TCPv4/TCPv6 GSO up to 64 KiB, UDP) are finished in
//!    software by `offload::prepare_guest_tx` and sent into a namespace whose kernel checks
//!    every checksum: its TcpInCsumErrors/UdpInCsumErrors stay 0 while OutRsts/datagrams
//!    count every segment; a deliberately corrupted packet shows the check can fail.
//!
//! Needs root (netns, tap). Traffic stays inside the two namespaces. EAL once per process:
//! one test function.
use dataplane::netif::NETRXF_DATA_VALIDATED;
use dataplane::offload::{guest_rx_csum_flags, prepare_guest_tx, OffloadCounters, SoftGso, TxCaps};
use dataplane::switch::{Decision, EndpointId, EndpointKind, Switch, SwitchConfig};
use dataplane::txparse::Gso;
use pmd::{Eal, Mbuf, Mempool, Port, PortConfig};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A counter from /proc/net/snmp inside a namespace, e.g. ("Tcp", "InCsumErrors").
fn snmp(ns: &str, proto: &str, field: &str) -> u64 {
    let txt = sh(&format!("ip netns exec {ns} cat /proc/net/snmp"));
    let mut lines = txt.lines().filter(|l| l.starts_with(&format!("{proto}:")));
    let names: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let vals: Vec<&str> = lines.next().expect("values").split_whitespace().collect();
    let i = names.iter().position(|n| *n == field).expect("field");
    vals[i].parse().unwrap()
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let s = sh(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/address"
    ));
    let mut m = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// Builds an Ethernet/IP/TCP or UDP frame like a guest's csum_blank packet: the L4
/// checksum field holds garbage (the backend must fill it in).
#[allow(clippy::too_many_arguments)]
fn guest_frame(
    dst: [u8; 6],
    src: [u8; 6],
    v6: bool,
    tcp: bool,
    payload: usize,
    sport: u16,
    dport: u16,
    seq: u32,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    let l4len = if tcp { 20 } else { 8 } + payload;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4len as u16).to_be_bytes());
        f.extend_from_slice(&[if tcp { 6 } else { 17 }, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        f.extend_from_slice(&[0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4len) as u16).to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, if tcp { 6 } else { 17 }, 0, 0]);
        f.extend_from_slice(&[10, 201, 0, 9, 10, 201, 0, 2]);
        // A correct IPv4 header checksum, as a guest's stack writes it.
        let c = ipv4_hdr_cksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    if tcp {
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0xde, 0xad, 0, 0]);
    } else {
        f.extend_from_slice(&(l4len as u16).to_be_bytes());
        f.extend_from_slice(&[0xbe, 0xef]);
    }
    f.extend((0..payload).map(|i| (i * 7 + 3) as u8));
    f
}

/// One's-complement sum over the pseudo-header and the L4 segment of a frame, from RFC 1071
/// and RFCs 793/768/8200 directly (independent of DPDK): 0xFFFF means the L4 checksum (and
/// the IPv4 header checksum, checked too) is valid.
fn l4_sum_valid(f: &[u8]) -> bool {
    fn add(sum: &mut u32, b: &[u8]) {
        for c in b.chunks(2) {
            *sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }
    let mut sum = 0u32;
    let (l4, proto) = if f[12] == 0x86 {
        let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
        add(&mut sum, &f[22..54]);
        add(&mut sum, &(plen as u32).to_be_bytes());
        add(&mut sum, &[0, 0, 0, f[20]]);
        (&f[54..54 + plen], f[20])
    } else {
        if fold({
            let mut s = 0;
            add(&mut s, &f[14..34]);
            s
        }) != 0xffff
        {
            return false;
        }
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        add(&mut sum, &f[26..34]);
        add(&mut sum, &[0, f[23]]);
        add(&mut sum, &((tot - 20) as u16).to_be_bytes());
        (&f[34..14 + tot], f[23])
    };
    debug_assert!(proto == 6 || proto == 17);
    add(&mut sum, l4);
    fold(sum) == 0xffff
}

fn ipv4_hdr_cksum(h: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for (i, c) in h.chunks(2).enumerate() {
        if i != 5 {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A frame as a (chained) mbuf, split into segments of at most `seg` bytes the way the
/// engine fills mbufs from guest slots.
fn to_mbuf(pool: &Mempool, f: &[u8], seg: usize) -> Mbuf {
    let mut chunks = f.chunks(seg);
    let mut head = Mbuf::alloc(pool).unwrap();
    let c = chunks.next().unwrap();
    head.append(c.len() as u16).unwrap().copy_from_slice(c);
    for c in chunks {
        let mut m = Mbuf::alloc(pool).unwrap();
        m.append(c.len() as u16).unwrap().copy_from_slice(c);
        head.chain(m).unwrap();
    }
    head
}

#[test]
fn tap_ports_in_namespaces() {
    let pid = std::process::id();
    let (na, nb) = (format!("nbd-a-{pid}"), format!("nbd-b-{pid}"));
    let (ta, tb) = (
        format!("nbda{}", pid % 100_000),
        format!("nbdb{}", pid % 100_000),
    );
    let prefix = format!("nbd-tap-{pid}");
    let vdev_a = format!("net_tap0,iface={ta}");
    let vdev_b = format!("net_tap1,iface={tb}");
    let eal = Eal::init(&[
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--vdev",
        &vdev_a,
        "--vdev",
        &vdev_b,
        "--log-level",
        "*:error",
    ])
    .expect("EAL with two net_tap ports (needs root and /dev/net/tun)");
    let _ns = Netns(vec![na.clone(), nb.clone()]);
    {
        let pool = Mempool::new("tap_pool", 8191, 256, 2176, -1).unwrap();
        let mut pa = Port::by_name("net_tap0").unwrap();
        let mut pb = Port::by_name("net_tap1").unwrap();
        // net_tap implements checksum offload and TSO (IPv4) in software: it stands in for
        // a NIC with those offloads.
        let hw = TxCaps::from_port(&pb.info().unwrap());
        assert_eq!(
            hw,
            TxCaps {
                ipv4_cksum: true,
                tcp_cksum: true,
                udp_cksum: true,
                tso: false,
                tso6: false
            },
            "net_tap's offloads as netbackd reads them (its TSO refuses full-size segments)"
        );
        let rx_csum = u64::from(pmd::sys::NBD_RX_OFFLOAD_IPV4_CKSUM)
            | u64::from(pmd::sys::NBD_RX_OFFLOAD_TCP_CKSUM)
            | u64::from(pmd::sys::NBD_RX_OFFLOAD_UDP_CKSUM);
        let cfg = PortConfig {
            tx_offloads: TxCaps { tso: true, ..hw }.port_offloads(),
            rx_offloads: rx_csum,
            ..Default::default()
        };
        pa.configure_and_start(&cfg, &pool).unwrap();
        pb.configure_and_start(&cfg, &pool).unwrap();
        sh(&format!("ip netns add {na} && ip netns add {nb}"));
        sh(&format!(
            "ip link set {ta} netns {na} && ip link set {tb} netns {nb}"
        ));
        sh(&format!("ip -n {na} addr add 10.201.0.1/24 dev {ta} && ip -n {na} link set {ta} up && ip -n {na} link set lo up"));
        sh(&format!("ip -n {nb} addr add 10.201.0.2/24 dev {tb} && ip -n {nb} link set {tb} up && ip -n {nb} link set lo up"));
        sh(&format!("ip -n {nb} addr add fd00:77::2/64 dev {tb} nodad"));
        let mac_b = mac_of(&nb, &tb);

        // --- 1. switch between the taps: A is the uplink, B stands in for a vif.
        let stop = Arc::new(AtomicBool::new(false));
        let fwd = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (a, b) = (EndpointId(0), EndpointId(1));
                let mut sw = Switch::new(SwitchConfig::default());
                sw.add_endpoint(a, EndpointKind::Uplink);
                sw.add_endpoint(
                    b,
                    EndpointKind::Vif {
                        mac: mac_b,
                        vlan: None,
                    },
                );
                let ports = [pa, pb];
                let mut rx = Vec::with_capacity(64);
                let mut tx: [Vec<Mbuf>; 2] = [Vec::new(), Vec::new()];
                let mut forwarded = 0u64;
                let mut validated = 0u64;
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    for (i, p) in ports.iter().enumerate() {
                        p.rx_burst(0, &mut rx, 64);
                        let now = t0.elapsed().as_nanos() as u64;
                        for m in rx.drain(..) {
                            if guest_rx_csum_flags(m.ol_flags()) == NETRXF_DATA_VALIDATED {
                                validated += 1;
                            }
                            let from = EndpointId(i as u32);
                            match sw.forward(from, m.data(), now) {
                                Decision::Unicast(to, _) => tx[to.0 as usize].push(m),
                                // Two endpoints: a flood goes to the other one.
                                Decision::Flood { .. } => tx[1 - i].push(m),
                                Decision::Drop(_) => drop(m),
                            }
                        }
                    }
                    for (i, p) in ports.iter().enumerate() {
                        forwarded += p.tx_burst_or_drop(0, &mut tx[i]).0 as u64;
                    }
                }
                (ports, forwarded, validated)
            })
        };
        let ping = sh(&format!(
            "ip netns exec {na} ping -c 5 -i 0.2 -W 2 10.201.0.2"
        ));
        assert!(ping.contains("5 received"), "{ping}");

        // 50 MB over TCP, SHA-256 of the bytes at both ends.
        let recv = Command::new("ip")
            .args(["netns", "exec", &nb, "python3", "-c",
                "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('10.201.0.2',5001));s.listen(1)\nc,_=s.accept();h=hashlib.sha256();n=0\nwhile True:\n  b=c.recv(1<<16)\n  if not b: break\n  h.update(b);n+=len(b)\nprint(n,h.hexdigest())"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let sent = sh(&format!("ip netns exec {na} python3 -c \"\nimport socket,hashlib,random\nr=random.Random(7);h=hashlib.sha256();s=socket.create_connection(('10.201.0.2',5001),timeout=60)\nfor i in range(800):\n  b=r.randbytes(65536);h.update(b);s.sendall(b)\ns.close();print(800*65536,h.hexdigest())\""));
        let got = recv.wait_with_output().unwrap();
        let got = String::from_utf8_lossy(&got.stdout).into_owned();
        assert_eq!(
            sent.trim(),
            got.trim(),
            "50 MB transfer: bytes and SHA-256 at both ends"
        );
        assert!(sent.starts_with("52428800 "));
        stop.store(true, Ordering::Relaxed);
        let ([_pa, pb], forwarded, validated) = fwd.join().unwrap();
        assert!(forwarded > 30_000, "forwarded {forwarded} frames");
        // The kernel's TCP segments arrive with the port's RX checksum verdict, which
        // becomes NETRXF_data_validated toward a guest.
        assert!(
            validated > 20_000,
            "only {validated} frames marked validated"
        );
        eprintln!(
            "switch forwarded {forwarded} frames; transfer {}",
            sent.trim()
        );

        // --- 2. software offload validated by the kernel in namespace B.
        // Static neighbours so B's replies (RSTs) leave without ARP/ND.
        sh(&format!(
            "ip -n {nb} neigh replace 10.201.0.9 lladdr 02:00:00:00:00:09 dev {tb}"
        ));
        sh(&format!(
            "ip -n {nb} neigh replace fd00:77::9 lladdr 02:00:00:00:00:09 dev {tb}"
        ));
        // A UDP socket in B to receive the UDP datagrams (it counts them).
        let udp = Command::new("ip")
            .args(["netns", "exec", &nb, "python3", "-c",
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.201.0.2',6000));s.settimeout(3)\nn=0\ntry:\n  while True: s.recv(65535); n+=1\nexcept Exception: pass\nprint(n)"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let soft = SoftGso::new("t", 1023, -1).unwrap();
        let caps = TxCaps::default(); // a port without offloads: everything in software
        let mut ctr = OffloadCounters::default();
        let src = [2, 0, 0, 0, 0, 9];
        let (tcp_err0, rst0, udp_err0, udp_in0) = (
            snmp(&nb, "Tcp", "InCsumErrors"),
            snmp(&nb, "Tcp", "OutRsts"),
            snmp(&nb, "Udp", "InCsumErrors"),
            snmp(&nb, "Udp", "InDatagrams"),
        );
        let mut out = Vec::new();
        let mut expect_segments = 0u64;
        // TCPv4 GSO 64 KiB (45 segments of 1448), mbuf chain of 2 KiB segments.
        for (v6, payload, mss, csum_blank) in [
            (false, 65_000usize, 1448u16, true),
            (false, 30_000, 1000, false), // GSO without csum_blank: fixed up, counted
            (true, 60_000, 1428, true),
        ] {
            let f = guest_frame(mac_b, src, v6, true, payload, 40000, 9, 1000);
            let m = to_mbuf(&pool, &f, 2048);
            let gso = if v6 {
                Gso::TcpV6 { mss }
            } else {
                Gso::TcpV4 { mss }
            };
            prepare_guest_tx(m, csum_blank, Some(gso), &caps, &soft, &mut out, &mut ctr).unwrap();
            expect_segments += payload.div_ceil(usize::from(mss)) as u64;
        }
        // csum_blank without GSO: TCP and UDP.
        for (tcp, port) in [(true, 9u16), (false, 6000)] {
            let f = guest_frame(mac_b, src, false, tcp, 1000, 40001, port, 5);
            prepare_guest_tx(
                to_mbuf(&pool, &f, 2048),
                true,
                None,
                &caps,
                &soft,
                &mut out,
                &mut ctr,
            )
            .unwrap();
        }
        assert_eq!(ctr.sw_gso_packets, 3);
        assert_eq!(ctr.sw_gso_segments, expect_segments);
        assert_eq!(ctr.gso_checksum_fixup, 1);
        assert_eq!(ctr.sw_checksums, expect_segments + 2);
        // Recomputed independently before the kernel sees them.
        for m in &out {
            assert!(
                l4_sum_valid(&m.to_vec()),
                "bad software checksum in a {}-byte packet",
                m.pkt_len()
            );
        }
        let n = out.len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.is_empty() && Instant::now() < deadline {
            pb.tx_burst(0, &mut out);
        }
        assert!(out.is_empty(), "tap accepted all {n} packets");
        // Negative control: one TCP packet with a wrong checksum must be caught.
        let bad = guest_frame(mac_b, src, false, true, 100, 40002, 9, 7);
        assert!(
            !l4_sum_valid(&bad),
            "the independent check catches a bad checksum"
        );
        let mut bad_out = vec![to_mbuf(&pool, &bad, 2048)];
        pb.tx_burst(0, &mut bad_out);
        std::thread::sleep(Duration::from_millis(500));
        let udp_n: u64 = String::from_utf8_lossy(&udp.wait_with_output().unwrap().stdout)
            .trim()
            .parse()
            .unwrap();
        let v4_segments = 65_000usize.div_ceil(1448) + 30_000usize.div_ceil(1000);
        // Linux counts TCP over IPv4 and IPv6 in one MIB.
        assert_eq!(
            snmp(&nb, "Tcp", "InCsumErrors") - tcp_err0,
            1,
            "only the corrupted packet fails the kernel's check"
        );
        assert_eq!(snmp(&nb, "Udp", "InCsumErrors") - udp_err0, 0);
        assert_eq!(snmp(&nb, "Udp", "InDatagrams") - udp_in0, 1);
        assert_eq!(udp_n, 1);
        // Every good TCP segment (v4 and v6 share OutRsts) was accepted and answered.
        let rsts = snmp(&nb, "Tcp", "OutRsts") - rst0;
        assert_eq!(
            rsts,
            expect_segments + 1,
            "v4 {v4_segments} + v6 + 1 csum-only segment"
        );

        // --- 3. toward a port that offloads: flags, lengths and pseudo-header sums set for
        // the port, which finishes checksums and (v4, forced on here with an MSS net_tap
        // accepts) segmentation itself; IPv6 TSO still in software.
        let forced = TxCaps { tso: true, ..hw };
        let (tcp_err0, rst0, udp_err0) = (
            snmp(&nb, "Tcp", "InCsumErrors"),
            snmp(&nb, "Tcp", "OutRsts"),
            snmp(&nb, "Udp", "InCsumErrors"),
        );
        let mut ctr = OffloadCounters::default();
        let mut out = Vec::new();
        let mut expect = 0u64;
        for (v6, payload, mss) in [(false, 65_000usize, 1400u16), (true, 20_000, 1428)] {
            let f = guest_frame(mac_b, src, v6, true, payload, 41000, 9, 1000);
            let gso = if v6 {
                Gso::TcpV6 { mss }
            } else {
                Gso::TcpV4 { mss }
            };
            prepare_guest_tx(
                to_mbuf(&pool, &f, 2048),
                true,
                Some(gso),
                &forced,
                &soft,
                &mut out,
                &mut ctr,
            )
            .unwrap();
            expect += payload.div_ceil(usize::from(mss)) as u64;
        }
        for tcp in [true, false] {
            let f = guest_frame(
                mac_b,
                src,
                false,
                tcp,
                700,
                41001,
                if tcp { 9 } else { 6001 },
                5,
            );
            prepare_guest_tx(
                to_mbuf(&pool, &f, 2048),
                true,
                None,
                &hw,
                &soft,
                &mut out,
                &mut ctr,
            )
            .unwrap();
        }
        expect += 1; // the TCP csum-only packet
        assert_eq!(
            ctr.hw_offloaded, 3,
            "v4 TSO, TCP csum, UDP csum by the port"
        );
        assert_eq!(ctr.sw_gso_packets, 1, "IPv6 TSO in software");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !out.is_empty() && Instant::now() < deadline {
            pb.tx_burst(0, &mut out);
        }
        assert!(
            out.is_empty(),
            "refused: {:?}",
            out.iter()
                .map(|m| (m.pkt_len(), m.nb_segs(), m.ol_flags(), m.tx_offload()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(snmp(&nb, "Tcp", "InCsumErrors") - tcp_err0, 0);
        assert_eq!(snmp(&nb, "Udp", "InCsumErrors") - udp_err0, 0);
        assert_eq!(
            snmp(&nb, "Tcp", "OutRsts") - rst0,
            expect,
            "every segment accepted"
        );
        drop(pb);
        drop(pool);
        assert_eq!(soft.in_use(), 0, "GSO pools balanced");
    }
    drop(eal);
}
