//! The control ring against `netbackd run` (two groups) on the simulated host: a guest
//! with four queues makes a control ring, as Windows PV drivers do, and sets Toeplitz
//! hashing with its own key and mapping table. Every frame another guest sends it must
//! then arrive on the queue the guest's own Toeplitz computation predicts (computed here,
//! independently of netbackd's), carrying that hash in a hash extra; before, the default
//! symmetric hash keeps each flow on one queue and sends no hash. Malformed control
//! requests are answered with Linux's status codes and change nothing.
use guest::{FrontConfig, Netfront, TxMeta};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use xen::XenStore;

mod common;
use common::*;

/// The key of Microsoft's RSS verification suite.
const MS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Toeplitz over `input` with `key`, bit by bit as the RSS specification defines it.
fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let key_bit = |i: usize| -> u32 {
        if i < 320 {
            u32::from((key[i / 8] >> (7 - i % 8)) & 1)
        } else {
            0
        }
    };
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut hash = 0u32;
    for (i, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                hash ^= window;
            }
            window = (window << 1) | key_bit(32 + i * 8 + b);
        }
    }
    hash
}

const TCP: u8 = 6;
const UDP: u8 = 17;
/// Hash types (bit numbers) and their flags.
const TYPE_IPV4: u8 = 0;
const TYPE_IPV4_TCP: u8 = 1;
const FLAG_IPV4: u32 = 1 << TYPE_IPV4;
const FLAG_IPV4_TCP: u32 = 1 << TYPE_IPV4_TCP;

/// One IPv4 frame from guest 91 to guest 92 carrying `seq`.
struct Probe {
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
}

impl Probe {
    fn frame(&self, seq: u32) -> Vec<u8> {
        self.frame_with(seq, 0)
    }

    /// The frame with `pad` more bytes of payload before the sequence number.
    fn frame_with(&self, seq: u32, pad: usize) -> Vec<u8> {
        let l4 = if self.proto == TCP { 20 } else { 8 };
        let total = 20 + l4 + pad + 4;
        let mut f = Vec::with_capacity(14 + total);
        f.extend_from_slice(&[0x00, 0x16, 0x3e, 0x00, 0x09, 0x02]);
        f.extend_from_slice(&[0x00, 0x16, 0x3e, 0x00, 0x09, 0x01]);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src);
        ip[16..20].copy_from_slice(&self.dst);
        let sum = ip
            .chunks(2)
            .fold(0u32, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])));
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == TCP {
            f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            f.extend_from_slice(&((8 + pad + 4) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend(std::iter::repeat_n(0x5a, pad));
        f.extend_from_slice(&seq.to_be_bytes());
        f
    }

    /// (hash type, value) the guest expects for this frame with `flags` enabled.
    fn expected(&self, key: &[u8; 40], flags: u32) -> Option<(u8, u32)> {
        let mut input = Vec::new();
        input.extend_from_slice(&self.src);
        input.extend_from_slice(&self.dst);
        if self.proto == TCP && flags & FLAG_IPV4_TCP != 0 {
            input.extend_from_slice(&self.sport.to_be_bytes());
            input.extend_from_slice(&self.dport.to_be_bytes());
            return Some((TYPE_IPV4_TCP, toeplitz(key, &input)));
        }
        (flags & FLAG_IPV4 != 0).then(|| (TYPE_IPV4, toeplitz(key, &input)))
    }
}

/// 64 TCP flows (varying source port) and 32 UDP ones (varying source address).
fn probes() -> Vec<Probe> {
    let mut v: Vec<Probe> = (0..64)
        .map(|i| Probe {
            proto: TCP,
            src: [10, 0, 9, 1],
            dst: [10, 0, 9, 2],
            sport: 20000 + i * 7,
            dport: 80,
        })
        .collect();
    v.extend((0..32).map(|i| Probe {
        proto: UDP,
        src: [10, 1, i as u8, 1],
        dst: [10, 0, 9, 2],
        sport: 5000,
        dport: 5001,
    }));
    v
}

/// What arrived at guest 92: probe index -> (queue, hash extra).
type Arrivals = HashMap<usize, (usize, Option<(u8, u32)>)>;

/// Sends every probe twice from 91 and collects them at 92 (by the sequence number in
/// their last four bytes); every one must arrive once.
fn send_all(tx: &mut Netfront, rx: &mut Netfront, probes: &[Probe]) -> Vec<Arrivals> {
    let mut rounds = vec![Arrivals::new(), Arrivals::new()];
    let total = 2 * probes.len();
    let mut seen = 0;
    let mut sent = 0;
    let t = Instant::now();
    while seen < total {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{seen} of {total} probes arrived"
        );
        while sent < total {
            let f = probes[sent % probes.len()].frame(sent as u32);
            if tx.send(0, &f, TxMeta::default()).is_err() {
                break;
            }
            sent += 1;
        }
        for q in 0..rx.queues.len() {
            for p in rx.poll_rx(q).unwrap() {
                let n = p.data.len();
                let seq = u32::from_be_bytes(p.data[n - 4..].try_into().unwrap()) as usize;
                assert!(seq < total, "unknown frame {seq}");
                let prev = rounds[seq / probes.len()].insert(seq % probes.len(), (q, p.hash));
                assert!(prev.is_none(), "probe {seq} arrived twice");
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    rounds
}

/// Every probe arrived on the queue the guest's mapping names for its own Toeplitz hash,
/// with that hash (type and value) in the hash extra.
fn assert_steered(got: &[Arrivals], probes: &[Probe], key: &[u8; 40], flags: u32, map: &[u32]) {
    for round in got {
        for (i, p) in probes.iter().enumerate() {
            let want = p.expected(key, flags);
            let queue = match want {
                Some((_, h)) => map[h as usize % map.len()] as usize,
                None => map[0] as usize,
            };
            assert_eq!(round[&i], (queue, want), "probe {i}");
        }
    }
}

#[test]
fn guest_hash_configuration_steers_its_queues() {
    // The test's own Toeplitz against the suite's published value (66.9.149.187:2794 ->
    // 161.142.100.80:1766).
    let mut v = vec![66, 9, 149, 187, 161, 142, 100, 80];
    v.extend_from_slice(&2794u16.to_be_bytes());
    v.extend_from_slice(&1766u16.to_be_bytes());
    assert_eq!(toeplitz(&MS_KEY, &v), 0x51cc_c178);

    let pid = std::process::id();
    let parent = std::env::temp_dir().join(format!("nbd-ctrl-{pid}"));
    std::fs::create_dir_all(&parent).unwrap();
    let (sim, root, _out) = start_sim_with(
        &[
            (91, [0x00, 0x16, 0x3e, 0x00, 0x09, 0x01]),
            (92, [0x00, 0x16, 0x3e, 0x00, 0x09, 0x02]),
        ],
        &parent,
    );
    let xs = XenStore::open_at(&format!("{root}/xenstored/socket")).unwrap();
    let maddr = free_addr();
    let cfg = parent.join("netbackd.toml");
    std::fs::write(
        &cfg,
        sim_config(&root, &format!("nbd-rctl-{pid}"), &maddr, "")
            + "[engine]\ngroups = 2\nidle_sleep_us = 0\n",
    )
    .unwrap();
    let run = spawn_run(&cfg);
    let be = |d: u16| format!("/local/domain/0/backend/vif/{d}/0");
    let mut nfs = Vec::new();
    for (d, queues, ctrl_ring) in [(91u16, 1, false), (92, 4, true)] {
        let mut fc = FrontConfig::new(d, 0);
        fc.queues = queues;
        fc.ctrl_ring = ctrl_ring;
        let nf = attach_front(&root, &xs, fc);
        assert!(
            nf.features.ctrl_ring,
            "the backend offers feature-ctrl-ring"
        );
        nfs.push(nf);
    }
    let (a, b) = nfs.split_at_mut(1);
    let (tx, rx) = (&mut a[0], &mut b[0]);
    assert!(rx.has_ctrl_ring());
    assert_eq!(rx.queues.len(), 4);
    let probes = probes();

    // 1. No hash configured: the default symmetric hash keeps a flow on one queue, spreads
    //    flows over the queues, and reports nothing.
    let got = send_all(tx, rx, &probes);
    let mut used = BTreeSet::new();
    for i in 0..probes.len() {
        let (q0, h0) = got[0][&i];
        assert_eq!(got[1][&i], (q0, h0), "probe {i}: one flow, one queue");
        assert_eq!(h0, None, "no hash extra without a configured hash");
        used.insert(q0);
    }
    assert!(used.len() >= 3, "flows spread over queues {used:?}");

    // 2. The guest sets Toeplitz with its key, TCP 4-tuple and IPv4 2-tuple types and a
    //    16-entry table that sends nothing to queue 3.
    let map: Vec<u32> = [2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 1].to_vec();
    let flags = FLAG_IPV4 | FLAG_IPV4_TCP;
    rx.set_toeplitz(&MS_KEY, flags, &map).unwrap();
    // The groups take the new configuration between two iterations.
    std::thread::sleep(Duration::from_millis(100));
    let got = send_all(tx, rx, &probes);
    assert_steered(&got, &probes, &MS_KEY, flags, &map);
    let queues: BTreeSet<usize> = got[0].values().map(|v| v.0).collect();
    assert_eq!(
        queues,
        BTreeSet::from([0, 1, 2]),
        "the table's queues, no other"
    );
    // A TCP GSO frame (6 KB, MSS 1000) is segmented on the way (the port here has no
    // TSO, so guest TX finishes it); every segment carries the flow's hash, on its queue.
    let p = &probes[5];
    let want = p.expected(&MS_KEY, flags);
    let meta = TxMeta {
        csum_blank: true,
        gso: Some((1000, XEN_NETIF_GSO_TYPE_TCPV4)),
        ..Default::default()
    };
    tx.send(0, &p.frame_with(9999, 6000), meta).unwrap();
    let queue = map[want.unwrap().1 as usize % map.len()] as usize;
    let t0 = Instant::now();
    let mut segs = Vec::new();
    while segs
        .iter()
        .map(|s: &guest::RxPacket| s.data.len() - 54)
        .sum::<usize>()
        < 6004
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{} segments",
            segs.len()
        );
        for q in 0..4 {
            for s in rx.poll_rx(q).unwrap() {
                assert_eq!((q, s.hash), (queue, want), "segment on its flow's queue");
                segs.push(s);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(segs.len(), 7);

    // 3. Malformed requests: Linux's status codes, and the configuration stays as it was.
    use dataplane::netif::*;
    let t = Duration::from_secs(5);
    let bad_entries: Vec<u8> = [0u32, 4].iter().flat_map(|e| e.to_le_bytes()).collect();
    let entries_ref = rx.grant_data(&bad_entries).unwrap();
    let long_key_ref = rx.grant_data(&[0xaa; 64]).unwrap();
    let cases: [(&str, u16, [u32; 3], u32); 11] = [
        (
            "unknown type",
            99,
            [0; 3],
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
        ),
        (
            "invalid type",
            XEN_NETIF_CTRL_TYPE_INVALID,
            [0; 3],
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
        ),
        (
            "gref mapping",
            XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
            [1, 2, 3],
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
        ),
        (
            "unknown algorithm",
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
            [7, 0, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "unknown hash types",
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
            [0x8000_0000, 0, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "key longer than 40",
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            [long_key_ref, 41, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "key behind a gref not granted",
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
            [999_999, 40, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "table larger than 128",
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
            [129, 0, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "entry naming queue 4 of 4",
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            [entries_ref, 2, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "entries beyond the table",
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            [entries_ref, 2, 15],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
        (
            "entries behind a gref not granted",
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            [999_999, 1, 0],
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        ),
    ];
    for (what, ty, data, want) in cases {
        let (status, _) = rx.ctrl_request(ty, data, t).unwrap();
        assert_eq!(status, want, "{what}");
    }
    // The queries answer as Linux does: the hash types supported (all four), the
    // largest table.
    assert_eq!(
        rx.ctrl_request(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0; 3], t)
            .unwrap(),
        (XEN_NETIF_CTRL_STATUS_SUCCESS, 0xf)
    );
    assert_eq!(
        rx.ctrl_request(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, [0; 3], t)
            .unwrap(),
        (XEN_NETIF_CTRL_STATUS_SUCCESS, 128)
    );
    std::thread::sleep(Duration::from_millis(100));
    let got = send_all(tx, rx, &probes);
    assert_steered(&got, &probes, &MS_KEY, flags, &map);

    // 4. Hashing off again (algorithm NONE): back to the default, no hash extra.
    let (status, _) = rx
        .ctrl_request(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [0; 3], t)
        .unwrap();
    assert_eq!(status, XEN_NETIF_CTRL_STATUS_SUCCESS);
    std::thread::sleep(Duration::from_millis(100));
    let got = send_all(tx, rx, &probes);
    assert!(got.iter().all(|r| r.values().all(|v| v.1.is_none())));
    assert_eq!(
        xs.read(xen::Tx::NONE, &format!("{}/state", be(92)))
            .unwrap()
            .as_deref(),
        Some("4"),
        "the vif stayed connected through every malformed request"
    );

    // 5. A control ring whose producer index is impossible (far beyond a ring ahead): the
    //    vif is closed as one that broke the protocol, with an `error` node saying so;
    //    the other vif keeps working.
    let (a, b) = nfs.split_at_mut(1);
    let (tx, rx) = (&mut a[0], &mut b[0]);
    assert!(rx.poke_ctrl_req_prod(0x8000_0000));
    wait_state(&xs, &format!("{}/state", be(92)), "6", 5);
    let err = xs
        .read(xen::Tx::NONE, &format!("{}/error", be(92)))
        .unwrap()
        .unwrap_or_default();
    assert!(
        err.starts_with("frontend broke the netif protocol: control ring:"),
        "{err}"
    );
    assert_eq!(
        xs.read(xen::Tx::NONE, &format!("{}/state", be(91)))
            .unwrap()
            .as_deref(),
        Some("4")
    );
    let mut sink = guest::pktgen::Sink::default();
    let mut g = guest::pktgen::PktGen {
        src_mac: [0x00, 0x16, 0x3e, 0x00, 0x09, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0, 0x91],
        src_ip: [10, 0, 9, 1],
        dst_ip: [10, 0, 9, 200],
        sport: 1,
        dport: 1,
        frame_len: 100,
        seq: 0,
    };
    // 91's frames to an unknown MAC go out and come back (net_ring0 loops), so it still
    // sends and receives.
    let mut f = Vec::new();
    for _ in 0..20 {
        g.next_frame(&mut f);
        tx.send(0, &f, TxMeta::default()).unwrap();
    }
    let t0 = Instant::now();
    while sink.stats.packets < 20 && t0.elapsed() < Duration::from_secs(5) {
        for p in tx.poll_rx(0).unwrap() {
            sink.accept(&p.data);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!((sink.stats.packets, sink.stats.lost), (20, 0));

    for nf in &mut nfs {
        nf.close().unwrap();
    }
    assert!(term_and_wait(run).success());
    assert!(term_and_wait(sim).success());
    std::fs::remove_dir_all(&parent).unwrap();
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-rctl-{pid}")).exists());
}
