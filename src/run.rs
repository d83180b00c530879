//! `netbackd run`: EAL, the port, the groups on their lcores, and the xenbus control plane,
//! until SIGINT/SIGTERM. On the way out the groups stop taking guest TX requests and
//! deliver what they took in, the channels are unbound and the rings unmapped, and the vifs
//! are left Connected in xenstore (`backend.on_stop = "keep"`), so a restarted daemon
//! resumes them with nothing lost; or they are closed (`"close"`).
use crate::config::{Config, CopyPath, HostKind, OnStop, SwitchMode};
use anyhow::{bail, Context};
use control::{Backend, BackendConfig};
use dataplane::engine::{connect_groups, Adaptive, EngineConfig, Group, GroupIo};
use dataplane::offload::{SoftGso, TxCaps};
use dataplane::switch::{Mode, SwitchConfig};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::{EventChannel, GrantCopy, GrantMap, XenStore};

/// What the daemon needs from the hypervisor host: xenstore, and per group and for the
/// control plane, the grant and event-channel handles. The rest of the daemon is the same
/// on a real dom0 and on the simulated host.
pub trait Host {
    type Copy: GrantCopy + 'static;
    type Map: GrantMap;
    type Ev: EventChannel + Clone + 'static;
    fn xenstore(&self) -> anyhow::Result<XenStore>;
    /// Grant copy and event channels for one group (on its own lcore).
    fn group(&self) -> anyhow::Result<(Self::Copy, Self::Ev)>;
    /// Grant mapping and event channels for the control plane.
    fn backend(&self) -> anyhow::Result<(Self::Map, Self::Ev)>;
    /// Grant copy for the control plane (control-ring keys and mapping tables).
    fn ctrl_copy(&self) -> anyhow::Result<Box<dyn GrantCopy>>;
    /// Where the rings' response journals live: a tmpfs directory that outlives the
    /// daemon (see `control::BackendConfig::journal_dir`).
    fn journal_dir(&self) -> std::path::PathBuf;
    /// The mbuf pool (after EAL initialisation): `n` mbufs of `room` bytes of data room
    /// (`explicit`: the operator set it, rather than it being derived from the MTU).
    fn mempool(&self, n: u32, room: u16, _explicit: bool) -> anyhow::Result<pmd::Mempool> {
        default_pool(n, room)
    }
}

/// The simulated host of `netbackd sim`.
struct SimBackendHost {
    layout: xen::sim::SimLayout,
    domid: u16,
}

impl Host for SimBackendHost {
    type Copy = xen::sim::SimGrant;
    type Map = xen::sim::SimGrant;
    type Ev = xen::sim::SimEvtchn;

    fn xenstore(&self) -> anyhow::Result<XenStore> {
        let sock = self.layout.xenstore_socket();
        XenStore::open_at(&sock.to_string_lossy()).context("connecting to xenstored")
    }

    fn group(&self) -> anyhow::Result<(Self::Copy, Self::Ev)> {
        // As /dev/xen/evtchn: the channels die with this process (kill -9 too), so a
        // restarted daemon can bind the guests' ports again.
        let ev = xen::sim::SimEvtchn::device(self.layout.clone(), self.domid)
            .context("event channels")?;
        let gm =
            xen::sim::SimGrant::new(xen::sim::DomainTable::new(self.layout.clone()), self.domid);
        Ok((gm, ev))
    }

    fn backend(&self) -> anyhow::Result<(Self::Map, Self::Ev)> {
        self.group()
    }

    /// In the sim root (shared memory, removed with the host).
    fn journal_dir(&self) -> std::path::PathBuf {
        self.layout
            .root()
            .join(format!("netbackd-dom{}-rings", self.domid))
    }

    fn ctrl_copy(&self) -> anyhow::Result<Box<dyn GrantCopy>> {
        Ok(Box::new(self.group()?.0))
    }
}

/// A real dom0: `/dev/xen` through `xen::linux`. Every group and the control plane share
/// one event-channel fd (ports can only be used through the fd that bound them).
struct LinuxHost {
    ev: xen::linux::LinuxEvtchn,
    copy: CopyPath,
    xenstore: Option<String>,
    domid: u16,
    /// Self-granted pages holding the mbuf pool (privcmd path); outlive the pool.
    regions: std::sync::Mutex<Vec<Arc<xen::linux::GntallocRegion>>>,
}

/// The grant-copy implementation of a group on a real dom0.
pub enum LinuxCopy {
    Gntdev(xen::linux::LinuxGrantCopy),
    Privcmd(xen::linux::PrivcmdGrantCopy),
}

impl GrantCopy for LinuxCopy {
    unsafe fn copy(&mut self, ops: &mut [xen::CopyOp]) -> Result<(), xen::XenError> {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe {
            match self {
                LinuxCopy::Gntdev(g) => g.copy(ops),
                LinuxCopy::Privcmd(p) => p.copy(ops),
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            LinuxCopy::Gntdev(g) => {
                let (ioctls, segs) = g.counts();
                format!("gntdev: {ioctls} ioctls, {segs} segments")
            }
            LinuxCopy::Privcmd(p) => {
                let s = p.stats();
                format!(
                    "privcmd: {} hypercalls, {} hypercall ops ({:.1} per hypercall), {} split, \
                     {} gntdev fallback ops in {} ioctls",
                    s.hypercalls,
                    s.hypercall_ops,
                    s.ops_per_hypercall(),
                    s.split_ops,
                    s.fallback_ops,
                    s.fallback_ioctls
                )
            }
        }
    }
}

/// gntalloc's per-host grant limit (module parameter), raised when the pool needs more.
const GNTALLOC_LIMIT: &str = "/sys/module/xen_gntalloc/parameters/limit";

impl Host for LinuxHost {
    type Copy = LinuxCopy;
    type Map = xen::linux::LinuxGrantMap;
    type Ev = xen::linux::LinuxEvtchn;

    fn xenstore(&self) -> anyhow::Result<XenStore> {
        XenStore::open_host(self.xenstore.as_deref()).context("connecting to xenstored")
    }

    fn group(&self) -> anyhow::Result<(Self::Copy, Self::Ev)> {
        let c = match self.copy {
            CopyPath::Gntdev => LinuxCopy::Gntdev(xen::linux::LinuxGrantCopy::open()?),
            CopyPath::Privcmd => {
                let regions = self
                    .regions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                LinuxCopy::Privcmd(xen::linux::PrivcmdGrantCopy::new(regions)?)
            }
        };
        Ok((c, self.ev.clone()))
    }

    fn backend(&self) -> anyhow::Result<(Self::Map, Self::Ev)> {
        Ok((xen::linux::LinuxGrantMap::open()?, self.ev.clone()))
    }

    /// tmpfs, kept across restarts (the unit's RuntimeDirectoryPreserve), gone at reboot
    /// with the guests whose rings it describes.
    fn journal_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netbackd/rings-dom{}", self.domid))
    }

    /// Always gntdev: the control ring's buffers are on the heap, not in the self-granted
    /// pages privcmd copies need.
    fn ctrl_copy(&self) -> anyhow::Result<Box<dyn GrantCopy>> {
        Ok(Box::new(xen::linux::LinuxGrantCopy::open()?))
    }

    fn mempool(&self, n: u32, room: u16, explicit: bool) -> anyhow::Result<pmd::Mempool> {
        if self.copy == CopyPath::Gntdev {
            return default_pool(n, room);
        }
        // Here an mbuf never crosses a page: jumbo frames are chains (RX scatter).
        if explicit && room > crate::config::DATA_ROOM_DEFAULT {
            anyhow::bail!(
                "eal.mbuf_data_room: {room} does not fit one 4 KiB page with xen.grant_copy = \
                 \"privcmd\" (at most {})",
                crate::config::DATA_ROOM_DEFAULT
            );
        }
        // One mbuf per 4 KiB page (an object never crosses a page), plus slack for the
        // pool's own header objects.
        let pages = n as usize + 64;
        let limit: usize = std::fs::read_to_string(GNTALLOC_LIMIT)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if limit < pages + 256 {
            std::fs::write(GNTALLOC_LIMIT, (pages + 1024).to_string()).with_context(|| {
                format!("raising {GNTALLOC_LIMIT} from {limit} to fit {pages} pages")
            })?;
            tracing::info!(
                "raised gntalloc's grant limit from {limit} to {}",
                pages + 1024
            );
        }
        let region = Arc::new(
            xen::linux::GntallocRegion::alloc(self.domid, pages)
                .context("self-granted memory for the mbuf pool (xen.grant_copy = \"privcmd\")")?,
        );
        // SAFETY: the region stays mapped while the host (which outlives the pool) holds it,
        // and nothing else uses its pages.
        let pool = unsafe {
            pmd::Mempool::from_memory(
                "netbackd",
                n,
                256,
                room.min(crate::config::DATA_ROOM_DEFAULT),
                region.as_ptr(),
                region.len(),
                4096,
            )
        }
        .context("mbuf pool in self-granted pages")?;
        tracing::info!(
            "mbuf pool: {n} mbufs in {pages} pages dom0 granted to itself (privcmd grant copy)"
        );
        self.regions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(region);
        Ok(pool)
    }
}

fn default_pool(n: u32, room: u16) -> anyhow::Result<pmd::Mempool> {
    pmd::Mempool::new("netbackd", n, 256, room, -1).with_context(|| {
        format!(
            "mbuf pool: {n} mbufs of {room} bytes (eal.mbufs, eal.mbuf_data_room; the EAL's \
             memory, -m or hugepages, must hold them)"
        )
    })
}

/// A clean stop ends a group's delivery of frames in flight once nothing moved for this
/// long with every backlog empty (frames sent to a looped port come back well within it).
const DRAIN_QUIET: Duration = Duration::from_millis(20);

/// Where the configuration came from, to read it again on SIGHUP (`flag`).
pub struct Reload {
    pub path: std::path::PathBuf,
    pub overrides: crate::config::Overrides,
    pub flag: &'static AtomicBool,
}

/// Runs until `stop` is set (by a signal handler).
pub fn run(cfg: Config, reload: Reload, stop: &'static AtomicBool) -> anyhow::Result<()> {
    match cfg.host {
        HostKind::Xen => {
            let probe = xen::linux::probe().context(
                "host = \"xen\" needs a Xen dom0 with /dev/xen (use host = \"sim\" elsewhere)",
            )?;
            if cfg.xen.grant_copy == CopyPath::Privcmd {
                if let Some(why) = &probe.fast_path_missing {
                    bail!("xen.grant_copy = \"privcmd\" is not possible here: {why}");
                }
            }
            tracing::info!(
                "Xen host: control domain {:?}, grant copy through {:?}",
                probe.control_domain,
                cfg.xen.grant_copy
            );
            let host = LinuxHost {
                ev: xen::linux::LinuxEvtchn::open().context("/dev/xen/evtchn")?,
                copy: cfg.xen.grant_copy,
                xenstore: cfg.xen.xenstore.clone(),
                domid: cfg.backend.domid,
                regions: Default::default(),
            };
            serve(&cfg, &reload, &host, stop)
        }
        HostKind::Sim => {
            let root = cfg.sim.root.clone().expect("validated");
            let layout = xen::sim::SimLayout::new(&root);
            let sock = layout.xenstore_socket();
            if !sock.exists() {
                bail!(
                    "sim.root {root}: no xenstored socket at {} (is `netbackd sim` running?)",
                    sock.display()
                );
            }
            let host = SimBackendHost {
                layout,
                domid: cfg.backend.domid,
            };
            serve(&cfg, &reload, &host, stop)
        }
    }
}

/// EAL, the port, the groups on their lcores, the control loop and metrics, until `stop`.
fn serve<H: Host>(
    cfg: &Config,
    reload: &Reload,
    host: &H,
    stop: &'static AtomicBool,
) -> anyhow::Result<()> {
    let devargs = cfg.port[0].devargs.clone();
    let name = devargs.split(',').next().unwrap_or(&devargs).to_string();
    let mut args = cfg.eal.args.clone();
    args.extend(["--file-prefix".to_string(), cfg.eal.file_prefix.clone()]);
    if name.starts_with("net_") {
        args.extend(["--vdev".to_string(), devargs.clone()]);
    } else {
        args.extend(["-a".to_string(), devargs.clone()]);
    }
    let t0 = Instant::now();
    let eal = pmd::Eal::init(&args).context("EAL initialisation (eal.args)")?;
    {
        let room = cfg.eal.data_room(cfg.port[0].mtu);
        let pool = Arc::new(host.mempool(cfg.eal.mbufs, room, cfg.eal.mbuf_data_room.is_some())?);
        tracing::info!(
            "mbuf pool: {} mbufs, data room {} bytes",
            cfg.eal.mbufs,
            pool.data_room()
        );
        let mut port =
            pmd::Port::by_name(&name).with_context(|| format!("port[0].devargs {devargs}"))?;
        let info = port.info().context("port info")?;
        let caps = TxCaps::from_port(&info);
        let groups = cfg.engine.groups as u16;
        let pcfg = pmd::PortConfig {
            rx_queues: groups,
            tx_queues: groups,
            tx_offloads: caps.port_offloads(),
            mtu: Some(cfg.port[0].mtu),
            ..Default::default()
        };
        port.configure_and_start(&pcfg, &pool).with_context(|| {
            format!("starting port {name} (port[0], mtu = {})", cfg.port[0].mtu)
        })?;
        let port = Arc::new(port);
        tracing::info!("port {name} ({}) started, {groups} group(s)", info.driver);

        let ecfg = EngineConfig {
            budget: cfg.engine.budget as usize,
            backlog_bytes: cfg.engine.backlog_kib as usize * 1024,
            stall_ns: u64::from(cfg.engine.stall_secs) * 1_000_000_000,
            gro: cfg.engine.gro,
            ..Default::default()
        };
        let scfg = SwitchConfig {
            mode: match cfg.switch.mode {
                SwitchMode::Learning => Mode::Learning,
                SwitchMode::CrossConnect => Mode::CrossConnect,
            },
            ageing_ns: u64::from(cfg.switch.ageing_secs) * 1_000_000_000,
            max_learned: cfg.switch.max_learned as usize,
        };
        let adaptive = (cfg.engine.idle_sleep_us > 0).then(|| Adaptive {
            idle_ns: u64::from(cfg.engine.idle_sleep_us) * 1000,
            max_sleep: Duration::from_micros(u64::from(cfg.engine.max_sleep_us)),
        });
        let group_stop = Arc::new(AtomicBool::new(false));
        let workers = pmd::lcore::workers();
        let mut group_counters = Vec::new();
        let mut lcores = Vec::new();
        let mut threads = Vec::new();
        let mut built = Vec::new();
        for gi in 0..groups {
            let io = GroupIo {
                pool: pool.clone(),
                port: port.clone(),
                port_queue: gi,
                caps,
                soft: SoftGso::new(&format!("g{gi}"), 2047, -1).context("GSO pools")?,
            };
            let (gc, ev) = host.group()?;
            let mut g = Group::new(ecfg, gc, ev, io, scfg);
            g.set_port_mtu(cfg.port[0].mtu);
            group_counters.push(g.counters.clone());
            built.push(g);
        }
        // One L2 domain: every vif reachable from every group (handoff rings between them).
        let handles = connect_groups(&mut built, cfg.engine.handoff_ring)
            .context("handoff rings between the groups")?;
        let ctl_handles = handles.clone();
        let group_lcores: Vec<Option<u32>> = (0..built.len())
            .map(|gi| workers.get(gi).copied())
            .collect();
        // How long a clean stop waits for RX buffers (live: SIGHUP may change it).
        let drain_ms = Arc::new(AtomicU32::new(cfg.backend.stop_drain_ms));
        for (gi, mut g) in built.into_iter().enumerate() {
            let s = group_stop.clone();
            let dm = drain_ms.clone();
            let mut work = move || {
                g.run(&s, adaptive);
                let max = Duration::from_millis(u64::from(dm.load(Ordering::Relaxed)));
                let d = g.drain(DRAIN_QUIET, max);
                if d.timed_out {
                    tracing::warn!(
                        "group {gi}: stopping: {} frame(s) in flight delivered, {} dropped: \
                         their guests posted no RX buffers within backend.stop_drain_ms = {} ms",
                        d.delivered,
                        d.dropped,
                        max.as_millis()
                    );
                } else {
                    tracing::info!(
                        "group {gi}: stopped taking guest TX requests; {} frame(s) in flight \
                         delivered in {:.1} ms",
                        d.delivered,
                        d.elapsed.as_secs_f64() * 1e3
                    );
                }
            };
            match workers.get(gi) {
                Some(&lc) => {
                    pmd::lcore::launch(lc, move || {
                        work();
                        0
                    })?;
                    lcores.push(lc);
                }
                // Fewer lcores than groups: a plain thread (it shares the main core).
                None => threads.push(std::thread::spawn(work)),
            }
        }
        let xs = host.xenstore()?;
        let journal_dir = host.journal_dir();
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&journal_dir)
                .with_context(|| format!("ring journal directory {}", journal_dir.display()))?;
        }
        let bcfg = BackendConfig {
            journal_dir: Some(journal_dir),
            backend_dom: cfg.backend.domid,
            max_queues: cfg.backend.max_queues,
            vlans: cfg.vlans(),
            rates: cfg.rates(),
            pins: cfg
                .vif
                .iter()
                .filter_map(|v| v.group.map(|g| ((v.domid, v.devid), usize::from(g))))
                .collect(),
            ..Default::default()
        };
        let (gm, ev) = host.backend()?;
        let mut backend =
            Backend::new(bcfg, xs, gm, ev, handles).context("watching the backend directory")?;
        if cfg.backend.ctrl_ring {
            backend.enable_ctrl_ring(host.ctrl_copy().context("grant copy for control rings")?);
        }
        let steering = backend.enable_nic_steering(port.clone());
        tracing::info!(
            "serving the vifs of dom{}'s backend directory (ready in {:.0} ms)",
            cfg.backend.domid,
            t0.elapsed().as_secs_f64() * 1e3
        );
        let shared = Arc::new(crate::metrics::Shared {
            vifs: std::sync::Mutex::new(crate::ledger::Vifs::new(Duration::from_secs(u64::from(
                cfg.metrics.closed_vif_grace_secs,
            )))),
            domains: std::sync::Mutex::new(crate::ledger::Domains::new(
                cfg.metrics.remembered_domains as usize,
            )),
            groups: group_counters,
            port: std::sync::Mutex::new(Some((name.clone(), port.clone()))),
            pool: std::sync::Mutex::new(Some(pool.clone())),
            steering,
        });
        if !cfg.metrics.listen.is_empty() {
            let addr = crate::metrics::serve(&cfg.metrics.listen, shared.clone())?;
            tracing::info!("metrics on http://{addr}/metrics");
        }
        let (ops_tx, ops) = std::sync::mpsc::channel();
        let ctl = Arc::new(crate::ctl::Ctl::new(
            shared.clone(),
            ctl_handles.clone(),
            group_lcores,
            ops_tx,
            crate::ctl::PortStatic {
                driver: info.driver.clone(),
                rx_queues: groups,
                tx_queues: groups,
                max_rx_queues: info.max_rx_queues,
                max_tx_queues: info.max_tx_queues,
                offloads: offload_names(&caps, true),
                software: offload_names(&caps, false),
            },
            format!("{:?}", cfg.switch.mode).to_lowercase(),
            std::env::var("NETBACKD_FAULT_INJECTION").as_deref() == Ok("1"),
        ));
        let _ctl_server = if cfg.ctl.socket.is_empty() {
            None
        } else {
            let p = std::path::Path::new(&cfg.ctl.socket);
            let server = crate::ctl::serve(p, ctl.clone())?;
            tracing::info!("control socket {}", p.display());
            Some(server)
        };
        // The toolstack's side of a detach, written by the daemon on the operator's behalf.
        let toolstack_xs = host.xenstore()?;
        let notify = crate::sdnotify::Notifier::from_env();
        let mut watchdog = crate::sdnotify::watchdog_interval().map(|every| {
            tracing::info!("systemd watchdog: a ping every {every:?} while every group polls");
            crate::sdnotify::Watchdog::new(every, iterations(&shared))
        });
        let step = watchdog.as_ref().map_or(Duration::from_millis(100), |w| {
            (w.every() / 2).clamp(Duration::from_millis(5), Duration::from_millis(100))
        });
        // The port is up, the groups poll, the backend watches xenstore, metrics and the
        // control socket answer: ready.
        if let Some(n) = &notify {
            n.send(&format!("READY=1\nSTATUS={}", status_line(&[], groups)));
        }
        let mut running = cfg.clone();
        let mut last_status = String::new();
        let mut last = Vec::new();
        let mut last_balance = Instant::now();
        // Port receive errors (frames over the MTU among them), logged at most every 10 s.
        let mut rx_errors = (port.stats().map_or(0, |s| s.ierrors), Instant::now());
        while !stop.load(Ordering::Relaxed) {
            // Control rings are polled: step often while any is connected.
            let ctrl = Duration::from_millis(10);
            backend.step(if backend.has_ctrl_rings() {
                step.min(ctrl)
            } else {
                step
            });
            while let Ok(op) = ops.try_recv() {
                match op {
                    crate::ctl::Op::SetRate(d, n, rate, reply) => {
                        backend.set_operator_rate(d, n, rate);
                        let _ = reply.send(Ok(match rate {
                            Some(r) => {
                                format!("vif{d}.{n}: rate {} bytes per {} us", r.bytes, r.usec)
                            }
                            None => format!("vif{d}.{n}: operator rate removed"),
                        }));
                    }
                    crate::ctl::Op::Detach(d, n, reply) => {
                        let _ = reply.send(detach(&toolstack_xs, cfg.backend.domid, d, n));
                    }
                    crate::ctl::Op::MoveQueue(d, n, q, g, reply) => {
                        let _ = reply.send(backend.move_queue(d, n, q, g));
                    }
                }
            }
            if rx_errors.1.elapsed() >= Duration::from_secs(10) {
                let now = port.stats().map_or(rx_errors.0, |s| s.ierrors);
                if now > rx_errors.0 {
                    tracing::warn!(
                        "port {name}: {} frames received in error in {:.0} s (longer than \
                         port[0].mtu = {}, or malformed); netbackd_port_drops_total counts them",
                        now - rx_errors.0,
                        rx_errors.1.elapsed().as_secs_f64(),
                        cfg.port[0].mtu
                    );
                }
                rx_errors = (now, Instant::now());
            }
            let every = running.engine.rebalance_secs;
            if every > 0 && last_balance.elapsed() >= Duration::from_secs(u64::from(every)) {
                last_balance = Instant::now();
                backend.rebalance(f64::from(running.engine.rebalance_gap_pct) / 100.0);
            }
            if reload.flag.swap(false, Ordering::Relaxed) {
                reread(reload, &mut running, &mut backend, &ctl_handles);
            }
            let events = backend.take_events();
            if !events.is_empty() {
                let mut doms = shared.domains.lock().unwrap_or_else(|e| e.into_inner());
                for e in &events {
                    doms.record(e);
                }
            }
            let now = backend.status();
            if now != last {
                for s in &now {
                    tracing::info!(
                        "dom{} vif{} ({}): state {} with {} queue(s)",
                        s.domid,
                        s.devid,
                        s.name,
                        s.state,
                        s.queues
                    );
                }
            }
            // Every step, not only on a visible change: a vif closed and reconnected
            // within one step looks the same but has new counters, and closed vifs' series
            // expire with time.
            let mut views = Vec::new();
            for s in &now {
                for (q, c) in backend.counters(s.domid, s.devid).into_iter().enumerate() {
                    views.push(crate::metrics::QueueView {
                        domid: s.domid,
                        devid: s.devid,
                        queue: q as u16,
                        name: s.name.clone(),
                        state: s.state,
                        counters: c,
                    });
                }
            }
            let known = now.iter().map(|s| ((s.domid, s.devid), s.state)).collect();
            shared
                .vifs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(&events, &views, &known, Instant::now());
            let vlans = running.vlans();
            let ctl_view = now
                .iter()
                .map(|s| {
                    let counters = backend.counters(s.domid, s.devid);
                    crate::ctl::VifView {
                        domid: s.domid,
                        devid: s.devid,
                        name: s.name.clone(),
                        state: s.state,
                        vlan: vlans.get(&(s.domid, s.devid)).copied(),
                        queues: backend
                            .placement(s.domid, s.devid)
                            .into_iter()
                            .zip(counters)
                            .map(|((id, g), c)| (id.queue, g, c))
                            .collect(),
                    }
                })
                .collect();
            *ctl.vifs.lock().unwrap_or_else(|e| e.into_inner()) = ctl_view;
            if let Some(n) = &notify {
                let st = status_line(&now, groups);
                if st != last_status {
                    n.send(&format!("STATUS={st}"));
                    last_status = st;
                }
                if watchdog
                    .as_mut()
                    .is_some_and(|w| w.due(iterations(&shared)))
                {
                    n.send("WATCHDOG=1");
                }
            }
            last = now;
        }
        if let Some(n) = &notify {
            n.send("STOPPING=1\nSTATUS=stopping");
        }
        tracing::info!("stopping");
        drain_ms.store(running.backend.stop_drain_ms, Ordering::Relaxed);
        group_stop.store(true, Ordering::Relaxed);
        for lc in lcores {
            pmd::lcore::wait(lc);
        }
        for t in threads {
            let _ = t.join();
        }
        match running.backend.on_stop {
            // Channels unbound and rings unmapped; xenstore untouched: the next daemon
            // resumes every connected vif where this one left it.
            OnStop::Keep => {
                backend.release();
                tracing::info!(
                    "vifs left connected for the next start to resume (backend.on_stop = \"keep\")"
                );
            }
            OnStop::Close => {
                let n = backend.close_all();
                tracing::info!("{n} vif(s) closed (backend.on_stop = \"close\")");
            }
        }
        drop(backend);
        shared.port.lock().unwrap_or_else(|e| e.into_inner()).take();
        shared.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
    drop(eal);
    tracing::info!("stopped");
    Ok(())
}

/// Every group's iteration counter now.
fn iterations(shared: &crate::metrics::Shared) -> Vec<u64> {
    shared
        .groups
        .iter()
        .map(|g| g.iterations.load(Ordering::Relaxed))
        .collect()
}

/// systemd's STATUS= line.
fn status_line(vifs: &[control::VifStatus], groups: u16) -> String {
    let connected = vifs
        .iter()
        .filter(|v| v.state == control::state::CONNECTED)
        .count();
    format!(
        "{} vif(s), {connected} connected, {} queue(s) in {groups} group(s)",
        vifs.len(),
        vifs.iter().map(|v| v.queues).sum::<usize>()
    )
}

/// Names of the TX offloads the port does for netbackd (`by_port`), or of those netbackd
/// does in software because the port cannot.
fn offload_names(caps: &TxCaps, by_port: bool) -> Vec<String> {
    [
        ("ipv4_cksum", caps.ipv4_cksum),
        ("tcp_cksum", caps.tcp_cksum),
        ("udp_cksum", caps.udp_cksum),
        ("tcp_tso", caps.tso),
        ("tcp6_tso", caps.tso6),
    ]
    .into_iter()
    .filter(|(_, on)| *on == by_port)
    .map(|(n, _)| n.to_string())
    .collect()
}

/// What the toolstack does to detach a vif (libxl: `online` = 0 and the backend's state to
/// Closing); the backend's watch sees it and closes the vif.
fn detach(xs: &XenStore, backend_dom: u16, domid: u16, devid: u32) -> Result<String, String> {
    let be = format!("/local/domain/{backend_dom}/backend/vif/{domid}/{devid}");
    let w = |k: &str, v: &str| {
        xs.write(xen::Tx::NONE, &format!("{be}/{k}"), v)
            .map_err(|e| format!("vif{domid}.{devid}: writing {be}/{k}: {e}"))
    };
    w("online", "0")?;
    w("state", &control::state::CLOSING.to_string())?;
    tracing::info!(
        domid,
        devid,
        "detach requested by the operator (netbackd ctl)"
    );
    Ok(format!("vif{domid}.{devid}: detach requested"))
}

/// SIGHUP: reads the configuration again; applies the per-vif VLANs and rates, the
/// switch's ageing time and the log filter live, or, if anything else changed (or the file
/// is invalid), refuses all of it with a message naming the keys and keeps `running`.
fn reread<M: GrantMap, E: EventChannel + Clone>(
    reload: &Reload,
    running: &mut Config,
    backend: &mut Backend<M, E>,
    groups: &[dataplane::engine::GroupHandle],
) {
    let origin = reload.path.display();
    let new = match Config::load_with(&reload.path, &reload.overrides) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: {e:#}; keeping the running configuration");
            return;
        }
    };
    let keys = crate::config::restart_keys(running, &new);
    if !keys.is_empty() {
        tracing::error!(
            "SIGHUP: {origin}: {} cannot change while netbackd runs (restart it for that); \
             keeping the running configuration, nothing applied",
            keys.join(", ")
        );
        return;
    }
    let mut applied = Vec::new();
    let (old_vlans, new_vlans) = (running.vlans(), new.vlans());
    let mut vifs: Vec<(u16, u32)> = old_vlans.keys().chain(new_vlans.keys()).copied().collect();
    vifs.sort();
    vifs.dedup();
    for (d, n) in vifs {
        let v = new_vlans.get(&(d, n)).copied();
        if old_vlans.get(&(d, n)).copied() != v {
            backend.set_vlan(d, n, v);
            applied.push(format!("vif{d}.{n} vlan {v:?}"));
        }
    }
    let (old_rates, new_rates) = (running.rates(), new.rates());
    let mut vifs: Vec<(u16, u32)> = old_rates.keys().chain(new_rates.keys()).copied().collect();
    vifs.sort();
    vifs.dedup();
    for (d, n) in vifs {
        let r = new_rates.get(&(d, n)).copied();
        if old_rates.get(&(d, n)).copied() != r {
            backend.set_operator_rate(d, n, r);
            applied.push(format!(
                "vif{d}.{n} rate {}",
                r.map_or("none".into(), |r| format!("{},{}", r.bytes, r.usec))
            ));
        }
    }
    if new.switch.ageing_secs != running.switch.ageing_secs {
        for g in groups {
            g.set_ageing(u64::from(new.switch.ageing_secs) * 1_000_000_000);
        }
        applied.push(format!("switch.ageing_secs {}", new.switch.ageing_secs));
    }
    if new.backend.on_stop != running.backend.on_stop {
        applied.push(format!("backend.on_stop {:?}", new.backend.on_stop).to_lowercase());
    }
    if new.backend.stop_drain_ms != running.backend.stop_drain_ms {
        applied.push(format!(
            "backend.stop_drain_ms {}",
            new.backend.stop_drain_ms
        ));
    }
    if new.log.filter != running.log.filter {
        if let Some(f) = &new.log.filter {
            match crate::set_log_filter(f) {
                Ok(()) => applied.push(format!("log.filter {f:?}")),
                Err(e) => tracing::error!("SIGHUP: {e}"),
            }
        }
    }
    *running = new;
    tracing::info!(
        "SIGHUP: {origin} reloaded; {}",
        if applied.is_empty() {
            "nothing changed".to_string()
        } else {
            format!("applied: {}", applied.join(", "))
        }
    );
}
