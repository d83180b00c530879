//! The xenbus backend against the real xenstored of a sim host, with a group running and a
//! guest netfront: the handshake, traffic through the handed-over queues, detach and
//! re-attach, and malformed frontend keys closing only their own vif. EAL once: one test.
use control::{state, Backend, BackendConfig, Happened};
use dataplane::engine::EngineConfig;
use dataplane::offload::TxCaps;
use guest::pktgen::{PktGen, Sink};
use guest::{FrontConfig, Netfront, TxMeta};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::toolstack;
use xen::{Tx, XenStore};

fn wait_for(xs: &XenStore, path: &str, want: &str, secs: u64) -> Duration {
    let t = Instant::now();
    while xs.read(Tx::NONE, path).unwrap().as_deref() != Some(want) {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{path} never became {want} (is {:?})",
            xs.read(Tx::NONE, path).unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

#[test]
fn xenbus_backend_lifecycle() {
    let env = guest::harness::Env::new("ctl", 512, 8191);
    {
        let h = &env.host;
        h.add_domain(61, "web", 4096, 8192).unwrap();
        h.add_domain(62, "bad", 1024, 2048).unwrap();
        h.add_domain(63, "evil", 1024, 2048).unwrap();
        let mut g = env.group(EngineConfig::default(), TxCaps::default());
        let handle = g.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let group = std::thread::spawn(move || {
            g.run(&s1, None);
            g
        });
        let mut be = Backend::new(
            BackendConfig::default(),
            h.connect().unwrap(),
            h.grants(0),
            h.evtchn(0).unwrap(),
            vec![handle],
        )
        .unwrap();
        let backend = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                be.step(Duration::from_millis(20));
            }
            be
        });
        let xs = h.store();
        let mac = [0x00, 0x16, 0x3e, 0, 6, 1];

        // 1. Attach: InitWait promptly (libxl gives up after 10 s), features advertised.
        toolstack::add_vif(xs, 0, 61, 0, "00:16:3e:00:06:01", &Default::default()).unwrap();
        let bep = toolstack::backend_path(0, 61, 0);
        let fep = toolstack::frontend_path(61, 0);
        let to_initwait = wait_for(xs, &format!("{bep}/state"), "2", 1);
        for k in [
            "feature-sg",
            "feature-gso-tcpv4",
            "feature-rx-copy",
            "feature-split-event-channels",
        ] {
            assert_eq!(
                xs.read(Tx::NONE, &format!("{bep}/{k}")).unwrap().as_deref(),
                Some("1"),
                "{k}"
            );
        }
        assert_eq!(
            xs.read(Tx::NONE, &format!("{bep}/feature-rx-flip"))
                .unwrap()
                .as_deref(),
            Some("0")
        );

        // 2. The guest connects (2 queues asked, split channels): backend Connected.
        let t = Instant::now();
        let mut nf = Netfront::new(
            h.layout(),
            h.connect().unwrap(),
            FrontConfig {
                queues: 2,
                ..FrontConfig::new(61, 0)
            },
        )
        .unwrap();
        nf.connect(Duration::from_secs(5)).unwrap();
        wait_for(xs, &format!("{bep}/state"), "4", 5);
        let to_connected = t.elapsed();
        assert_eq!(
            xs.read(Tx::NONE, &format!("{bep}/hotplug-status"))
                .unwrap()
                .as_deref(),
            Some("connected")
        );
        assert_eq!(nf.queues.len(), 2);
        eprintln!("vif: InitWait {to_initwait:?} after attach, Connected {to_connected:?} after the frontend started");

        // 3. Traffic through the handed-over queue: to the wire (net_ring) and back.
        let mut gen = PktGen {
            src_mac: mac,
            dst_mac: [2, 0, 0, 0, 0, 0x33],
            src_ip: [10, 0, 0, 61],
            dst_ip: [10, 0, 0, 33],
            sport: 9,
            dport: 9,
            frame_len: 300,
            seq: 0,
        };
        let mut f = Vec::new();
        let mut sink = Sink::default();
        for _ in 0..20 {
            gen.next_frame(&mut f);
            nf.send(0, &f, TxMeta::default()).unwrap();
        }
        let t = Instant::now();
        while sink.stats.packets < 20 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "traffic: {:?}",
                sink.stats
            );
            for q in 0..2 {
                for p in nf.poll_rx(q).unwrap() {
                    sink.accept(&p.data);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!((sink.stats.lost, sink.stats.bad), (0, 0));

        // 4. Detach as libxl does: backend reaches Closed; the guest closes.
        toolstack::request_detach(xs, 0, 61, 0).unwrap();
        wait_for(xs, &format!("{bep}/state"), "6", 2);
        nf.close().unwrap();
        toolstack::remove_vif(xs, 0, 61, 0).unwrap();

        // 5. Re-attach (guest driver reloaded): a fresh connection.
        toolstack::add_vif(xs, 0, 61, 0, "00:16:3e:00:06:01", &Default::default()).unwrap();
        wait_for(xs, &format!("{bep}/state"), "2", 1);
        let mut nf =
            Netfront::new(h.layout(), h.connect().unwrap(), FrontConfig::new(61, 0)).unwrap();
        nf.connect(Duration::from_secs(5)).unwrap();
        wait_for(xs, &format!("{bep}/state"), "4", 5);

        // 6. Malformed frontend keys: an error node and Closed for that vif only.
        let cases = guest::harness::malformed_frontend_cases();
        for (i, (what, keys)) in cases.iter().enumerate() {
            let devid = 10 + i as u32;
            toolstack::add_vif(xs, 0, 62, devid, "00:16:3e:00:06:02", &Default::default()).unwrap();
            let b = toolstack::backend_path(0, 62, devid);
            let fp = toolstack::frontend_path(62, devid);
            wait_for(xs, &format!("{b}/state"), "2", 1);
            for (k, v) in keys {
                xs.write(Tx::NONE, &format!("{fp}/{k}"), v).unwrap();
            }
            xs.write(Tx::NONE, &format!("{fp}/state"), "4").unwrap();
            wait_for(xs, &format!("{b}/state"), "6", 2);
            let err = xs
                .read(Tx::NONE, &format!("{b}/error"))
                .unwrap()
                .expect("error node");
            assert_eq!(&err, what, "case {i}");
        }
        // The healthy vif is still connected and passing traffic.
        assert_eq!(
            xs.read(Tx::NONE, &format!("{bep}/state"))
                .unwrap()
                .as_deref(),
            Some("4")
        );
        let mut sink = Sink::default();
        gen.next_frame(&mut f);
        nf.send(0, &f, TxMeta::default()).unwrap();
        let t = Instant::now();
        while sink.stats.packets == 0 {
            assert!(t.elapsed() < Duration::from_secs(5));
            for p in nf.poll_rx(0).unwrap() {
                sink.accept(&p.data);
            }
        }
        // 7. A refused second channel (the RX one is not offered to us): the TX one,
        //    bound a moment before, is not left bound (regression, tests/hostile.rs).
        let hostile = |devid: u32| {
            toolstack::add_vif(xs, 0, 63, devid, "00:16:3e:00:06:03", &Default::default()).unwrap();
            let f0 = devid * 16;
            guest::hostile::Hostile::new(
                h.layout(),
                h.connect().unwrap(),
                63,
                devid,
                f0..f0 + 16,
                8 + f0..8 + f0 + 16,
            )
            .unwrap()
        };
        let bad = hostile(0);
        let mut keys = bad.standard_keys();
        keys.retain(|(k, _)| k != "event-channel-rx");
        keys.push(("event-channel-rx".into(), "1000".into()));
        bad.write_keys(&keys).unwrap();
        bad.set_state(4).unwrap();
        assert!(bad.wait_backend(6, Duration::from_secs(2)));
        assert_eq!(
            bad.backend("error").as_deref(),
            Some("binding event-channel-rx (port 1000) failed")
        );
        assert_eq!(bad.port_state(bad.evtchn_tx), 1, "TX channel left bound");
        // 8. The frontend's directory removed while Connected (its state Unknown, as
        //    Linux's netback sees it): closed, channels unbound (regression).
        let gone = hostile(1);
        gone.connect(Duration::from_secs(5)).unwrap();
        assert_eq!(gone.port_state(gone.evtchn_tx), 2);
        gone.rm("").unwrap();
        assert!(
            gone.wait_backend(6, Duration::from_secs(2)),
            "still Connected"
        );
        for p in [gone.evtchn_tx, gone.evtchn_rx] {
            assert_eq!(gone.port_state(p), 1, "port {p} left bound");
        }

        let _ = state::CLOSED;
        let _ = fep;
        stop.store(true, Ordering::Relaxed);
        let mut be = backend.join().unwrap();
        // Each refusal was reported once, with the key its error node names; dom61's
        // detach ended a connection of two queues, neither disabled.
        let events = be.take_events();
        let closed: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.what {
                Happened::Closed(why) if e.domid == 62 => Some(why.as_str()),
                _ => None,
            })
            .collect();
        let want: Vec<&str> = cases
            .iter()
            .map(|(what, _)| {
                let msg = what.strip_prefix("mapping ").unwrap_or(what);
                msg.split(' ').next().unwrap()
            })
            .collect();
        assert_eq!(closed, want);
        let ended = events
            .iter()
            .find_map(|e| match &e.what {
                Happened::Disconnected(q) if e.domid == 61 => Some((q.len(), e.verdicts())),
                _ => None,
            })
            .expect("dom61's first connection ended");
        assert_eq!(ended, (2, vec![]));
        assert!(be.take_events().is_empty());
        let status = be.status();
        assert!(
            status
                .iter()
                .any(|s| s.domid == 61 && s.state == state::CONNECTED && s.queues == 1),
            "{status:?}"
        );
        drop(be);
        drop(group.join().unwrap());
    }
    env.finish();
}
