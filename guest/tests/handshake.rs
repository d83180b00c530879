//! The guest's netfront against a scripted backend over the real xenstored of a sim host:
//! the xenbus handshake with Linux netfront's keys (two queues, split event channels),
//! packets both ways through the rings and grant copies, and the close.
use dataplane::netif::{
    BackRing, ExtraInfo, RxResponse, RxRing, SharedPage, TxResponse, TxRing, NETRXF_DATA_VALIDATED,
    NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RSP_NULL, XEN_NETIF_RSP_OKAY,
};
use guest::{FrontConfig, Netfront, TxMeta};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::iface::gntst;
use xen::sim::toolstack;
use xen::sim::{SimHost, SimOptions};
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy, GrantMap, Mapping, Tx, XenStore};

const D: u16 = 5;

fn read(xs: &XenStore, p: &str) -> String {
    xs.read(Tx::NONE, p)
        .unwrap()
        .unwrap_or_else(|| panic!("{p} missing"))
}

fn wait_for(xs: &XenStore, p: &str, v: &str) {
    let t = Instant::now();
    while xs.read(Tx::NONE, p).unwrap().as_deref() != Some(v) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{p} never became {v}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn map_ring(h: &SimHost, gref: u32) -> SharedPage {
    let m = Arc::new(h.grants(0).map(D, &[gref], true).unwrap());
    let p = std::ptr::NonNull::new(m.as_ptr()).unwrap();
    // SAFETY: the page is mapped for as long as `m`, which the SharedPage keeps alive.
    unsafe { SharedPage::from_raw(p, Some(m)) }
}

#[test]
fn netfront_handshake_traffic_and_close() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(D, "guest5", 4096, 8192).unwrap();
    let xs = h.store();
    toolstack::add_vif(xs, 0, D, 0, "00:16:3e:00:00:05", &Default::default()).unwrap();
    let fe = toolstack::frontend_path(D, 0);
    let be = toolstack::backend_path(0, D, 0);

    // Backend: features, then InitWait.
    for (k, v) in [
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-split-event-channels", "1"),
        ("multi-queue-max-queues", "2"),
    ] {
        xs.write(Tx::NONE, &format!("{be}/{k}"), v).unwrap();
    }
    // Watch the frontend directory to see the order of its writes.
    let watcher = h.connect().unwrap();
    watcher.watch(&fe, "fe").unwrap();
    xs.write(Tx::NONE, &format!("{be}/state"), "2").unwrap();

    // The guest connects in its own thread, as it would in its own domain.
    let layout = h.layout().clone();
    let sock = h.xenstore_path();
    let guest = std::thread::spawn(move || {
        let mut nf = Netfront::new(
            &layout,
            XenStore::open_at(&sock).unwrap(),
            FrontConfig {
                domid: D,
                devid: 0,
                queues: 4,
                split_evtchn: true,
                ctrl_ring: false,
                sg: true,
                gso: true,
            },
        )
        .unwrap();
        nf.connect(Duration::from_secs(10)).unwrap();
        nf
    });
    wait_for(xs, &format!("{fe}/state"), "4");
    let mut nf = guest.join().unwrap();
    assert_eq!(
        nf.queues.len(),
        2,
        "capped at the backend's multi-queue-max-queues"
    );
    assert!(nf.features.split_evtchn && nf.features.sg && nf.features.gso_tcpv4);

    // Order: every key event comes before the state=4 event.
    let mut events = Vec::new();
    while let Some(e) = watcher.read_watch_timeout(Duration::from_millis(200)) {
        events.push(e.path);
    }
    let pos = |k: &str| events.iter().position(|p| p == &format!("{fe}/{k}"));
    let state_at = pos("state").expect("state event");
    for k in [
        "queue-0/tx-ring-ref",
        "queue-1/event-channel-rx",
        "request-rx-copy",
        "multi-queue-num-queues",
    ] {
        assert!(
            pos(k).expect(k) < state_at,
            "{k} written before Connected: {events:?}"
        );
    }
    assert_eq!(read(xs, &format!("{fe}/multi-queue-num-queues")), "2");
    for k in [
        "request-rx-copy",
        "feature-rx-notify",
        "feature-sg",
        "feature-gso-tcpv4",
        "feature-gso-tcpv6",
    ] {
        assert_eq!(read(xs, &format!("{fe}/{k}")), "1", "{k}");
    }
    assert_eq!(
        xs.read(Tx::NONE, &format!("{fe}/tx-ring-ref")).unwrap(),
        None,
        "no flat keys with 2 queues"
    );

    // Backend: map queue 0's rings, bind its channels, Connected.
    let q = |k: &str| {
        read(xs, &format!("{fe}/queue-0/{k}"))
            .parse::<u32>()
            .unwrap()
    };
    let mut txr = BackRing::<TxRing>::attach(map_ring(&h, q("tx-ring-ref")));
    let mut rxr = BackRing::<RxRing>::attach(map_ring(&h, q("rx-ring-ref")));
    let mut ev = h.evtchn(0).unwrap();
    let ev_tx = ev.bind_interdomain(D, q("event-channel-tx")).unwrap();
    let ev_rx = ev.bind_interdomain(D, q("event-channel-rx")).unwrap();
    xs.write(Tx::NONE, &format!("{be}/state"), "4").unwrap();
    let mut gc = h.grants(0);

    // Guest TX: a 60-byte csum_blank packet, and a 10000-byte TSO packet in 4096-byte slots.
    let small: Vec<u8> = (0..60u8).collect();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    nf.send(
        0,
        &small,
        TxMeta {
            csum_blank: true,
            ..Default::default()
        },
    )
    .unwrap();
    nf.send(
        0,
        &big,
        TxMeta {
            csum_blank: true,
            gso: Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)),
            slot_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    // The first packet's request notified (req_event starts at 1).
    ev.wait(Duration::from_secs(2));
    assert!(ev.take_pending(ev_tx), "netfront notified the TX channel");
    assert_eq!(
        txr.unconsumed(),
        1 + 1 + 1 + 2,
        "1 + (3 data + 1 extra) slots"
    );
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut responses = Vec::new();
    while let Some(first) = txr.next_request() {
        let mut pkt = vec![0u8; usize::from(first.size)];
        let mut slots = vec![first];
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            let e = ExtraInfo::from_tx_slot(&txr.next_request().unwrap());
            assert_eq!(
                (e.as_gso().size, e.as_gso().gso_type),
                (1448, XEN_NETIF_GSO_TYPE_TCPV4)
            );
            responses.push(None); // the extra's NULL response follows the first
        }
        let mut more = first.flags & NETTXF_MORE_DATA != 0;
        while more {
            let r = txr.next_request().unwrap();
            more = r.flags & NETTXF_MORE_DATA != 0;
            slots.push(r);
        }
        assert!(first.flags & NETTXF_CSUM_BLANK != 0);
        // First slot's own length = total minus the others.
        let rest: usize = slots[1..].iter().map(|s| usize::from(s.size)).sum();
        let mut lens = vec![usize::from(first.size) - rest];
        lens.extend(slots[1..].iter().map(|s| usize::from(s.size)));
        let mut off = 0;
        let mut ops: Vec<CopyOp> = slots
            .iter()
            .zip(&lens)
            .map(|(s, &l)| {
                let op = CopyOp {
                    domid: D,
                    gref: s.gref,
                    offset: s.offset,
                    local: pkt[off..].as_mut_ptr(),
                    len: l as u16,
                    dir: CopyDir::FromForeign,
                    status: 99,
                };
                off += l;
                op
            })
            .collect();
        // SAFETY: each op's local range lies inside `pkt`.
        unsafe { gc.copy(&mut ops).unwrap() };
        assert!(ops.iter().all(|o| o.status == gntst::OKAY));
        for s in &slots {
            responses.push(Some(s.id));
        }
        // Move the extra's NULL marker behind the first slot's response.
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            let n = responses.len();
            responses[n - slots.len() - 1..].rotate_left(1);
        }
        got.push(pkt);
    }
    assert_eq!(got, vec![small.clone(), big.clone()]);
    for r in &responses {
        txr.push_response(match r {
            Some(id) => TxResponse {
                id: *id,
                status: XEN_NETIF_RSP_OKAY,
            },
            None => TxResponse {
                id: 0,
                status: XEN_NETIF_RSP_NULL,
            },
        });
    }
    if txr.push_responses_and_check_notify() {
        ev.notify(ev_tx).unwrap();
    }
    let seen = nf.reap_tx(0).unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().filter(|s| s.1 == XEN_NETIF_RSP_NULL).count(), 1);
    assert_eq!(nf.stats.tx_errors, 0);

    // Guest RX: a 5000-byte GSO packet in 2 data slots + the GSO extra.
    assert_eq!(
        rxr.unconsumed(),
        256,
        "netfront posted a full ring of buffers"
    );
    let pkt: Vec<u8> = (0..5000u32).map(|i| (i * 3) as u8).collect();
    let reqs: Vec<_> = (0..3).map(|_| rxr.next_request().unwrap()).collect();
    let mut ops = vec![
        CopyOp {
            domid: D,
            gref: reqs[0].gref,
            offset: 0,
            local: pkt.as_ptr() as *mut u8,
            len: 4096,
            dir: CopyDir::ToForeign,
            status: 99,
        },
        CopyOp {
            domid: D,
            gref: reqs[2].gref,
            offset: 0,
            local: pkt[4096..].as_ptr() as *mut u8,
            len: 904,
            dir: CopyDir::ToForeign,
            status: 99,
        },
    ];
    // SAFETY: both local ranges lie inside `pkt` and are only read.
    unsafe { gc.copy(&mut ops).unwrap() };
    assert!(ops.iter().all(|o| o.status == gntst::OKAY));
    rxr.push_response(RxResponse {
        id: reqs[0].id,
        offset: 0,
        flags: NETRXF_MORE_DATA | NETRXF_EXTRA_INFO | NETRXF_DATA_VALIDATED,
        status: 4096,
    });
    rxr.push_response(ExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV4, false).to_rx_slot());
    rxr.push_response(RxResponse {
        id: reqs[2].id,
        offset: 0,
        flags: 0,
        status: 904,
    });
    if rxr.push_responses_and_check_notify() {
        ev.notify(ev_rx).unwrap();
    }
    let rx = nf.poll_rx(0).unwrap();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].data, pkt);
    assert_eq!(rx[0].gso, Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)));
    assert_eq!(rx[0].slots, 3);
    assert!(rx[0].flags & NETRXF_DATA_VALIDATED != 0);
    assert_eq!(rxr.unconsumed(), 256, "buffers re-posted");

    // Close: backend Closing -> frontend Closed -> backend Closed.
    xs.write(Tx::NONE, &format!("{be}/state"), "5").unwrap();
    nf.wait_backend_state(5, Duration::from_secs(2)).unwrap();
    nf.close().unwrap();
    assert_eq!(read(xs, &format!("{fe}/state")), "6");
    drop((txr, rxr));
    ev.unbind(ev_tx).unwrap();
    ev.unbind(ev_rx).unwrap();
    xs.write(Tx::NONE, &format!("{be}/state"), "6").unwrap();
    h.stop().unwrap();
}

/// The guest as its own process (`nbd-guest`) on the same sim root: one queue gives the
/// flat key layout; backend Closing makes it close and exit cleanly.
#[test]
fn guest_process_attaches_and_closes() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(6, "guest6", 2048, 4096).unwrap();
    let xs = h.store();
    toolstack::add_vif(xs, 0, 6, 1, "00:16:3e:00:00:06", &Default::default()).unwrap();
    let fe = toolstack::frontend_path(6, 1);
    let be = toolstack::backend_path(0, 6, 1);
    for (k, v) in [
        ("feature-rx-copy", "1"),
        ("feature-split-event-channels", "1"),
        ("feature-sg", "1"),
    ] {
        xs.write(Tx::NONE, &format!("{be}/{k}"), v).unwrap();
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nbd-guest"))
        .args([
            "--root",
            &h.root().to_string_lossy(),
            "--domid",
            "6",
            "--devid",
            "1",
            "connect",
            "--duration",
            "30",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        read(xs, &format!("{fe}/state")),
        "1",
        "frontend waits for InitWait"
    );
    xs.write(Tx::NONE, &format!("{be}/state"), "2").unwrap();
    wait_for(xs, &format!("{fe}/state"), "4");
    for k in [
        "tx-ring-ref",
        "rx-ring-ref",
        "event-channel-tx",
        "event-channel-rx",
        "request-rx-copy",
    ] {
        assert!(
            xs.read(Tx::NONE, &format!("{fe}/{k}")).unwrap().is_some(),
            "{k}"
        );
    }
    assert_eq!(
        xs.read(Tx::NONE, &format!("{fe}/multi-queue-num-queues"))
            .unwrap(),
        None
    );
    // The backend can really use what the process published.
    let tx_ref: u32 = read(xs, &format!("{fe}/tx-ring-ref")).parse().unwrap();
    assert!(h.grants(0).map(6, &[tx_ref], true).is_ok());
    let mut ev = h.evtchn(0).unwrap();
    let p: u32 = read(xs, &format!("{fe}/event-channel-tx")).parse().unwrap();
    let local = ev.bind_interdomain(6, p).unwrap();
    xs.write(Tx::NONE, &format!("{be}/state"), "4").unwrap();
    xs.write(Tx::NONE, &format!("{be}/state"), "5").unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "guest did not close");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    assert_eq!(read(xs, &format!("{fe}/state")), "6");
    ev.unbind(local).unwrap();
}
