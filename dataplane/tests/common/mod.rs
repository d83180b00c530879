//! Shared by the engine tests: playing the control plane for one vif on the sim host.
#![allow(dead_code)]
use dataplane::credit::Rate;
use dataplane::engine::{Features, QueueCounters, QueueId, QueueSetup};
use dataplane::netif::{BackRing, SharedPage};
use guest::{FrontConfig, Netfront};
use std::sync::Arc;
use std::time::Duration;
use xen::sim::{toolstack, SimHost};
use xen::{EventChannel, GrantMap, Mapping, Tx};

pub fn map_ring(h: &SimHost, domid: u16, gref: u32) -> SharedPage {
    let m = Arc::new(h.grants(0).map(domid, &[gref], true).unwrap());
    let p = std::ptr::NonNull::new(m.as_ptr()).unwrap();
    // SAFETY: the mapping lives as long as the SharedPage (it holds the Arc).
    unsafe { SharedPage::from_raw(p, Some(m)) }
}

/// Plays the control plane for one vif: features, InitWait, the guest connects, rings are
/// mapped and channels bound, Connected. Returns the guest and the queue for the group.
pub fn attach(
    h: &SimHost,
    domid: u16,
    devid: u32,
    mac: [u8; 6],
) -> (Netfront, QueueSetup, Arc<QueueCounters>) {
    attach_with(
        h,
        domid,
        devid,
        mac,
        Features {
            sg: true,
            gso_tcpv4: true,
            ..Default::default()
        },
    )
}

/// As [`attach`], with the features the backend records for the frontend.
pub fn attach_with(
    h: &SimHost,
    domid: u16,
    devid: u32,
    mac: [u8; 6],
    features: Features,
) -> (Netfront, QueueSetup, Arc<QueueCounters>) {
    let xs = h.store();
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    toolstack::add_vif(xs, 0, domid, devid, &mac_s, &Default::default()).unwrap();
    let be = toolstack::backend_path(0, domid, devid);
    let fe = toolstack::frontend_path(domid, devid);
    for (k, v) in [
        ("feature-rx-copy", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-split-event-channels", "1"),
    ] {
        xs.write(Tx::NONE, &format!("{be}/{k}"), v).unwrap();
    }
    xs.write(Tx::NONE, &format!("{be}/state"), "2").unwrap();
    let mut nf = Netfront::new(
        h.layout(),
        h.connect().unwrap(),
        FrontConfig {
            domid,
            devid,
            queues: 1,
            split_evtchn: true,
        },
    )
    .unwrap();
    nf.connect(Duration::from_secs(5)).unwrap();
    let r = |k: &str| {
        xs.read(Tx::NONE, &format!("{fe}/{k}"))
            .unwrap()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let mut ev = h.evtchn(0).unwrap();
    let counters = Arc::new(QueueCounters::default());
    let setup = QueueSetup {
        id: QueueId {
            domid,
            devid,
            queue: 0,
        },
        tx: BackRing::attach(map_ring(h, domid, r("tx-ring-ref"))),
        rx: BackRing::attach(map_ring(h, domid, r("rx-ring-ref"))),
        evtchn_tx: ev.bind_interdomain(domid, r("event-channel-tx")).unwrap(),
        evtchn_rx: ev.bind_interdomain(domid, r("event-channel-rx")).unwrap(),
        mac,
        features,
        rate: Rate::UNLIMITED,
        counters: counters.clone(),
    };
    xs.write(Tx::NONE, &format!("{be}/state"), "4").unwrap();
    (nf, setup, counters)
}
