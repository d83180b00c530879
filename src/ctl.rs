//! The operator's control socket (`netbackd ctl`, `netbackd top`): a unix stream socket
//! (mode 0600) the daemon serves, one JSON request per line, one JSON answer per line.
//!
//! Answering never stops or locks a group: counters are the atomics `/metrics` reads, and
//! what only a group knows (ring indices, backlogs, credit, MAC table) is copied by the
//! group itself between two iterations when asked through its command channel
//! ([`dataplane::engine::GroupHandle::inspect`]); a group that does not answer within
//! [`INSPECT_TIMEOUT`] is reported as such and its fields are left out. Changes (rates,
//! detach) go to the control loop, which applies them between two steps, and from there
//! through the groups' command channels. Every connection has its own thread and a read
//! timeout, so a client that never writes holds only itself up.
use crate::metrics::Shared;
use anyhow::Context;
use dataplane::credit::Rate;
use dataplane::engine::{GroupCounters, GroupHandle, GroupSnapshot, QueueCounters};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::config::DEFAULT_SOCKET;
/// How long a group has to answer an inspection.
pub const INSPECT_TIMEOUT: Duration = Duration::from_millis(300);
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request line accepted.
const MAX_LINE: u64 = 4096;
/// Connections served at once; more are refused with an error line.
const MAX_CLIENTS: usize = 32;

/// One request: `{"cmd": "show_vifs", "vif": "7.0"}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every vif, or those of one domain (`"7"`) or one vif (`"7.0"`).
    ShowVifs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vif: Option<String>,
    },
    /// The groups' counters since the last clear; with `clear`, a new interval starts
    /// after this answer (as `ovs-appctl dpif-netdev/pmd-stats-clear`).
    ShowGroups {
        #[serde(default)]
        clear: bool,
    },
    ShowPorts {},
    ShowSwitch {},
    SetRate {
        vif: String,
        bytes: u64,
        usecs: u64,
    },
    ClearRate {
        vif: String,
    },
    /// Closes the vif as the toolstack does (`online` = 0, state Closing) and waits for
    /// the backend to reach Closed.
    Detach {
        vif: String,
    },
    LogLevel {
        filter: String,
    },
    /// Moves queue `queue` of a vif to group `group` while traffic flows.
    MoveQueue {
        vif: String,
        queue: u16,
        group: usize,
    },
    /// Fault injection, refused unless the daemon runs with NETBACKD_FAULT_INJECTION=1:
    /// the group sleeps `ms` between two iterations, as a stuck lcore would.
    DebugStall {
        group: usize,
        ms: u64,
    },
}

/// One answer line: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One ring's indices.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ring {
    pub req_prod: u32,
    pub req_cons: u32,
    pub rsp_prod: u32,
}

/// A vif queue in `show vifs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueInfo {
    pub queue: u16,
    pub group: usize,
    /// False when the group did not answer (stuck): the fields copied from it are absent.
    pub inspected: bool,
    pub tx_ring: Option<Ring>,
    pub rx_ring: Option<Ring>,
    pub backlog_packets: Option<u64>,
    pub backlog_bytes: Option<u64>,
    /// Bytes left in the current credit window (None: unlimited or not inspected).
    pub credit_bytes: Option<u64>,
    pub stalled: Option<bool>,
    pub disabled: Option<String>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub notifications: u64,
    pub credit_throttled: u64,
    pub rx_stalls: u64,
    /// Drops by `direction_reason` (e.g. `tx_runt`, `rx_backlog_full`).
    pub drops: BTreeMap<String, u64>,
}

/// A vif in `show vifs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VifInfo {
    pub domid: u16,
    pub devid: u32,
    pub name: String,
    pub state: u32,
    pub state_name: String,
    pub vlan: Option<u16>,
    /// The rate its queues run at, "BYTES,USECS" (None: unlimited or not inspected).
    pub rate: Option<String>,
    pub queues: Vec<QueueInfo>,
}

/// A group in `show groups`: counts of the interval since the last clear.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group: usize,
    /// The EAL lcore it runs on, or None for a plain thread (fewer lcores than groups).
    pub lcore: Option<u32>,
    /// Its queues as "DOMID.DEVID/QUEUE".
    pub queues: Vec<String>,
    pub counts: GroupSample,
    pub busy_pct: Option<f64>,
    pub cycles_per_packet: Option<f64>,
    pub tx_cycles_per_packet: Option<f64>,
    pub rx_cycles_per_packet: Option<f64>,
    pub mean_batch: Option<f64>,
    pub ops_per_call: Option<f64>,
    pub notifications_per_packet: Option<f64>,
}

/// `show groups`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupsInfo {
    /// Seconds since the interval began (daemon start or the last clear).
    pub interval_secs: f64,
    pub groups: Vec<GroupInfo>,
}

/// `show ports`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PortInfo {
    pub name: String,
    pub driver: String,
    pub link_up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// TX offloads the port does for netbackd, and those done in software instead.
    pub offloads: Vec<String>,
    pub software: Vec<String>,
    pub stats: BTreeMap<String, u64>,
    pub xstats: BTreeMap<String, u64>,
}

/// A MAC table entry in `show switch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MacInfo {
    pub vlan: Option<u16>,
    pub mac: String,
    /// "uplink" or "vif7.0".
    pub port: String,
    pub learned: bool,
    /// Seconds since last seen (learned entries; the youngest over the groups).
    pub age_secs: Option<f64>,
    /// Groups whose table has it.
    pub groups: Vec<usize>,
}

/// `show switch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SwitchInfo {
    pub mode: String,
    pub ageing_secs: f64,
    pub entries: Vec<MacInfo>,
    /// Groups that did not answer (their tables are missing).
    pub unanswered: Vec<usize>,
}

macro_rules! group_sample {
    ($($f:ident),* $(,)?) => {
        /// Plain copies of a group's counters (or their difference over an interval).
        #[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
        pub struct GroupSample {
            $(pub $f: u64,)*
        }

        impl GroupSample {
            pub fn of(c: &GroupCounters) -> GroupSample {
                GroupSample { $($f: c.$f.load(Ordering::Relaxed),)* }
            }

            /// `self - base`, counter by counter.
            pub fn since(&self, base: &GroupSample) -> GroupSample {
                GroupSample { $($f: self.$f.wrapping_sub(base.$f),)* }
            }
        }
    };
}

group_sample!(
    iterations,
    busy_iterations,
    batched_packets,
    grant_copy_calls,
    grant_copy_ops,
    port_tx_full,
    sleeps,
    busy_cycles,
    idle_cycles,
    handoffs,
    handoff_ring_full,
    handoff_stale,
    tx_cycles,
    tx_packets,
    rx_cycles,
    rx_packets,
    notifications,
);

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl GroupInfo {
    fn derive(group: usize, lcore: Option<u32>, queues: Vec<String>, c: GroupSample) -> Self {
        GroupInfo {
            group,
            lcore,
            queues,
            busy_pct: ratio(c.busy_cycles * 100, c.busy_cycles + c.idle_cycles),
            cycles_per_packet: ratio(c.busy_cycles, c.batched_packets),
            tx_cycles_per_packet: ratio(c.tx_cycles, c.tx_packets),
            rx_cycles_per_packet: ratio(c.rx_cycles, c.rx_packets),
            mean_batch: ratio(c.batched_packets, c.busy_iterations),
            ops_per_call: ratio(c.grant_copy_ops, c.grant_copy_calls),
            notifications_per_packet: ratio(c.notifications, c.batched_packets),
            counts: c,
        }
    }
}

/// One vif as the control loop last published it.
#[derive(Clone)]
pub struct VifView {
    pub domid: u16,
    pub devid: u32,
    pub name: String,
    pub state: u32,
    pub vlan: Option<u16>,
    /// (queue number, group, counters).
    pub queues: Vec<(u16, usize, Arc<QueueCounters>)>,
}

/// A change for the control loop, with where to send its outcome.
pub enum Op {
    SetRate(u16, u32, Option<Rate>, mpsc::Sender<Result<String, String>>),
    Detach(u16, u32, mpsc::Sender<Result<String, String>>),
    MoveQueue(u16, u32, u16, usize, mpsc::Sender<Result<String, String>>),
}

/// What the port is, fixed at start.
#[derive(Clone, Debug, Default)]
pub struct PortStatic {
    pub driver: String,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub offloads: Vec<String>,
    pub software: Vec<String>,
}

/// Everything the socket's threads answer from.
pub struct Ctl {
    pub shared: Arc<Shared>,
    /// Published by the control loop after every step.
    pub vifs: Mutex<Vec<VifView>>,
    pub groups: Vec<GroupHandle>,
    pub lcores: Vec<Option<u32>>,
    pub ops: Mutex<mpsc::Sender<Op>>,
    pub port: PortStatic,
    pub switch_mode: String,
    /// Start of the `show groups` interval and the counters then.
    pub baseline: Mutex<(Instant, Vec<GroupSample>)>,
    pub fault_injection: bool,
    clients: AtomicUsize,
}

impl Ctl {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        groups: Vec<GroupHandle>,
        lcores: Vec<Option<u32>>,
        ops: mpsc::Sender<Op>,
        port: PortStatic,
        switch_mode: String,
        fault_injection: bool,
    ) -> Ctl {
        let base = shared.groups.iter().map(|g| GroupSample::of(g)).collect();
        Ctl {
            shared,
            vifs: Mutex::new(Vec::new()),
            groups,
            lcores,
            ops: Mutex::new(ops),
            port,
            switch_mode,
            baseline: Mutex::new((Instant::now(), base)),
            fault_injection,
            clients: AtomicUsize::new(0),
        }
    }

    fn vif_views(&self) -> Vec<VifView> {
        self.vifs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Answers one request line.
    pub fn answer(&self, line: &str) -> Answer {
        let req: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return err(format!("bad request: {e}")),
        };
        let r = match req {
            Request::ShowVifs { vif } => self.show_vifs(vif.as_deref()).map(to_value),
            Request::ShowGroups { clear } => Ok(to_value(self.show_groups(clear))),
            Request::ShowPorts {} => self.show_ports().map(to_value),
            Request::ShowSwitch {} => Ok(to_value(self.show_switch())),
            Request::SetRate { vif, bytes, usecs } => self.set_rate(&vif, bytes, usecs),
            Request::ClearRate { vif } => self.clear_rate(&vif),
            Request::Detach { vif } => self.detach(&vif),
            Request::MoveQueue { vif, queue, group } => self
                .known_vif(&vif)
                .and_then(|(d, n)| self.to_control(|tx| Op::MoveQueue(d, n, queue, group, tx))),
            Request::LogLevel { filter } => {
                crate::set_log_filter(&filter).map(|()| format!("log filter now {filter:?}").into())
            }
            Request::DebugStall { group, ms } => self.stall(group, ms),
        };
        match r {
            Ok(v) => Answer {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => err(e),
        }
    }

    /// One inspection per group, asked of all groups at once.
    fn inspect_all(&self) -> Vec<Option<GroupSnapshot>> {
        let (tx, rx) = mpsc::channel();
        for (i, g) in self.groups.iter().enumerate() {
            let (tx, g) = (tx.clone(), g.clone());
            std::thread::spawn(move || {
                let _ = tx.send((i, g.inspect(INSPECT_TIMEOUT)));
            });
        }
        drop(tx);
        let mut out = vec![None; self.groups.len()];
        for (i, s) in rx {
            out[i] = s;
        }
        out
    }

    fn show_vifs(&self, which: Option<&str>) -> Result<Vec<VifInfo>, String> {
        let filter = which.map(parse_vif_filter).transpose()?;
        let views: Vec<VifView> = self
            .vif_views()
            .into_iter()
            .filter(|v| match filter {
                None => true,
                Some((d, None)) => v.domid == d,
                Some((d, Some(n))) => v.domid == d && v.devid == n,
            })
            .collect();
        if let (Some(w), true) = (which, views.is_empty()) {
            return Err(format!("no vif {w}"));
        }
        let snaps = if views.is_empty() {
            Vec::new()
        } else {
            self.inspect_all()
        };
        let mut out = Vec::new();
        for v in views {
            let mut rate = None;
            let mut queues = Vec::new();
            for (q, g, c) in &v.queues {
                let snap = snaps.get(*g).and_then(|s| s.as_ref()).and_then(|s| {
                    s.queues.iter().find(|x| {
                        x.id.domid == v.domid && x.id.devid == v.devid && x.id.queue == *q
                    })
                });
                let s = crate::ledger::Snap::of(c);
                let mut qi = QueueInfo {
                    queue: *q,
                    group: *g,
                    inspected: snap.is_some(),
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    notifications: s.notifications,
                    credit_throttled: s.tx_credit_throttled,
                    rx_stalls: s.rx_stalls,
                    drops: drops(&s),
                    disabled: c.disabled.get().map(|d| d.to_string()),
                    ..Default::default()
                };
                if let Some(s) = snap {
                    let ring = |r: dataplane::engine::RingIndices| Ring {
                        req_prod: r.req_prod,
                        req_cons: r.req_cons,
                        rsp_prod: r.rsp_prod,
                    };
                    qi.tx_ring = Some(ring(s.tx));
                    qi.rx_ring = Some(ring(s.rx));
                    qi.backlog_packets = Some(s.backlog_packets as u64);
                    qi.backlog_bytes = Some(s.backlog_bytes as u64);
                    qi.stalled = Some(s.stalled);
                    if !s.rate.is_unlimited() {
                        qi.credit_bytes = Some(s.credit_remaining);
                        rate = Some(format!("{},{}", s.rate.bytes, s.rate.usec));
                    }
                }
                queues.push(qi);
            }
            out.push(VifInfo {
                domid: v.domid,
                devid: v.devid,
                name: v.name.clone(),
                state: v.state,
                state_name: state_name(v.state).into(),
                vlan: v.vlan,
                rate,
                queues,
            });
        }
        Ok(out)
    }

    fn show_groups(&self, clear: bool) -> GroupsInfo {
        let now: Vec<GroupSample> = self
            .shared
            .groups
            .iter()
            .map(|g| GroupSample::of(g))
            .collect();
        let mut base = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let interval_secs = base.0.elapsed().as_secs_f64();
        let mut queues: Vec<Vec<String>> = vec![Vec::new(); now.len()];
        for v in self.vif_views() {
            for (q, g, _) in &v.queues {
                if let Some(l) = queues.get_mut(*g) {
                    l.push(format!("{}.{}/{q}", v.domid, v.devid));
                }
            }
        }
        let groups = now
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let b = base.1.get(i).copied().unwrap_or_default();
                GroupInfo::derive(
                    i,
                    self.lcores.get(i).copied().flatten(),
                    std::mem::take(&mut queues[i]),
                    s.since(&b),
                )
            })
            .collect();
        if clear {
            *base = (Instant::now(), now);
        }
        GroupsInfo {
            interval_secs,
            groups,
        }
    }

    fn show_ports(&self) -> Result<Vec<PortInfo>, String> {
        let port = self
            .shared
            .port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some((name, port)) = port else {
            return Err("the port is closed (the daemon is stopping)".into());
        };
        let p = &self.port;
        let mut info = PortInfo {
            name,
            driver: p.driver.clone(),
            rx_queues: p.rx_queues,
            tx_queues: p.tx_queues,
            max_rx_queues: p.max_rx_queues,
            max_tx_queues: p.max_tx_queues,
            offloads: p.offloads.clone(),
            software: p.software.clone(),
            ..Default::default()
        };
        if let Ok(l) = port.link() {
            info.link_up = l.up;
            info.speed_mbps = l.speed_mbps;
            info.full_duplex = l.full_duplex;
        }
        if let Ok(s) = port.stats() {
            for (k, v) in [
                ("ipackets", s.ipackets),
                ("opackets", s.opackets),
                ("ibytes", s.ibytes),
                ("obytes", s.obytes),
                ("imissed", s.imissed),
                ("ierrors", s.ierrors),
                ("oerrors", s.oerrors),
                ("rx_nombuf", s.rx_nombuf),
            ] {
                info.stats.insert(k.into(), v);
            }
        }
        info.xstats = port.xstats().unwrap_or_default().into_iter().collect();
        Ok(vec![info])
    }

    fn show_switch(&self) -> SwitchInfo {
        let snaps = self.inspect_all();
        // Endpoint -> vif, from the queues every group runs (endpoints are shared by the
        // groups of one L2 domain).
        let mut ports: BTreeMap<u32, String> = BTreeMap::new();
        ports.insert(0, "uplink".into());
        for s in snaps.iter().flatten() {
            for q in &s.queues {
                ports.insert(q.endpoint, format!("vif{}.{}", q.id.domid, q.id.devid));
            }
        }
        let mut merged: BTreeMap<(Option<u16>, [u8; 6]), MacInfo> = BTreeMap::new();
        let mut ageing = 0.0;
        for (g, s) in snaps.iter().enumerate() {
            let Some(s) = s else { continue };
            ageing = s.ageing_ns as f64 / 1e9;
            for e in &s.table {
                let m = merged.entry((e.domain, e.mac)).or_insert_with(|| MacInfo {
                    vlan: e.domain,
                    mac: mac_str(&e.mac),
                    port: ports
                        .get(&e.endpoint.0)
                        .cloned()
                        .unwrap_or_else(|| format!("endpoint {}", e.endpoint.0)),
                    learned: !e.is_static,
                    age_secs: None,
                    groups: Vec::new(),
                });
                m.groups.push(g);
                if let Some(a) = e.age_ns {
                    let a = a as f64 / 1e9;
                    m.age_secs = Some(m.age_secs.map_or(a, |o: f64| o.min(a)));
                }
            }
        }
        SwitchInfo {
            mode: self.switch_mode.clone(),
            ageing_secs: ageing,
            entries: merged.into_values().collect(),
            unanswered: snaps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none())
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Sends `op` to the control loop and waits for its outcome.
    fn to_control(
        &self,
        op: impl FnOnce(mpsc::Sender<Result<String, String>>) -> Op,
    ) -> Result<serde_json::Value, String> {
        let (tx, rx) = mpsc::channel();
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(op(tx))
            .map_err(|_| "the control loop is gone (the daemon is stopping)".to_string())?;
        rx.recv_timeout(Duration::from_secs(15))
            .map_err(|_| "the control loop did not answer in 15 s".to_string())?
            .map(serde_json::Value::from)
    }

    /// A vif the control loop knows now.
    fn known_vif(&self, s: &str) -> Result<(u16, u32), String> {
        let (d, n) = parse_vif(s)?;
        if self
            .vif_views()
            .iter()
            .any(|v| v.domid == d && v.devid == n)
        {
            Ok((d, n))
        } else {
            Err(format!("no vif {d}.{n}"))
        }
    }

    fn set_rate(&self, vif: &str, bytes: u64, usecs: u64) -> Result<serde_json::Value, String> {
        let (d, n) = self.known_vif(vif)?;
        if bytes == 0 || !(1..=10_000_000).contains(&usecs) {
            return Err(format!(
                "rate {bytes} bytes per {usecs} us: bytes must be > 0 and usecs in 1..=10000000"
            ));
        }
        let rate = Rate { bytes, usec: usecs };
        self.to_control(|tx| Op::SetRate(d, n, Some(rate), tx))
    }

    fn clear_rate(&self, vif: &str) -> Result<serde_json::Value, String> {
        let (d, n) = self.known_vif(vif)?;
        self.to_control(|tx| Op::SetRate(d, n, None, tx))
    }

    fn detach(&self, vif: &str) -> Result<serde_json::Value, String> {
        let (d, n) = self.known_vif(vif)?;
        self.to_control(|tx| Op::Detach(d, n, tx))?;
        // The backend reaches Closed within a control step or two.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            let st = self
                .vif_views()
                .iter()
                .find(|v| v.domid == d && v.devid == n)
                .map(|v| v.state);
            if st.is_none_or(|s| s == control::state::CLOSED) {
                return Ok(format!("vif{d}.{n} detached (backend Closed)").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "vif{d}.{n}: detach requested, but the backend is not Closed after 10 s"
        ))
    }

    fn stall(&self, group: usize, ms: u64) -> Result<serde_json::Value, String> {
        if !self.fault_injection {
            return Err(
                "debug commands are fault injection for tests: start the daemon with \
                 NETBACKD_FAULT_INJECTION=1 to allow them"
                    .into(),
            );
        }
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| format!("no group {group} (0..{})", self.groups.len()))?;
        if ms > 600_000 {
            return Err("ms: at most 600000".into());
        }
        g.stall(Duration::from_millis(ms));
        tracing::warn!("fault injection: group {group} told to stall for {ms} ms");
        Ok(format!("group {group} stalls for {ms} ms").into())
    }
}

fn to_value<T: Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn err(e: impl Into<String>) -> Answer {
    Answer {
        ok: false,
        result: None,
        error: Some(e.into()),
    }
}

pub fn state_name(s: u32) -> &'static str {
    match s {
        1 => "Initialising",
        2 => "InitWait",
        3 => "Initialised",
        4 => "Connected",
        5 => "Closing",
        6 => "Closed",
        _ => "Unknown",
    }
}

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn drops(s: &crate::ledger::Snap) -> BTreeMap<String, u64> {
    [
        ("tx_runt", s.tx_drop_runt),
        ("tx_too_many_slots", s.tx_drop_too_many_slots),
        ("tx_frag_overflow", s.tx_drop_frag_overflow),
        ("tx_copy_error", s.tx_drop_copy_error),
        ("tx_no_mbuf", s.tx_drop_no_mbuf),
        ("tx_offload", s.tx_drop_offload),
        ("tx_switch", s.tx_drop_switch),
        ("rx_backlog_full", s.rx_drop_backlog_full),
        ("rx_stalled", s.rx_drop_stalled),
        ("rx_copy_error", s.rx_drop_copy_error),
        ("rx_too_big", s.rx_drop_too_big),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// "DOMID.DEVID" (or "vifDOMID.DEVID").
pub fn parse_vif(s: &str) -> Result<(u16, u32), String> {
    match parse_vif_filter(s)? {
        (d, Some(n)) => Ok((d, n)),
        (_, None) => Err(format!("{s:?}: expected DOMID.DEVID (e.g. 7.0)")),
    }
}

/// "DOMID" or "DOMID.DEVID" (an optional "vif" prefix allowed).
pub fn parse_vif_filter(s: &str) -> Result<(u16, Option<u32>), String> {
    let t = s.strip_prefix("vif").unwrap_or(s);
    let bad = || format!("{s:?}: expected DOMID or DOMID.DEVID (e.g. 7 or 7.0)");
    let num = |x: &str| !x.is_empty() && x.len() <= 10 && x.bytes().all(|c| c.is_ascii_digit());
    match t.split_once('.') {
        None if num(t) => Ok((t.parse().map_err(|_| bad())?, None)),
        Some((d, n)) if num(d) && num(n) => Ok((
            d.parse().map_err(|_| bad())?,
            Some(n.parse().map_err(|_| bad())?),
        )),
        _ => Err(bad()),
    }
}

/// The socket: bound with mode 0600, removed on drop.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (0600; its directory created 0700 if missing; a stale socket of a dead
/// daemon replaced, a live one refused) and serves it from a thread.
pub fn serve(path: &Path, ctl: Arc<Ctl>) -> anyhow::Result<Server> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("ctl.socket: creating {}", dir.display()))?;
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            m.file_type().is_socket(),
            "ctl.socket {}: exists and is not a socket",
            path.display()
        );
        anyhow::ensure!(
            UnixStream::connect(path).is_err(),
            "ctl.socket {}: another netbackd answers on it",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("ctl.socket {}: removing the stale socket", path.display()))?;
    }
    // The socket file is created with the umask's mode: no moment where others may connect.
    // SAFETY: umask only swaps the process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("ctl.socket {}", path.display()))?;
    let server = Server {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("ctl.socket {}: chmod 0600", path.display()))?;
    std::thread::Builder::new()
        .name("ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let ctl = ctl.clone();
                if ctl.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    ctl.clients.fetch_sub(1, Ordering::SeqCst);
                    let mut c = conn;
                    let _ = writeln!(
                        c,
                        "{}",
                        serde_json::to_string(&err("too many clients")).unwrap_or_default()
                    );
                    continue;
                }
                let spawned = std::thread::Builder::new()
                    .name("ctl-client".into())
                    .spawn({
                        let ctl = ctl.clone();
                        move || {
                            client(&ctl, conn);
                            ctl.clients.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                if spawned.is_err() {
                    ctl.clients.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(server)
}

/// Serves one connection: a request per line until EOF, a silent spell or a bad line.
fn client(ctl: &Ctl, conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match (&mut r).take(MAX_LINE + 1).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = !line.ends_with('\n');
        let a = if too_long {
            err(format!("bad request: longer than {MAX_LINE} bytes"))
        } else if line.trim().is_empty() {
            continue;
        } else {
            ctl.answer(line.trim())
        };
        if !a.ok {
            tracing::debug!("ctl: refused request: {}", a.error.as_deref().unwrap_or(""));
        }
        let text = serde_json::to_string(&a).unwrap_or_else(|_| "{\"ok\":false}".into());
        if writeln!(out, "{text}").is_err() || too_long {
            return;
        }
    }
}

/// Sends one request and reads its answer (the client side).
pub fn request(path: &Path, req: &Request) -> anyhow::Result<Answer> {
    let mut s = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is netbackd running, and are you root?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    writeln!(s, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("reading the answer")?;
    serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_refuse() {
        let r: Request = serde_json::from_str(r#"{"cmd":"show_vifs","vif":"7.0"}"#).unwrap();
        assert_eq!(
            r,
            Request::ShowVifs {
                vif: Some("7.0".into())
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"show_groups"}"#).unwrap();
        assert_eq!(r, Request::ShowGroups { clear: false });
        for bad in [
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"show_vifs","vif":7}"#,
            r#"{"cmd":"set_rate","vif":"7.0","bytes":-1,"usecs":1}"#,
            r#"{"cmd":"show_ports","extra":1}"#,
            "not json",
            "{}",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        let round = Request::SetRate {
            vif: "7.0".into(),
            bytes: 5,
            usecs: 9,
        };
        let text = serde_json::to_string(&round).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"set_rate","vif":"7.0","bytes":5,"usecs":9}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), round);
    }

    #[test]
    fn vif_names() {
        assert_eq!(parse_vif("7.0"), Ok((7, 0)));
        assert_eq!(parse_vif("vif12.3"), Ok((12, 3)));
        assert_eq!(parse_vif_filter("7"), Ok((7, None)));
        for bad in [
            "",
            "7.",
            ".0",
            "a.b",
            "70000.0",
            "7.0.1",
            "-1.0",
            "7.99999999999",
        ] {
            assert!(
                parse_vif_filter(bad).is_err() || parse_vif(bad).is_err(),
                "{bad}"
            );
        }
        assert!(parse_vif("7").is_err());
    }

    #[test]
    fn derived_group_figures() {
        let c = GroupSample {
            busy_cycles: 300,
            idle_cycles: 700,
            batched_packets: 10,
            busy_iterations: 2,
            grant_copy_calls: 4,
            grant_copy_ops: 12,
            tx_cycles: 100,
            tx_packets: 4,
            notifications: 5,
            ..Default::default()
        };
        let g = GroupInfo::derive(0, Some(1), vec![], c);
        assert_eq!(g.busy_pct, Some(30.0));
        assert_eq!(g.cycles_per_packet, Some(30.0));
        assert_eq!(g.tx_cycles_per_packet, Some(25.0));
        assert_eq!(g.rx_cycles_per_packet, None);
        assert_eq!(g.mean_batch, Some(5.0));
        assert_eq!(g.ops_per_call, Some(3.0));
        assert_eq!(g.notifications_per_packet, Some(0.5));
        let later = GroupSample {
            busy_cycles: 350,
            ..c
        };
        assert_eq!(later.since(&c).busy_cycles, 50);
        assert_eq!(later.since(&c).idle_cycles, 0);
    }
}
