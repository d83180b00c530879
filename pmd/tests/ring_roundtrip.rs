//! EAL + mempool + a real DPDK `net_ring` port: a burst goes out and comes back byte-exact.
//! EAL can be initialised once per process, so this binary holds a single test.
use pmd::{Eal, Mbuf, Mempool, Port, PortConfig};
use std::time::{Duration, Instant};

fn payload(i: usize) -> Vec<u8> {
    let len = 64 + (i * 47) % (1500 - 64 + 1);
    (0..len)
        .map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[test]
fn net_ring_round_trip() {
    let prefix = format!("nbd-test-{}", std::process::id());
    let eal = Eal::init(&[
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_ring0",
        "--log-level",
        "lib.eal:error",
    ])
    .expect("EAL init");
    assert!(matches!(
        Eal::init(&["--no-pci"]),
        Err(pmd::PmdError::EalAlreadyInitialised)
    ));
    {
        let pool = Mempool::new("rt_pool", 2047, 64, 2176, -1).expect("mempool");
        let mut port = Port::by_name("net_ring0").expect("net_ring0 exists");
        let info = port.info().unwrap();
        assert_eq!(info.driver, "net_ring");
        assert!(Port::by_name("net_nope9").is_err());
        port.configure_and_start(&PortConfig::default(), &pool)
            .expect("start");
        assert!(port.link().unwrap().up);
        // net_ring has no flow API: a MAC steering rule is refused with a reason, nothing
        // is installed (netbackd then hands frames over in software).
        let e = port
            .steer_mac([0x00, 0x16, 0x3e, 0, 0, 1], Some(100), 0)
            .expect_err("net_ring cannot steer");
        assert!(e.to_string().contains("rte_flow"), "{e}");
        let args = Eal::default_args("x", 64);
        assert!(args.contains(&"--no-pci".to_string()));
        assert!(
            args.contains(&"--in-memory".to_string()) || args.contains(&"--no-huge".to_string())
        );

        // append/tailroom (done on the mbuf fields in Rust) as DPDK's: to the last
        // segment, pkt_len follows, refused past the tailroom with nothing changed.
        {
            let mut m = Mbuf::alloc(&pool).unwrap();
            let room = m.tailroom();
            assert_eq!(room, 2176 - m.headroom());
            assert!(m.append(room + 1).is_none());
            assert_eq!((m.pkt_len(), m.data_len(), m.tailroom()), (0, 0, room));
            m.append(100).unwrap().fill(7);
            assert_eq!(
                (m.pkt_len(), m.data_len(), m.tailroom()),
                (100, 100, room - 100)
            );
            let mut tail = Mbuf::alloc(&pool).unwrap();
            tail.append(10).unwrap().fill(8);
            m.chain(tail).ok().unwrap();
            m.append(5).unwrap().fill(9);
            assert_eq!((m.pkt_len(), m.data_len(), m.nb_segs()), (115, 100, 2));
            let segs: Vec<Vec<u8>> = m.segments().map(|s| s.to_vec()).collect();
            assert_eq!(segs[1], [8u8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9]);
            assert_eq!(m.tailroom(), room - 15);
        }

        let mut burst = Vec::new();
        let sent_payloads: Vec<Vec<u8>> = (0..32).map(payload).collect();
        for p in &sent_payloads {
            let mut m = Mbuf::alloc(&pool).unwrap();
            m.append(p.len() as u16).unwrap().copy_from_slice(p);
            assert_eq!(m.pkt_len() as usize, p.len());
            burst.push(m);
        }
        assert_eq!(pool.in_use(), 32);
        let sent = port.tx_burst(0, &mut burst);
        assert_eq!(sent, 32);
        assert!(burst.is_empty());

        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 32 && Instant::now() < deadline {
            port.rx_burst(0, &mut got, 32);
        }
        assert_eq!(got.len(), 32, "all packets come back through net_ring");
        let st = port.stats().unwrap();
        assert_eq!((st.opackets, st.ipackets), (32, 32));
        let xs = port.xstats().unwrap();
        let get = |n: &str| xs.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("rx_good_packets"), Some(32), "{xs:?}");
        assert_eq!(get("tx_good_packets"), Some(32));
        for (m, p) in got.iter().zip(&sent_payloads) {
            assert_eq!(&m.to_vec(), p);
        }
        // Bulk alloc/free and chains keep the pool balanced.
        let mut more = Vec::new();
        Mbuf::alloc_bulk(&pool, &mut more, 16).unwrap();
        let mut head = more.pop().unwrap();
        head.append(10).unwrap().fill(1);
        let mut tail = more.pop().unwrap();
        tail.append(20).unwrap().fill(2);
        head.chain(tail).unwrap();
        assert_eq!((head.pkt_len(), head.nb_segs()), (30, 2));
        assert_eq!(head.to_vec(), [vec![1u8; 10], vec![2u8; 20]].concat());
        drop(head);
        pmd::free_bulk(&mut more);
        pmd::free_bulk(&mut got);
        assert_eq!(pool.in_use(), 0, "no mbuf leaked");

        // free_bulk: one-segment mbufs of one pool go back with one put; a chain among
        // them, or mbufs of two pools, take DPDK's general path. Either way every segment
        // returns, and what is allocated next is a clean one-segment mbuf.
        let other = Mempool::new("rt_other", 255, 0, 2176, -1).expect("second pool");
        let mut v = Vec::new();
        Mbuf::alloc_bulk(&pool, &mut v, 8).unwrap();
        for m in &mut v {
            m.append(60).unwrap();
        }
        pmd::free_bulk(&mut v);
        assert_eq!((v.len(), pool.in_use()), (0, 0), "plain burst returned");
        Mbuf::alloc_bulk(&pool, &mut v, 8).unwrap();
        assert!(v.iter().all(|m| (m.nb_segs(), m.pkt_len()) == (1, 0)));
        let mut chained = Mbuf::alloc(&pool).unwrap();
        chained.append(100).unwrap();
        let mut seg = Mbuf::alloc(&pool).unwrap();
        seg.append(100).unwrap();
        chained.chain(seg).unwrap();
        v.insert(3, chained);
        v.push(Mbuf::alloc(&other).unwrap());
        assert_eq!((pool.in_use(), other.in_use()), (10, 1));
        pmd::free_bulk(&mut v);
        assert_eq!(
            (pool.in_use(), other.in_use()),
            (0, 0),
            "chain and both pools returned"
        );
        Mbuf::alloc_bulk(&pool, &mut v, 10).unwrap();
        assert!(v.iter().all(|m| (m.nb_segs(), m.pkt_len()) == (1, 0)));
        pmd::free_bulk(&mut v);
        Mbuf::alloc_bulk(&other, &mut v, 2).unwrap();
        pmd::free_bulk(&mut v);
        drop(other);
        assert_eq!(pool.in_use(), 0);

        // A device attached after init from its devargs string (as a config names ports).
        let mut null = Port::probe("net_null0,size=64").expect("probe net_null0");
        assert_eq!(null.info().unwrap().driver, "net_null");
        null.configure_and_start(&PortConfig::default(), &pool)
            .unwrap();
        let mut v = Vec::new();
        Mbuf::alloc_bulk(&pool, &mut v, 8).unwrap();
        assert_eq!(null.tx_burst_or_drop(0, &mut v), (8, 0));
        assert!(Port::probe("net_nosuchdriver0").is_err());
        drop(null);
        assert_eq!(pool.in_use(), 0, "net_null freed what it sent");

        // MbufRing: bounded, order kept, leftovers freed with the last handle.
        let (tx, mut rx) = pmd::MbufRing::new("handoff", 64, -1).unwrap();
        let mut batch = Vec::new();
        Mbuf::alloc_bulk(&pool, &mut batch, 80).unwrap();
        for (i, m) in batch.iter_mut().enumerate() {
            m.append(2)
                .unwrap()
                .copy_from_slice(&(i as u16).to_le_bytes());
        }
        assert_eq!(tx.enqueue(&mut batch), 64, "exactly the ring's size fits");
        assert_eq!(batch.len(), 16, "the rest stays with the caller");
        let mut out = Vec::new();
        assert_eq!(rx.dequeue(&mut out, 100), 64);
        for (i, m) in out.iter().enumerate() {
            assert_eq!(m.data(), &(i as u16).to_le_bytes());
        }
        pmd::free_bulk(&mut out);
        assert_eq!(tx.enqueue(&mut batch), 16);
        drop(rx);
        drop(tx);
        assert_eq!(pool.in_use(), 0, "ring drop freed its mbufs");

        // Worker lcores: EAL's pinned threads run a Rust closure; a producer there hands
        // mbufs to the main lcore through an MbufRing.
        let workers = pmd::lcore::workers();
        assert!(
            !workers.is_empty(),
            "EAL gave no worker lcore (needs 2 cores)"
        );
        let w = workers[0];
        // A 64-slot ring and 1000 packets: producer and consumer must run concurrently.
        let (producer, mut consumer) = pmd::MbufRing::new("xlcore", 64, -1).unwrap();
        let pool = std::sync::Arc::new(pool);
        let producer_pool = pool.clone();
        pmd::lcore::launch(w, move || {
            if pmd::lcore::current() != w {
                return 1;
            }
            for i in 0..1000u16 {
                let mut m = Mbuf::alloc(&producer_pool).unwrap();
                m.append(2).unwrap().copy_from_slice(&i.to_le_bytes());
                let mut v = vec![m];
                while producer.enqueue(&mut v) == 0 {
                    std::hint::spin_loop();
                }
            }
            0
        })
        .unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut next = 0u16;
        while next < 1000 && Instant::now() < deadline {
            consumer.dequeue(&mut got, 64);
            for m in got.drain(..) {
                assert_eq!(m.data(), &next.to_le_bytes(), "in order");
                next += 1;
            }
        }
        assert_eq!(pmd::lcore::wait(w), 0, "ran on its own lcore");
        assert_eq!(next, 1000);
        assert!(pmd::lcore::launch(9999, || 0).is_err());
        let pool = std::sync::Arc::try_unwrap(pool).ok().expect("sole owner");

        // tx_offload bit layout agrees with DPDK's own bitfield accessors.
        let mut m = Mbuf::alloc(&pool).unwrap();
        m.set_tx_offload(14, 40, 20, 1448);
        // SAFETY: the mbuf is valid and owned for this scope.
        let raw = unsafe { &*m.as_ptr() };
        // SAFETY: reading the bitfield view of a fully initialised u64 union.
        let bf = unsafe { raw.__bindgen_anon_3.__bindgen_anon_1 };
        assert_eq!(
            (bf.l2_len(), bf.l3_len(), bf.l4_len(), bf.tso_segsz()),
            (14, 40, 20, 1448)
        );
        drop(m);
        drop(port);
    }
    drop(eal);
    assert!(
        !std::path::Path::new(&format!("/var/run/dpdk/{prefix}")).exists(),
        "DPDK runtime dir left behind"
    );
}
