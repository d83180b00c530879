//! The xenbus backend: one state machine per vif, driven by xenstore watches (the job of
//! Linux xen-netback's xenbus.c).
//!
//! For every `/local/domain/<B>/backend/vif/<domid>/<devid>` the toolstack creates, the
//! backend advertises its features and goes to InitWait. When the frontend reaches
//! Initialised or Connected it reads and validates the frontend's keys (every value is
//! untrusted), maps the rings, binds the event channels, hands the queues to the
//! least-loaded group and goes to Connected. When the frontend closes, the toolstack sets
//! `online`=0 or Closing, or removes the directory, the queues are taken back (the group
//! acknowledges once nothing is in flight) and the backend goes to Closed. A bad or missing
//! frontend value writes an `error` node and closes that vif only.
use dataplane::credit::{parse_rate, Rate};
use dataplane::engine::{least_loaded, Features, GroupHandle, QueueCounters, QueueId, QueueSetup};
use dataplane::netif::{BackRing, SharedPage};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use xen::{EventChannel, GrantMap, Mapping, Tx, XenStore};

/// xenbus states.
pub mod state {
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// Why a frontend's configuration was refused (written to the backend's `error` node).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrontendError {
    #[error("{0} missing")]
    Missing(String),
    #[error("{key} = {value:?} is not valid: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("mapping {0} failed")]
    Map(String),
    #[error("binding {0} failed")]
    Bind(String),
    #[error("no group to run the queues")]
    NoGroup,
}

/// Backend configuration.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// This domain's id (dom0 normally).
    pub backend_dom: u16,
    /// `multi-queue-max-queues` to advertise.
    pub max_queues: u32,
    /// How long to wait for a group to let go of a queue.
    pub remove_timeout: Duration,
    /// Access VLAN per vif (domid, devid), from the daemon's configuration.
    pub vlans: HashMap<(u16, u32), u16>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            backend_dom: 0,
            max_queues: 4,
            remove_timeout: Duration::from_secs(5),
            vlans: HashMap::new(),
        }
    }
}

/// What the backend knows of one vif.
struct Vif {
    be: String,
    fe: String,
    /// Our state as written to xenstore.
    state: u32,
    queues: Vec<(QueueId, usize)>,
    counters: Vec<Arc<QueueCounters>>,
    /// Local event-channel ports bound for this vif (unbound after the queues are gone).
    ports: Vec<u32>,
    rate: Option<String>,
    /// The guest's name (`/local/domain/<domid>/name`), for logs and metrics labels.
    name: String,
}

/// A vif the backend serves, for reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifStatus {
    pub domid: u16,
    pub devid: u32,
    pub state: u32,
    pub queues: usize,
    /// The guest's name when xenstore has it, else empty.
    pub name: String,
}

/// The xenbus backend.
pub struct Backend<M: GrantMap, E: EventChannel + Clone> {
    cfg: BackendConfig,
    xs: XenStore,
    gm: M,
    ev: E,
    groups: Vec<GroupHandle>,
    vifs: HashMap<(u16, u32), Vif>,
    root: String,
}

fn parse_u32(v: &str) -> Option<u32> {
    (!v.is_empty() && v.len() <= 10 && v.bytes().all(|c| c.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

impl<M: GrantMap, E: EventChannel + Clone> Backend<M, E> {
    /// Starts watching the backend directory of `cfg.backend_dom`.
    pub fn new(
        cfg: BackendConfig,
        xs: XenStore,
        gm: M,
        ev: E,
        groups: Vec<GroupHandle>,
    ) -> Result<Self, xen::XenError> {
        let root = format!("/local/domain/{}/backend/vif", cfg.backend_dom);
        xs.watch(&root, "backend")?;
        Ok(Backend {
            cfg,
            xs,
            gm,
            ev,
            groups,
            vifs: HashMap::new(),
            root,
        })
    }

    /// Vifs currently known.
    pub fn status(&self) -> Vec<VifStatus> {
        let mut v: Vec<_> = self
            .vifs
            .iter()
            .map(|(&(domid, devid), vif)| VifStatus {
                domid,
                devid,
                state: vif.state,
                queues: vif.queues.len(),
                name: vif.name.clone(),
            })
            .collect();
        v.sort_by_key(|s| (s.domid, s.devid));
        v
    }

    /// Counters of a vif's queues.
    pub fn counters(&self, domid: u16, devid: u32) -> Vec<Arc<QueueCounters>> {
        self.vifs
            .get(&(domid, devid))
            .map(|v| v.counters.clone())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for xenstore changes and handles them; returns events handled.
    pub fn step(&mut self, timeout: Duration) -> usize {
        let mut n = 0;
        let mut ev = self.xs.read_watch_timeout(timeout);
        while let Some(e) = ev {
            n += 1;
            self.on_event(&e.path);
            ev = self.xs.try_read_watch();
        }
        self.close_disabled();
        n
    }

    /// Closes vifs one of whose queues a group disabled (the frontend broke the protocol):
    /// `error` node, queues taken back, Closed. The frontend can reconnect from scratch.
    fn close_disabled(&mut self) {
        let broken: Vec<_> = self
            .vifs
            .iter()
            .filter(|(_, v)| v.state == state::CONNECTED)
            .filter_map(|(k, v)| {
                v.counters
                    .iter()
                    .find_map(|c| c.disabled.get().copied())
                    .map(|why| (*k, why))
            })
            .collect();
        for (key, why) in broken {
            let be = self.vifs[&key].be.clone();
            tracing::warn!(
                domid = key.0,
                devid = key.1,
                "vif disabled by the engine: frontend broke the netif protocol ({why}); closing"
            );
            let msg = format!("frontend broke the netif protocol: {why}");
            let _ = self.xs.write(Tx::NONE, &format!("{be}/error"), &msg);
            self.disconnect(key);
            self.write_state(key, state::CLOSED);
        }
    }

    fn on_event(&mut self, path: &str) {
        if let Some(rest) = path.strip_prefix(&self.root) {
            let mut it = rest.trim_start_matches('/').split('/');
            match (
                it.next().and_then(|d| d.parse().ok()),
                it.next().and_then(parse_u32),
            ) {
                (Some(domid), Some(devid)) => self.reconcile(domid, devid),
                (Some(domid), None) => self.rescan_domain(domid),
                _ => self.rescan(),
            }
        } else if let Some(key) = path
            .split('/')
            .nth(3)
            .filter(|_| path.starts_with("/local/domain/"))
        {
            // A frontend path: /local/domain/<domid>/device/vif/<devid>/...
            let parts: Vec<&str> = path.split('/').collect();
            if let (Ok(domid), Some(devid)) =
                (key.parse::<u16>(), parts.get(6).and_then(|d| parse_u32(d)))
            {
                if parts.get(4) == Some(&"device") && parts.get(5) == Some(&"vif") {
                    self.reconcile(domid, devid);
                }
            }
        }
    }

    fn rescan(&mut self) {
        let doms = self
            .xs
            .directory(Tx::NONE, &self.root)
            .ok()
            .flatten()
            .unwrap_or_default();
        for d in doms {
            if let Ok(domid) = d.parse() {
                self.rescan_domain(domid);
            }
        }
        // Vifs whose directory vanished.
        let gone: Vec<_> = self.vifs.keys().copied().collect();
        for (d, n) in gone {
            self.reconcile(d, n);
        }
    }

    fn rescan_domain(&mut self, domid: u16) {
        let devs = self
            .xs
            .directory(Tx::NONE, &format!("{}/{domid}", self.root))
            .ok()
            .flatten()
            .unwrap_or_default();
        for dev in devs {
            if let Some(devid) = parse_u32(&dev) {
                self.reconcile(domid, devid);
            }
        }
        let known: Vec<_> = self.vifs.keys().filter(|k| k.0 == domid).copied().collect();
        for (d, n) in known {
            self.reconcile(d, n);
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        self.xs.read(Tx::NONE, path).ok().flatten()
    }

    fn write_state(&mut self, key: (u16, u32), st: u32) {
        if let Some(v) = self.vifs.get_mut(&key) {
            if v.state != st {
                v.state = st;
                let _ = self
                    .xs
                    .write(Tx::NONE, &format!("{}/state", v.be), &st.to_string());
            }
        }
    }

    /// Brings one vif's state machine up to date with xenstore.
    fn reconcile(&mut self, domid: u16, devid: u32) {
        let key = (domid, devid);
        let be = format!("{}/{domid}/{devid}", self.root);
        if self.read(&format!("{be}/frontend")).is_none() {
            // Directory removed (or never complete): let go of everything.
            self.disconnect(key);
            self.vifs.remove(&key);
            return;
        }
        if !self.vifs.contains_key(&key) {
            let fe = self.read(&format!("{be}/frontend")).unwrap_or_default();
            let name = self
                .read(&format!("/local/domain/{domid}/name"))
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>();
            tracing::info!(domid, devid, name = %name, frontend = %fe, "new vif");
            self.vifs.insert(
                key,
                Vif {
                    be: be.clone(),
                    fe: fe.clone(),
                    state: 0,
                    queues: Vec::new(),
                    counters: Vec::new(),
                    ports: Vec::new(),
                    rate: None,
                    name,
                },
            );
            let _ = self
                .xs
                .watch(&format!("{fe}/state"), &format!("fe:{domid}:{devid}"));
            self.advertise(&be);
            self.write_state(key, state::INIT_WAIT);
        }
        let online = self.read(&format!("{be}/online")).as_deref() != Some("0");
        let be_state = self
            .read(&format!("{be}/state"))
            .and_then(|s| parse_u32(&s))
            .unwrap_or(0);
        let fe = self.vifs[&key].fe.clone();
        let fe_state = self
            .read(&format!("{fe}/state"))
            .and_then(|s| parse_u32(&s))
            .unwrap_or(0);
        let mut ours = self.vifs[&key].state;
        // The toolstack re-created the directory (state 1 again, our keys gone) before we saw
        // it removed: start this vif over as a new one.
        if be_state == state::INITIALISING && ours != state::INITIALISING && ours != 0 {
            self.disconnect(key);
            if let Some(v) = self.vifs.get_mut(&key) {
                v.state = 0;
                v.rate = None;
            }
            self.advertise(&be);
            self.write_state(key, state::INIT_WAIT);
            ours = state::INIT_WAIT;
        }
        // The toolstack asks to detach (online=0 / Closing written to our state).
        if !online || (be_state == state::CLOSING && ours != state::CLOSING) {
            if ours != state::CLOSED {
                tracing::info!(domid, devid, "detach requested by the toolstack; closing");
            }
            self.disconnect(key);
            self.write_state(key, state::CLOSED);
            return;
        }
        match fe_state {
            state::INITIALISED | state::CONNECTED if ours == state::INIT_WAIT => {
                match self.connect(key, domid, devid) {
                    Ok(()) => {
                        let _ =
                            self.xs
                                .write(Tx::NONE, &format!("{be}/hotplug-status"), "connected");
                        self.write_state(key, state::CONNECTED);
                        tracing::info!(domid, devid, "vif connected");
                    }
                    Err(e) => {
                        tracing::warn!(domid, devid, "frontend configuration refused: {e}");
                        let _ = self
                            .xs
                            .write(Tx::NONE, &format!("{be}/error"), &e.to_string());
                        self.disconnect(key);
                        self.write_state(key, state::CLOSED);
                    }
                }
            }
            state::CLOSING | state::CLOSED if ours == state::CONNECTED => {
                tracing::info!(domid, devid, "frontend closed");
                self.disconnect(key);
                self.write_state(key, state::CLOSED);
            }
            // A frontend starting over (guest reboot, driver reload) gets a fresh connection.
            state::INITIALISING | state::INIT_WAIT
                if ours == state::CLOSED || ours == state::CONNECTED =>
            {
                self.disconnect(key);
                let _ = self.xs.rm(Tx::NONE, &format!("{be}/error"));
                self.advertise(&be);
                self.write_state(key, state::INIT_WAIT);
            }
            _ => {}
        }
        // Live rate changes.
        let rate = self.read(&format!("{be}/rate"));
        if self.vifs.get(&key).is_some_and(|v| v.rate != rate) {
            let r = match rate.as_deref().map(parse_rate) {
                None => Rate::UNLIMITED,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    tracing::warn!(domid, devid, "rate {rate:?} ignored (unlimited): {e}");
                    Rate::UNLIMITED
                }
            };
            tracing::info!(domid, devid, "rate set to {rate:?}");
            if let Some(v) = self.vifs.get_mut(&key) {
                v.rate = rate;
                for (id, g) in &v.queues {
                    self.groups[*g].set_rate(*id, r);
                }
            }
        }
    }

    fn advertise(&self, be: &str) {
        let max_q = self.cfg.max_queues.to_string();
        for (k, v) in [
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-split-event-channels", "1"),
            ("feature-multicast-control", "1"),
            ("multi-queue-max-queues", max_q.as_str()),
        ] {
            let _ = self.xs.write(Tx::NONE, &format!("{be}/{k}"), v);
        }
    }

    fn fe_u32(&self, fe: &str, key: &str) -> Result<u32, FrontendError> {
        let v = self
            .read(&format!("{fe}/{key}"))
            .ok_or_else(|| FrontendError::Missing(key.into()))?;
        parse_u32(&v).ok_or(FrontendError::Invalid {
            key: key.into(),
            value: v.chars().take(32).collect(),
            why: "not a decimal number",
        })
    }

    fn fe_flag(&self, fe: &str, key: &str) -> bool {
        self.read(&format!("{fe}/{key}")).as_deref() == Some("1")
    }

    fn connect(&mut self, key: (u16, u32), domid: u16, devid: u32) -> Result<(), FrontendError> {
        let fe = self.vifs[&key].fe.clone();
        let be = self.vifs[&key].be.clone();
        if self.fe_u32(&fe, "request-rx-copy")? != 1 {
            return Err(FrontendError::Invalid {
                key: "request-rx-copy".into(),
                value: "0".into(),
                why: "only copying receive is supported",
            });
        }
        let nq = match self.read(&format!("{fe}/multi-queue-num-queues")) {
            None => 1,
            Some(v) => match parse_u32(&v) {
                Some(n) if n >= 1 && n <= self.cfg.max_queues => n,
                _ => {
                    return Err(FrontendError::Invalid {
                        key: "multi-queue-num-queues".into(),
                        value: v,
                        why: "must be 1..=multi-queue-max-queues",
                    })
                }
            },
        };
        let features = Features {
            sg: self.fe_flag(&fe, "feature-sg"),
            gso_tcpv4: self.fe_flag(&fe, "feature-gso-tcpv4"),
            gso_tcpv6: self.fe_flag(&fe, "feature-gso-tcpv6"),
            gso_prefix: self.fe_flag(&fe, "feature-gso-tcpv4-prefix"),
            mcast: self.fe_flag(&fe, "request-multicast-control"),
        };
        let mac = self
            .read(&format!("{be}/mac"))
            .and_then(|m| {
                let v: Vec<u8> = m
                    .split(':')
                    .filter_map(|p| u8::from_str_radix(p, 16).ok())
                    .collect();
                <[u8; 6]>::try_from(v).ok()
            })
            .ok_or_else(|| FrontendError::Missing("mac (backend)".into()))?;
        let rate = self
            .read(&format!("{be}/rate"))
            .map(|s| parse_rate(&s).unwrap_or(Rate::UNLIMITED))
            .unwrap_or(Rate::UNLIMITED);
        let mut setups = Vec::new();
        for q in 0..nq {
            let base = if nq > 1 {
                format!("{fe}/queue-{q}")
            } else {
                fe.clone()
            };
            let tx_ref = self.fe_u32(&base, "tx-ring-ref")?;
            let rx_ref = self.fe_u32(&base, "rx-ring-ref")?;
            let (ev_tx, ev_rx) = match self.read(&format!("{base}/event-channel")) {
                Some(_) => {
                    let p = self.fe_u32(&base, "event-channel")?;
                    (p, p)
                }
                None => (
                    self.fe_u32(&base, "event-channel-tx")?,
                    self.fe_u32(&base, "event-channel-rx")?,
                ),
            };
            let map = |gref: u32, what: &str| -> Result<SharedPage, FrontendError> {
                let m = Arc::new(
                    self.gm
                        .map(domid, &[gref], true)
                        .map_err(|_| FrontendError::Map(what.into()))?,
                );
                let p = std::ptr::NonNull::new(m.as_ptr())
                    .ok_or_else(|| FrontendError::Map(what.into()))?;
                // SAFETY: the mapping is kept alive by the SharedPage that holds its Arc.
                Ok(unsafe { SharedPage::from_raw(p, Some(m)) })
            };
            let tx = BackRing::attach(map(tx_ref, "tx-ring-ref")?);
            let rx = BackRing::attach(map(rx_ref, "rx-ring-ref")?);
            let local_tx = self
                .ev
                .bind_interdomain(domid, ev_tx)
                .map_err(|_| FrontendError::Bind("event-channel(-tx)".into()))?;
            let local_rx = if ev_rx == ev_tx {
                local_tx
            } else {
                self.ev
                    .bind_interdomain(domid, ev_rx)
                    .map_err(|_| FrontendError::Bind("event-channel-rx".into()))?
            };
            let v = self.vifs.get_mut(&key).expect("known vif");
            v.ports.push(local_tx);
            if local_rx != local_tx {
                v.ports.push(local_rx);
            }
            setups.push(QueueSetup {
                id: QueueId {
                    domid,
                    devid,
                    queue: q as u16,
                },
                tx,
                rx,
                evtchn_tx: local_tx,
                evtchn_rx: local_rx,
                mac,
                vlan: self.cfg.vlans.get(&key).copied(),
                features,
                rate,
                counters: Arc::new(QueueCounters::default()),
            });
        }
        for s in setups {
            let g = least_loaded(&self.groups).ok_or(FrontendError::NoGroup)?;
            let gi = self
                .groups
                .iter()
                .position(|x| std::ptr::eq(x, g))
                .expect("from the list");
            let id = s.id;
            let c = s.counters.clone();
            if !self.groups[gi].add_queue(s) {
                return Err(FrontendError::NoGroup);
            }
            let v = self.vifs.get_mut(&key).expect("known vif");
            v.queues.push((id, gi));
            v.counters.push(c);
        }
        Ok(())
    }

    /// For a daemon shutting down after its groups stopped: unbinds every event channel
    /// (as closing /dev/xen/evtchn does on a real host) but leaves xenstore as it is, so a
    /// restarted backend finds the vifs and reconnects them to the same frontend rings.
    pub fn release(&mut self) {
        for v in self.vifs.values_mut() {
            v.queues.clear();
            v.counters.clear();
            for p in v.ports.drain(..) {
                let _ = self.ev.unbind(p);
            }
        }
    }

    /// Takes the vif's queues back from their groups (each removal acknowledged).
    fn disconnect(&mut self, key: (u16, u32)) {
        let Some(v) = self.vifs.get_mut(&key) else {
            return;
        };
        for (id, g) in v.queues.drain(..) {
            self.groups[g].remove_queue(id, self.cfg.remove_timeout);
        }
        v.counters.clear();
        // The groups no longer use the channels (removal acknowledged): unbind them.
        for p in v.ports.drain(..) {
            let _ = self.ev.unbind(p);
        }
    }
}
