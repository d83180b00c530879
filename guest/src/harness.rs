//! A scripted control plane for tests and benchmarks: attaches one vif of a simulated guest
//! to the engine the way the xenbus backend will (features, InitWait, the guest's keys,
//! rings mapped, event channels bound, Connected), without the watches and validation of
//! the real control plane. Panics on any failure: it is for tests, never for production.
use crate::{FrontConfig, Netfront};
use dataplane::credit::{Rate, VifCredit};
use dataplane::engine::{Features, QueueCounters, QueueId, QueueSetup};
use dataplane::netif::{BackRing, SharedPage};
use std::sync::Arc;
use std::time::Duration;
use xen::sim::{toolstack, SimHost};
use xen::{EventChannel, GrantMap, Mapping, Tx};

/// Maps one granted ring page of `domid` as the backend does.
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
    let (nf, mut setups, mut counters) = attach_queues(h, domid, devid, mac, features, 1);
    (nf, setups.remove(0), counters.remove(0))
}

/// As [`attach_with`] for a frontend with `queues` queues (the backend offers that many;
/// the frontend writes them under `queue-N/` when there are several).
pub fn attach_queues(
    h: &SimHost,
    domid: u16,
    devid: u32,
    mac: [u8; 6],
    features: Features,
    queues: u32,
) -> (Netfront, Vec<QueueSetup>, Vec<Arc<QueueCounters>>) {
    let xs = h.store();
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    toolstack::add_vif(xs, 0, domid, devid, &mac_s, &Default::default()).unwrap();
    let be = toolstack::backend_path(0, domid, devid);
    let fe = toolstack::frontend_path(domid, devid);
    let max_q = queues.to_string();
    for (k, v) in [
        ("feature-rx-copy", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-split-event-channels", "1"),
        ("multi-queue-max-queues", max_q.as_str()),
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
            queues,
            split_evtchn: true,
            ctrl_ring: false,
            sg: true,
            gso: true,
        },
    )
    .unwrap();
    nf.connect(Duration::from_secs(5)).unwrap();
    let mut ev = h.evtchn(0).unwrap();
    let mut setups = Vec::new();
    let mut all = Vec::new();
    // One credit for the vif, shared by its queues.
    let credit = VifCredit::new(Rate::UNLIMITED);
    for q in 0..queues {
        let dir = if queues > 1 {
            format!("{fe}/queue-{q}")
        } else {
            fe.clone()
        };
        let r = |k: &str| {
            xs.read(Tx::NONE, &format!("{dir}/{k}"))
                .unwrap()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        };
        let counters = Arc::new(QueueCounters::default());
        setups.push(QueueSetup {
            vlan: None,
            id: QueueId {
                domid,
                devid,
                queue: q as u16,
            },
            tx: BackRing::attach(map_ring(h, domid, r("tx-ring-ref"))),
            rx: BackRing::attach(map_ring(h, domid, r("rx-ring-ref"))),
            evtchn_tx: ev.bind_interdomain(domid, r("event-channel-tx")).unwrap(),
            evtchn_rx: ev.bind_interdomain(domid, r("event-channel-rx")).unwrap(),
            mac,
            features,
            mtu: 0,
            credit: credit.clone(),
            counters: counters.clone(),
        });
        all.push(counters);
    }
    xs.write(Tx::NONE, &format!("{be}/state"), "4").unwrap();
    (nf, setups, all)
}

/// The world an engine test runs in: EAL (no hugepages, a unique file prefix, one
/// `net_ring0` loopback port), a mempool, the port started, and a sim host. Drop groups
/// first, then call [`Env::finish`], which checks that no mbuf leaked.
pub struct Env {
    pub pool: Arc<pmd::Mempool>,
    pub port: Arc<pmd::Port>,
    pub host: SimHost,
    eal: pmd::Eal,
}

impl Env {
    /// `name` makes the EAL prefix and pool names unique; `mbufs` sizes the pool.
    pub fn new(name: &str, mem_mb: u32, mbufs: u32) -> Env {
        Env::with_queues(name, mem_mb, mbufs, 1)
    }

    /// As [`Env::new`] with the port started with `queues` RX and TX queues (one per
    /// group; `net_ring0` loops each TX queue back to the RX queue of the same number).
    pub fn with_queues(name: &str, mem_mb: u32, mbufs: u32, queues: u16) -> Env {
        let prefix = format!("nbd-{name}-{}", std::process::id());
        let mb = mem_mb.to_string();
        let eal = pmd::Eal::init(&[
            "--no-huge",
            "-m",
            &mb,
            "--no-pci",
            "--no-shconf",
            "--file-prefix",
            &prefix,
            "--vdev",
            "net_ring0",
            "--log-level",
            "*:error",
        ])
        .expect("EAL init");
        let pool = Arc::new(pmd::Mempool::new(name, mbufs, 256, 2176, -1).expect("mempool"));
        let mut port = pmd::Port::by_name("net_ring0").expect("net_ring0");
        let pcfg = pmd::PortConfig {
            rx_queues: queues,
            tx_queues: queues,
            ..Default::default()
        };
        port.configure_and_start(&pcfg, &pool)
            .expect("start net_ring0");
        let host = SimHost::start(xen::sim::SimOptions::default()).expect("sim host");
        Env {
            pool,
            port: Arc::new(port),
            host,
            eal,
        }
    }

    /// A group on this env's port (queue 0) with the sim host's grant copy and channels.
    pub fn group(
        &self,
        cfg: dataplane::engine::EngineConfig,
        caps: dataplane::offload::TxCaps,
    ) -> dataplane::engine::Group<xen::sim::SimGrant, xen::sim::SimEvtchn> {
        self.group_on(0, cfg, caps)
    }

    /// A group on port queue `queue`.
    pub fn group_on(
        &self,
        queue: u16,
        cfg: dataplane::engine::EngineConfig,
        caps: dataplane::offload::TxCaps,
    ) -> dataplane::engine::Group<xen::sim::SimGrant, xen::sim::SimEvtchn> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let io = dataplane::engine::GroupIo {
            pool: self.pool.clone(),
            port: self.port.clone(),
            port_queue: queue,
            caps,
            soft: dataplane::offload::SoftGso::new(&format!("g{n}"), 511, -1).expect("gso pools"),
        };
        dataplane::engine::Group::new(
            cfg,
            self.host.grants(0),
            self.host.evtchn(0).expect("dom0 channels"),
            io,
            Default::default(),
        )
    }

    /// Stops the sim host, the port and EAL; panics if an mbuf leaked.
    pub fn finish(self) {
        let Env {
            pool,
            port,
            host,
            eal,
        } = self;
        drop(port);
        host.stop().expect("sim host stop");
        assert_eq!(pool.in_use(), 0, "no mbuf leaked");
        drop(pool);
        drop(eal);
    }
}

/// Frontend key sets that a backend must refuse, each with the exact text its `error` node
/// must hold: a non-numeric or out-of-range ring ref, a missing or non-numeric event
/// channel, 0 or too many queues (of at most 4), `request-rx-copy`=0, a multi-queue
/// frontend missing a key of its second queue, and a ring ref the backend cannot map.
pub type FrontendCase = (&'static str, Vec<(&'static str, &'static str)>);

pub fn malformed_frontend_cases() -> Vec<FrontendCase> {
    vec![
        (
            r#"tx-ring-ref = "abc" is not a number"#,
            vec![
                ("tx-ring-ref", "abc"),
                ("rx-ring-ref", "9"),
                ("event-channel", "3"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            "event-channel missing",
            vec![
                ("tx-ring-ref", "8"),
                ("rx-ring-ref", "9"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            r#"event-channel = "x3" is not a number"#,
            vec![
                ("tx-ring-ref", "8"),
                ("rx-ring-ref", "9"),
                ("event-channel", "x3"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            r#"multi-queue-num-queues = "0" is out of range (min 1)"#,
            vec![("multi-queue-num-queues", "0"), ("request-rx-copy", "1")],
        ),
        (
            r#"multi-queue-num-queues = "99" is out of range (max 4)"#,
            vec![("multi-queue-num-queues", "99"), ("request-rx-copy", "1")],
        ),
        (
            r#"request-rx-copy = "0" is not valid: only copying receive is supported"#,
            vec![
                ("tx-ring-ref", "8"),
                ("rx-ring-ref", "9"),
                ("event-channel", "3"),
                ("request-rx-copy", "0"),
            ],
        ),
        (
            r#"tx-ring-ref = "4294967296" is out of range (max 4294967295)"#,
            vec![
                ("tx-ring-ref", "4294967296"),
                ("rx-ring-ref", "9"),
                ("event-channel", "3"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            r#"rx-ring-ref = "4294967296" is out of range (max 4294967295)"#,
            vec![
                ("tx-ring-ref", "8"),
                ("rx-ring-ref", "4294967296"),
                ("event-channel", "3"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            "queue-1/tx-ring-ref missing",
            vec![
                ("multi-queue-num-queues", "2"),
                ("queue-0/tx-ring-ref", "8"),
                ("queue-0/rx-ring-ref", "9"),
                ("queue-0/event-channel", "3"),
                ("request-rx-copy", "1"),
            ],
        ),
        (
            "mapping tx-ring-ref (grant reference 77777) failed",
            vec![
                ("tx-ring-ref", "77777"),
                ("rx-ring-ref", "9"),
                ("event-channel", "3"),
                ("request-rx-copy", "1"),
            ],
        ),
    ]
}
