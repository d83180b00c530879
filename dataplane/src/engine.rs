//! The netback engine: one group = one busy-polling loop over its queues and one port queue.
//!
//! Per iteration:
//! - **guest TX**: for each queue (bounded budget), check indices, copy requests once,
//!   `txparse` them, charge credit, allocate mbufs and append grant-copy ops to the group's
//!   batch; one `GrantCopy::copy` for the whole batch; then each slot's response is OKAY or
//!   ERROR by its own copies' status, the packet goes on only if all succeeded: offload
//!   (`offload`), switch, port burst (or another vif's backlog).
//! - **guest RX**: port burst; switch into bounded per-queue backlogs; for each queue with
//!   backlog, the slots of the head packet are counted (`rxplan`) before any request is
//!   consumed; one batched copy; responses in the slots of their requests, with the GSO
//!   extra after the first; a queue whose head packet waited longer than the stall timeout
//!   for buffers has its backlog dropped and counted (XSA-392).
//! - responses are pushed and the frontend notified at most once per queue and direction.
//!
//! A frontend breaking the protocol (impossible indices, rogue requests) gets its queue
//! disabled and reported; nothing it does reaches another queue.
use crate::credit::{Admit, Credit, Rate};
use crate::netif::{
    BackRing, ExtraInfo, RxResponse, RxRing, TxResponse, TxRing, NETRXF_EXTRA_INFO,
    NETRXF_GSO_PREFIX, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_RSP_ERROR, XEN_NETIF_RSP_NULL, XEN_NETIF_RSP_OKAY,
};
use crate::offload::{
    finish_in_software, guest_rx_csum_flags, prepare_guest_tx, OffloadCounters, SoftGso, TxCaps,
};
use crate::rxplan;
use crate::switch::{apply_egress, Decision, EndpointId, EndpointKind, Switch, SwitchConfig};
use crate::txparse::{parse_tx, Gso, Rogue, Rsp, Verdict};
use pmd::{Mbuf, Mempool, Port};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy};

/// Identifies a queue in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueId {
    pub domid: u16,
    pub devid: u32,
    pub queue: u16,
}

/// What the frontend negotiated.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    pub gso_prefix: bool,
    pub mcast: bool,
}

/// Per-queue counters, written by the group once per iteration, read by anyone. Names are
/// from the guest's point of view: `tx` = packets the guest sent.
#[derive(Debug, Default)]
pub struct QueueCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_drop_runt: AtomicU64,
    pub tx_drop_too_many_slots: AtomicU64,
    pub tx_drop_frag_overflow: AtomicU64,
    pub tx_drop_copy_error: AtomicU64,
    pub tx_drop_no_mbuf: AtomicU64,
    pub tx_drop_offload: AtomicU64,
    pub tx_drop_switch: AtomicU64,
    pub tx_credit_throttled: AtomicU64,
    pub tx_gso_checksum_fixup: AtomicU64,
    pub rx_drop_backlog_full: AtomicU64,
    pub rx_drop_stalled: AtomicU64,
    pub rx_drop_copy_error: AtomicU64,
    pub rx_drop_too_big: AtomicU64,
    pub rx_stalls: AtomicU64,
    pub notifications: AtomicU64,
    pub rogue: AtomicU64,
    /// Set once by the group when it disables the queue (tier 2), so the control plane can
    /// write the vif's `error` node and close it.
    pub disabled: std::sync::OnceLock<Disable>,
}

/// Lcore-local counter deltas, flushed to the atomics once per iteration.
#[derive(Clone, Copy, Debug, Default)]
struct Local {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    tx_drop_runt: u64,
    tx_drop_too_many_slots: u64,
    tx_drop_frag_overflow: u64,
    tx_drop_copy_error: u64,
    tx_drop_no_mbuf: u64,
    tx_drop_offload: u64,
    tx_drop_switch: u64,
    tx_credit_throttled: u64,
    tx_gso_checksum_fixup: u64,
    rx_drop_backlog_full: u64,
    rx_drop_stalled: u64,
    rx_drop_copy_error: u64,
    rx_drop_too_big: u64,
    rx_stalls: u64,
    notifications: u64,
    rogue: u64,
}

impl Local {
    fn flush(&mut self, c: &QueueCounters) {
        macro_rules! f {
            ($($n:ident),*) => {$(
                if self.$n != 0 {
                    c.$n.fetch_add(self.$n, Ordering::Relaxed);
                }
            )*};
        }
        f!(
            tx_packets,
            tx_bytes,
            rx_packets,
            rx_bytes,
            tx_drop_runt,
            tx_drop_too_many_slots,
            tx_drop_frag_overflow,
            tx_drop_copy_error,
            tx_drop_no_mbuf,
            tx_drop_offload,
            tx_drop_switch,
            tx_credit_throttled,
            tx_gso_checksum_fixup,
            rx_drop_backlog_full,
            rx_drop_stalled,
            rx_drop_copy_error,
            rx_drop_too_big,
            rx_stalls,
            notifications,
            rogue
        );
        *self = Local::default();
    }
}

/// Everything the control plane hands over to make a queue run.
pub struct QueueSetup {
    pub id: QueueId,
    pub tx: BackRing<TxRing>,
    pub rx: BackRing<RxRing>,
    /// Local event-channel ports (the same one twice without split channels).
    pub evtchn_tx: u32,
    pub evtchn_rx: u32,
    pub mac: [u8; 6],
    /// Access VLAN: the vif's frames are tagged with it toward the uplink (None: untagged).
    pub vlan: Option<u16>,
    pub features: Features,
    pub rate: Rate,
    pub counters: Arc<QueueCounters>,
}

/// Engine limits (defaults as Linux netback where it has one).
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Packets per queue per iteration in each direction (fairness between queues).
    pub budget: usize,
    /// Guest-RX backlog bound per queue, bytes (Linux: 512 KiB).
    pub backlog_bytes: usize,
    pub backlog_packets: usize,
    /// A head packet waiting this long for RX buffers marks the queue stalled.
    pub stall_ns: u64,
    /// Port burst size.
    pub burst: u16,
    /// RX bursts per iteration at most (more only while bursts come back full), so the
    /// port's RX keeps up with what the group sends per iteration.
    pub rx_bursts: u16,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            budget: 64,
            backlog_bytes: 512 * 1024,
            backlog_packets: 1024,
            stall_ns: 60_000_000_000,
            burst: 32,
            rx_bursts: 8,
        }
    }
}

/// What the control plane asks of a group. Commands are applied between iterations, when
/// nothing of any queue is in flight: a removal's acknowledgement therefore means the
/// group has finished every operation on that queue and will not touch its rings again.
pub enum Command {
    AddQueue(Box<QueueSetup>),
    RemoveQueue(QueueId, std::sync::mpsc::Sender<bool>),
    SetRate(QueueId, Rate),
}

/// The control plane's handle on a group running elsewhere.
#[derive(Clone)]
pub struct GroupHandle {
    tx: std::sync::mpsc::Sender<Command>,
    load: Arc<AtomicU64>,
}

impl GroupHandle {
    /// Queues the group runs (for least-loaded assignment).
    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    pub fn add_queue(&self, s: QueueSetup) -> bool {
        self.tx.send(Command::AddQueue(Box::new(s))).is_ok()
    }

    /// Removes a queue and waits (up to `timeout`) until the group has let go of it.
    pub fn remove_queue(&self, id: QueueId, timeout: std::time::Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.tx.send(Command::RemoveQueue(id, ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).unwrap_or(false)
    }

    pub fn set_rate(&self, id: QueueId, rate: Rate) -> bool {
        self.tx.send(Command::SetRate(id, rate)).is_ok()
    }
}

/// The group with the fewest queues (Linux netback's `xen_netbk_add_xenvif` rule).
pub fn least_loaded(groups: &[GroupHandle]) -> Option<&GroupHandle> {
    groups.iter().min_by_key(|g| g.load())
}

/// Group-wide counters (readable while the group runs).
#[derive(Debug, Default)]
pub struct GroupCounters {
    pub iterations: AtomicU64,
    pub busy_iterations: AtomicU64,
    pub grant_copy_calls: AtomicU64,
    pub grant_copy_ops: AtomicU64,
    pub port_tx_full: AtomicU64,
    /// Sum of packets per busy iteration (batch size = this / busy_iterations).
    pub batched_packets: AtomicU64,
    /// Times the group slept on its event channels (adaptive mode).
    pub sleeps: AtomicU64,
}

/// Adaptive polling: after `idle_ns` without work the group asks its frontends for
/// notifications and sleeps on its event channels, at most `max_sleep` (packets arriving
/// from the port raise no event channel, so the sleep is bounded), like DPDK's l3fwd-power.
#[derive(Clone, Copy, Debug)]
pub struct Adaptive {
    pub idle_ns: u64,
    pub max_sleep: std::time::Duration,
}

/// Why a queue was disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disable {
    ImpossibleTxIndex,
    ImpossibleRxIndex,
    Rogue(Rogue),
}

impl std::fmt::Display for Disable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disable::ImpossibleTxIndex => f.write_str("impossible TX ring index (req_prod)"),
            Disable::ImpossibleRxIndex => f.write_str("impossible RX ring index (req_prod)"),
            Disable::Rogue(r) => write!(f, "malformed TX request: {r:?}"),
        }
    }
}

struct Queue {
    id: QueueId,
    tx: BackRing<TxRing>,
    rx: BackRing<RxRing>,
    evtchn_tx: u32,
    evtchn_rx: u32,
    features: Features,
    credit: Credit,
    counters: Arc<QueueCounters>,
    local: Local,
    backlog: VecDeque<Mbuf>,
    backlog_bytes: usize,
    /// Since when the head packet has waited for RX buffers.
    head_wait_since: Option<u64>,
    stalled: bool,
    disabled: Option<Disable>,
    /// The disable was handed out by `take_disabled` (the daemon reads
    /// `counters.disabled` instead, so nothing accumulates when nobody asks).
    disable_reported: bool,
    endpoint: EndpointId,
}

/// A guest TX packet whose data is being copied in this iteration.
struct PendingTx {
    q: usize,
    mbuf: Mbuf,
    csum_blank: bool,
    gso: Option<Gso>,
    /// Responses in slot order; data slots carry the index range of their ops.
    rsps: SlotRsps,
    len: u32,
}

/// A guest RX packet being copied into guest buffers.
struct PendingRx {
    q: usize,
    mbuf: Mbuf,
    /// (request id, op range, bytes) per data buffer, in slot order.
    bufs: RxBufs,
    /// The GSO extra and the id of the request slot it takes.
    gso: Option<(u16, u8, u16)>,
    /// GSO as a prefix slot before the data (legacy frontends) instead of an extra.
    prefix: bool,
    flags: u16,
}

/// The DPDK side of a group: its mbuf pool, its port queue and how offloads are done.
pub struct GroupIo {
    pub pool: Arc<Mempool>,
    pub port: Arc<Port>,
    pub port_queue: u16,
    pub caps: TxCaps,
    pub soft: SoftGso,
}

/// Responses of a guest TX packet in slot order, with each data slot's copy-op range.
type SlotRsps = Vec<(Rsp, std::ops::Range<usize>)>;

/// One group: an lcore's poll loop.
pub struct Group<G: GrantCopy, E: EventChannel> {
    cfg: EngineConfig,
    gc: G,
    ev: E,
    pool: Arc<Mempool>,
    port: Arc<Port>,
    port_queue: u16,
    caps: TxCaps,
    soft: SoftGso,
    switch: Switch,
    queues: Vec<Queue>,
    ops: Vec<CopyOp>,
    ptx: Vec<PendingTx>,
    prx: Vec<PendingRx>,
    to_port: Vec<Mbuf>,
    rx_burst: Vec<Mbuf>,
    ofl: OffloadCounters,
    t0: Instant,
    /// Packets the port refused this iteration (flushed to `counters.port_tx_full`).
    port_full: u64,
    commands: Option<std::sync::mpsc::Receiver<Command>>,
    cmd_tx: Option<std::sync::mpsc::Sender<Command>>,
    load: Arc<AtomicU64>,
    pub counters: Arc<GroupCounters>,
    copy_calls: u64,
    copy_ops: u64,
    /// Buffers reused every iteration so the per-packet path allocates nothing.
    scratch: Scratch,
}

/// Per-group buffers reused across packets and iterations.
#[derive(Default)]
struct Scratch {
    seg_lens: Vec<u32>,
    seg_ptrs: Vec<(*mut u8, usize)>,
    rx_reqs: Vec<crate::netif::RxRequest>,
    offload_out: Vec<Mbuf>,
    rsps_pool: Vec<SlotRsps>,
    bufs_pool: Vec<RxBufs>,
}

// SAFETY: the raw pointers in `seg_ptrs` are only meaningful (and only used) within one
// iteration of the group that owns them; between iterations they are stale and ignored.
unsafe impl Send for Scratch {}

/// (request id, op range, bytes) per guest RX data buffer of a packet.
type RxBufs = Vec<(u16, std::ops::Range<usize>, u16)>;

const UPLINK: EndpointId = EndpointId(0);

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    pub fn new(cfg: EngineConfig, gc: G, ev: E, io: GroupIo, switch_cfg: SwitchConfig) -> Self {
        let GroupIo {
            pool,
            port,
            port_queue,
            caps,
            soft,
        } = io;
        let mut switch = Switch::new(switch_cfg);
        switch.add_endpoint(UPLINK, EndpointKind::Uplink);
        Group {
            cfg,
            gc,
            ev,
            pool,
            port,
            port_queue,
            caps,
            soft,
            switch,
            queues: Vec::new(),
            ops: Vec::with_capacity(4096),
            ptx: Vec::new(),
            prx: Vec::new(),
            to_port: Vec::new(),
            rx_burst: Vec::new(),
            ofl: OffloadCounters::default(),
            t0: Instant::now(),
            port_full: 0,
            commands: None,
            cmd_tx: None,
            load: Arc::new(AtomicU64::new(0)),
            counters: Arc::new(GroupCounters::default()),
            copy_calls: 0,
            copy_ops: 0,
            scratch: Scratch::default(),
        }
    }

    /// A handle through which the control plane adds and removes queues while the group
    /// runs (its `poll` applies the commands between iterations).
    pub fn handle(&mut self) -> GroupHandle {
        let tx = match &self.commands {
            Some(_) => self.cmd_tx.clone().expect("set with commands"),
            None => {
                let (tx, rx) = std::sync::mpsc::channel();
                self.commands = Some(rx);
                self.cmd_tx = Some(tx.clone());
                tx
            }
        };
        GroupHandle {
            tx,
            load: self.load.clone(),
        }
    }

    fn apply_commands(&mut self) {
        let Some(rx) = self.commands.take() else {
            return;
        };
        while let Ok(c) = rx.try_recv() {
            match c {
                Command::AddQueue(s) => self.add_queue(*s),
                Command::RemoveQueue(id, ack) => {
                    let removed = self.remove_queue(id);
                    let _ = ack.send(removed);
                }
                Command::SetRate(id, r) => self.set_rate(id, r),
            }
        }
        self.commands = Some(rx);
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Adds a queue (its vif's MAC becomes a switch endpoint).
    pub fn add_queue(&mut self, s: QueueSetup) {
        let endpoint = EndpointId(
            1 + self.queues.len() as u32
                + self.queues.iter().map(|q| q.endpoint.0).max().unwrap_or(0),
        );
        self.switch.add_endpoint(
            endpoint,
            EndpointKind::Vif {
                mac: s.mac,
                vlan: s.vlan,
            },
        );
        let now = self.now();
        self.queues.push(Queue {
            id: s.id,
            tx: s.tx,
            rx: s.rx,
            evtchn_tx: s.evtchn_tx,
            evtchn_rx: s.evtchn_rx,
            features: s.features,
            credit: Credit::new(s.rate, now),
            counters: s.counters,
            local: Local::default(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            head_wait_since: None,
            stalled: false,
            disabled: None,
            disable_reported: false,
            endpoint,
        });
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
    }

    /// Removes a queue; nothing of it is in flight between iterations, so this is the
    /// acknowledgement the control plane waits for. Its backlog is freed.
    pub fn remove_queue(&mut self, id: QueueId) -> bool {
        let Some(i) = self.queues.iter().position(|q| q.id == id) else {
            return false;
        };
        let mut q = self.queues.remove(i);
        self.switch.remove_endpoint(q.endpoint);
        q.local.flush(&q.counters);
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
        true
    }

    /// Applies a new rate to a queue, live.
    pub fn set_rate(&mut self, id: QueueId, rate: Rate) {
        let now = self.now();
        if let Some(q) = self.queues.iter_mut().find(|q| q.id == id) {
            q.credit.set_rate(rate, now);
        }
    }

    /// Queues disabled since the last call (for embedders polling the group directly; the
    /// daemon's control plane reads each queue's `counters.disabled`).
    pub fn take_disabled(&mut self) -> Vec<(QueueId, Disable)> {
        let mut out = Vec::new();
        for q in &mut self.queues {
            if let (Some(why), false) = (q.disabled, q.disable_reported) {
                q.disable_reported = true;
                out.push((q.id, why));
            }
        }
        out
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn offload_counters(&self) -> OffloadCounters {
        self.ofl
    }

    fn disable(&mut self, i: usize, why: Disable) {
        let q = &mut self.queues[i];
        if q.disabled.is_none() {
            // Once per queue: the queue is skipped from now on, so this cannot repeat.
            log::warn!(
                "dom{} vif{} queue {}: frontend broke the netif protocol ({why:?}); queue disabled",
                q.id.domid,
                q.id.devid,
                q.id.queue
            );
            q.disabled = Some(why);
            let _ = q.counters.disabled.set(why);
            q.local.rogue += 1;
            for m in q.backlog.drain(..) {
                drop(m);
            }
            q.backlog_bytes = 0;
        }
    }

    /// Polls until `stop`; with `adaptive`, sleeps on the event channels when idle.
    pub fn run(&mut self, stop: &std::sync::atomic::AtomicBool, adaptive: Option<Adaptive>) {
        let mut idle_since = self.now();
        while !stop.load(Ordering::Relaxed) {
            if self.poll() > 0 {
                idle_since = self.now();
                continue;
            }
            let Some(a) = adaptive else {
                std::hint::spin_loop();
                continue;
            };
            if self.now().saturating_sub(idle_since) < a.idle_ns {
                continue;
            }
            if self.arm_notifications() {
                // Work arrived while arming: keep polling.
                idle_since = self.now();
                continue;
            }
            self.counters.sleeps.fetch_add(1, Ordering::Relaxed);
            self.ev.wait(a.max_sleep);
            for q in &self.queues {
                self.ev.take_pending(q.evtchn_tx);
                self.ev.take_pending(q.evtchn_rx);
            }
            idle_since = self.now();
        }
        let d = self.gc.describe();
        if !d.is_empty() {
            log::info!("group stopped; grant copy {d}");
        }
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS` on every live ring (asking the frontends to notify
    /// on their next request) and unmasking the channels; true if work showed up.
    fn arm_notifications(&mut self) -> bool {
        let mut work = false;
        for q in &mut self.queues {
            if q.disabled.is_some() {
                continue;
            }
            work |= q.tx.final_check_for_requests();
            if !q.backlog.is_empty() {
                work |= q.rx.final_check_for_requests();
            }
            let _ = self.ev.unmask(q.evtchn_tx);
            let _ = self.ev.unmask(q.evtchn_rx);
        }
        work
    }

    /// One iteration of both directions; returns the work done (packets), 0 when idle.
    pub fn poll(&mut self) -> usize {
        self.apply_commands();
        let mut work = self.guest_tx();
        work += self.guest_rx();
        for q in &mut self.queues {
            q.local.flush(&q.counters);
        }
        let c = &self.counters;
        c.iterations.fetch_add(1, Ordering::Relaxed);
        if work > 0 {
            c.busy_iterations.fetch_add(1, Ordering::Relaxed);
            c.batched_packets.fetch_add(work as u64, Ordering::Relaxed);
        }
        if self.copy_calls > 0 {
            c.grant_copy_calls
                .fetch_add(self.copy_calls, Ordering::Relaxed);
            c.grant_copy_ops.fetch_add(self.copy_ops, Ordering::Relaxed);
            self.copy_calls = 0;
            self.copy_ops = 0;
        }
        if self.port_full > 0 {
            c.port_tx_full.fetch_add(self.port_full, Ordering::Relaxed);
            self.port_full = 0;
        }
        work
    }

    fn guest_tx(&mut self) -> usize {
        let now = self.now();
        self.ops.clear();
        for qi in 0..self.queues.len() {
            if self.queues[qi].disabled.is_some() {
                continue;
            }
            if self.queues[qi].tx.check_indices().is_err() {
                self.disable(qi, Disable::ImpossibleTxIndex);
                continue;
            }
            let mut n = 0;
            while n < self.cfg.budget {
                let q = &mut self.queues[qi];
                let avail = q.tx.unconsumed();
                let Some(first) = q.tx.copy_request(0) else {
                    break;
                };
                if let Admit::Throttled { .. } = q.credit.admit(u32::from(first.size), now) {
                    q.local.tx_credit_throttled += 1;
                    break;
                }
                let tx = &q.tx;
                let parsed = parse_tx(
                    first,
                    avail,
                    |i| tx.copy_request(i).unwrap_or_default(),
                    q.features.mcast,
                );
                match parsed.verdict {
                    Verdict::Rogue(r) => {
                        self.disable(qi, Disable::Rogue(r));
                        break;
                    }
                    Verdict::Drop(reason) => {
                        match reason {
                            crate::txparse::DropReason::Runt => q.local.tx_drop_runt += 1,
                            crate::txparse::DropReason::TooManySlots => {
                                q.local.tx_drop_too_many_slots += 1
                            }
                            crate::txparse::DropReason::FragOverflow => {
                                q.local.tx_drop_frag_overflow += 1
                            }
                        }
                        q.tx.advance(parsed.consumed);
                        for r in parsed.responses.as_slice() {
                            q.tx.push_response(settled(*r, true));
                        }
                    }
                    Verdict::Mcast(_) => {
                        q.tx.advance(parsed.consumed);
                        for r in parsed.responses.as_slice() {
                            q.tx.push_response(settled(*r, true));
                        }
                    }
                    Verdict::Packet(pkt) => {
                        q.tx.advance(parsed.consumed);
                        let out = self.scratch.rsps_pool.pop().unwrap_or_default();
                        match build_tx(
                            &self.pool,
                            q.id.domid,
                            &pkt,
                            &parsed.responses,
                            &mut self.ops,
                            &mut self.scratch.seg_ptrs,
                            out,
                        ) {
                            Some((mbuf, rsps)) => self.ptx.push(PendingTx {
                                q: qi,
                                mbuf,
                                csum_blank: pkt.flags & NETTXF_CSUM_BLANK != 0,
                                gso: pkt.gso,
                                rsps,
                                len: pkt.len,
                            }),
                            None => {
                                q.local.tx_drop_no_mbuf += 1;
                                for r in parsed.responses.as_slice() {
                                    q.tx.push_response(settled(*r, false));
                                }
                            }
                        }
                    }
                }
                n += 1;
            }
        }
        let packets = self.ptx.len();
        self.submit_batch();
        let mut ptx = std::mem::take(&mut self.ptx);
        let mut out = std::mem::take(&mut self.scratch.offload_out);
        for p in ptx.drain(..) {
            let q = &mut self.queues[p.q];
            let mut ok = true;
            for (rsp, range) in &p.rsps {
                let good = self.ops[range.clone()].iter().all(|o| o.status == 0);
                ok &= good;
                q.tx.push_response(settled(*rsp, good));
            }
            self.scratch.rsps_pool.push(p.rsps);
            if !ok {
                q.local.tx_drop_copy_error += 1;
                continue;
            }
            q.local.tx_packets += 1;
            q.local.tx_bytes += u64::from(p.len);
            let from = q.endpoint;
            let before = self.ofl;
            if prepare_guest_tx(
                p.mbuf,
                p.csum_blank,
                p.gso,
                &self.caps,
                &self.soft,
                &mut out,
                &mut self.ofl,
            )
            .is_err()
            {
                q.local.tx_drop_offload += 1;
                continue;
            }
            q.local.tx_gso_checksum_fixup +=
                self.ofl.gso_checksum_fixup - before.gso_checksum_fixup;
            for m in out.drain(..) {
                if !self.switch_frame(from, m, now) {
                    self.queues[p.q].local.tx_drop_switch += 1;
                }
            }
        }
        self.ptx = ptx;
        self.scratch.offload_out = out;
        for qi in 0..self.queues.len() {
            let q = &mut self.queues[qi];
            if q.tx.push_responses_and_check_notify() {
                let _ = self.ev.notify(q.evtchn_tx);
                q.local.notifications += 1;
            }
        }
        let (_, dropped) = self
            .port
            .tx_burst_or_drop(self.port_queue, &mut self.to_port);
        // Port refusals are the group's (the port's), not one guest's: counted per group.
        self.port_full += dropped as u64;
        packets
    }

    /// One grant-copy call for the whole batch of this direction. If the call itself fails
    /// every op counts as failed (each slot then gets its error response).
    fn submit_batch(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        self.copy_calls += 1;
        self.copy_ops += self.ops.len() as u64;
        // SAFETY: every op's local pointer addresses data of an mbuf owned by an entry of
        // self.ptx (guest TX, written) or self.prx (guest RX, only read), and those entries
        // live until after this call: both directions take them only afterwards.
        if unsafe { self.gc.copy(&mut self.ops) }.is_err() {
            for op in self.ops.iter_mut() {
                op.status = xen::iface::gntst::GENERAL_ERROR;
            }
        }
    }

    /// Switches one frame entering at `from` to its destinations (copying it for all but
    /// the last of a flood); false when the switch or the egress tagging dropped it.
    fn switch_frame(&mut self, from: EndpointId, m: Mbuf, now: u64) -> bool {
        match self.switch.forward(from, m.data(), now) {
            Decision::Unicast(to, e) => {
                let mut m = m;
                if !apply_egress(&mut m, e) {
                    return false;
                }
                self.deliver(to, m);
                true
            }
            Decision::Flood { domain } => {
                let targets: Vec<_> = self.switch.flood_targets(from, domain).collect();
                let n = targets.len();
                let mut m = Some(m);
                for (k, (to, e)) in targets.into_iter().enumerate() {
                    let copy = if k + 1 == n {
                        m.take()
                    } else {
                        m.as_ref().and_then(|o| o.deep_copy(&self.pool).ok())
                    };
                    if let Some(mut c) = copy {
                        if apply_egress(&mut c, e) {
                            self.deliver(to, c);
                        }
                    }
                }
                true
            }
            Decision::Drop(_) => false,
        }
    }

    /// Hands a packet to the uplink or to a queue's backlog.
    fn deliver(&mut self, to: EndpointId, m: Mbuf) {
        if to == UPLINK {
            self.to_port.push(m);
            return;
        }
        let Some(qi) = self.queues.iter().position(|q| q.endpoint == to) else {
            return;
        };
        // A TSO super-frame goes to a frontend whole only if it negotiated that GSO type
        // (and scatter-gather); otherwise it is segmented here.
        if m.ol_flags() & pmd::sys::RTE_MBUF_F_TX_TCP_SEG != 0
            && head_gso(&m, &self.queues[qi].features).is_none()
        {
            let mut segs = Vec::new();
            if finish_in_software(m, &self.soft, &mut segs, &mut self.ofl).is_err() {
                self.queues[qi].local.rx_drop_too_big += 1;
                return;
            }
            for s in segs {
                enqueue_backlog(&mut self.queues[qi], s, &self.cfg);
            }
            return;
        }
        enqueue_backlog(&mut self.queues[qi], m, &self.cfg);
    }

    fn guest_rx(&mut self) -> usize {
        let now = self.now();
        // Pull no more than the queues can take this iteration: what stays in the port is
        // not allocated just to be dropped at a full backlog.
        let live = self
            .queues
            .iter()
            .filter(|q| q.disabled.is_none())
            .count()
            .max(1);
        let want = (self.cfg.budget * live).div_ceil(usize::from(self.cfg.burst.max(1)));
        let bursts = want.clamp(1, usize::from(self.cfg.rx_bursts.max(1)));
        for _ in 0..bursts {
            let n = self
                .port
                .rx_burst(self.port_queue, &mut self.rx_burst, self.cfg.burst);
            if n < usize::from(self.cfg.burst) {
                break;
            }
        }
        let mut burst = std::mem::take(&mut self.rx_burst);
        for m in burst.drain(..) {
            // From the wire: the switch's own drops (runts, unknown VLANs) are not a guest's.
            self.switch_frame(UPLINK, m, now);
        }
        self.rx_burst = burst;
        self.ops.clear();
        for qi in 0..self.queues.len() {
            let q = &mut self.queues[qi];
            if q.disabled.is_some() || q.backlog.is_empty() {
                q.head_wait_since = None;
                continue;
            }
            if q.rx.check_indices().is_err() {
                self.disable(qi, Disable::ImpossibleRxIndex);
                continue;
            }
            let mut n = 0;
            while n < self.cfg.budget {
                let q = &mut self.queues[qi];
                let Some(head) = q.backlog.front() else {
                    break;
                };
                let gso = head_gso(head, &q.features);
                let segs = &mut self.scratch.seg_lens;
                segs.clear();
                segs.extend(head.segments().map(|s| s.len() as u32));
                let buffers = rxplan::buffers_needed(segs.iter().copied());
                let needed = buffers + u32::from(gso.is_some());
                // A frontend without scatter-gather takes one buffer per packet.
                if (!q.features.sg && buffers > 1) || needed as usize > crate::netif::RX_RING_SIZE {
                    let m = q.backlog.pop_front().expect("head");
                    q.backlog_bytes -= m.pkt_len() as usize;
                    q.local.rx_drop_too_big += 1;
                    continue;
                }
                if q.rx.unconsumed() < needed {
                    let since = *q.head_wait_since.get_or_insert(now);
                    if now.saturating_sub(since) > self.cfg.stall_ns {
                        // XSA-392: the guest stopped posting buffers. Drop the backlog.
                        if !q.stalled {
                            q.stalled = true;
                            q.local.rx_stalls += 1;
                        }
                        q.local.rx_drop_stalled += q.backlog.len() as u64;
                        q.backlog.clear();
                        q.backlog_bytes = 0;
                        q.head_wait_since = None;
                    }
                    break;
                }
                q.head_wait_since = None;
                q.stalled = false;
                let m = q.backlog.pop_front().expect("head");
                q.backlog_bytes -= m.pkt_len() as usize;
                let flags = guest_rx_csum_flags(m.ol_flags());
                let reqs = &mut self.scratch.rx_reqs;
                reqs.clear();
                for _ in 0..needed {
                    reqs.push(q.rx.next_request().expect("counted above"));
                }
                // Slot order: first data buffer, the GSO extra, then the other buffers; in the
                // legacy prefix mode the GSO slot comes first.
                let prefix = gso.is_some() && q.features.gso_prefix;
                let data_req = |k: usize| match (gso.is_some(), prefix) {
                    (false, _) => k,
                    (true, true) => k + 1,
                    (true, false) => k + usize::from(k > 0),
                };
                let mut bufs = self.scratch.bufs_pool.pop().unwrap_or_default();
                bufs.clear();
                bufs.extend((0..buffers as usize).map(|k| (reqs[data_req(k)].id, 0..0, 0u16)));
                let mut m = m;
                let seg_ptrs = &mut self.scratch.seg_ptrs;
                m.segment_ptrs(seg_ptrs);
                let domid = q.id.domid;
                let ops = &mut self.ops;
                let reqs = &*reqs;
                rxplan::plan(segs.iter().copied(), |c| {
                    let b = &mut bufs[usize::from(c.buf)];
                    if b.1.is_empty() {
                        b.1 = ops.len()..ops.len();
                    }
                    ops.push(CopyOp {
                        domid,
                        gref: reqs[data_req(usize::from(c.buf))].gref,
                        offset: c.buf_off,
                        // SAFETY: seg_off + len lies inside segment `seg` (rxplan's walk).
                        local: unsafe { seg_ptrs[usize::from(c.seg)].0.add(c.seg_off as usize) },
                        len: c.len,
                        dir: CopyDir::ToForeign,
                        status: 99,
                    });
                    b.1.end = ops.len();
                    b.2 += c.len;
                });
                let gso_slot = gso.map(|(size, ty)| (size, ty, reqs[usize::from(!prefix)].id));
                self.prx.push(PendingRx {
                    q: qi,
                    mbuf: m,
                    bufs,
                    gso: gso_slot,
                    prefix,
                    flags,
                });
                n += 1;
            }
        }
        let packets = self.prx.len();
        self.submit_batch();
        let mut prx = std::mem::take(&mut self.prx);
        for p in prx.drain(..) {
            let q = &mut self.queues[p.q];
            let ok = p
                .bufs
                .iter()
                .all(|b| self.ops[b.1.clone()].iter().all(|o| o.status == 0));
            let n = p.bufs.len();
            if let (true, Some((size, _ty, id))) = (p.prefix, p.gso) {
                // The seed's prefix slot: offset = GSO size, status = data slots following.
                q.rx.push_response(RxResponse {
                    id,
                    offset: size,
                    flags: NETRXF_GSO_PREFIX | NETRXF_MORE_DATA,
                    status: n as i16,
                });
            }
            for (k, (id, _, bytes)) in p.bufs.iter().enumerate() {
                let mut flags = if k + 1 < n { NETRXF_MORE_DATA } else { 0 };
                if k == 0 {
                    flags |= p.flags;
                    if p.gso.is_some() && !p.prefix {
                        flags |= NETRXF_EXTRA_INFO;
                    }
                }
                let status = if ok {
                    *bytes as i16
                } else {
                    XEN_NETIF_RSP_ERROR
                };
                q.rx.push_response(RxResponse {
                    id: *id,
                    offset: 0,
                    flags,
                    status,
                });
                if k == 0 && !p.prefix {
                    if let Some((size, ty, _id)) = p.gso {
                        q.rx.push_response(ExtraInfo::gso(size, ty, false).to_rx_slot());
                    }
                }
            }
            if ok {
                q.local.rx_packets += 1;
                q.local.rx_bytes += u64::from(p.mbuf.pkt_len());
            } else {
                q.local.rx_drop_copy_error += 1;
            }
            self.scratch.bufs_pool.push(p.bufs);
        }
        self.prx = prx;
        for q in &mut self.queues {
            if q.rx.push_responses_and_check_notify() {
                let _ = self.ev.notify(q.evtchn_rx);
                q.local.notifications += 1;
            }
        }
        packets
    }
}

/// The response for one slot once its copies are known (`good`).
fn settled(r: Rsp, good: bool) -> TxResponse {
    match r {
        Rsp::Data { id } => TxResponse {
            id,
            status: if good {
                XEN_NETIF_RSP_OKAY
            } else {
                XEN_NETIF_RSP_ERROR
            },
        },
        Rsp::Empty { id } => TxResponse {
            id,
            status: XEN_NETIF_RSP_OKAY,
        },
        Rsp::Extra => TxResponse {
            id: 0,
            status: XEN_NETIF_RSP_NULL,
        },
        Rsp::Error { id } => TxResponse {
            id,
            status: XEN_NETIF_RSP_ERROR,
        },
        Rsp::Status { id, status } => TxResponse { id, status },
    }
}

/// Allocates the mbuf chain for a guest packet and appends its copy ops. The first mbuf
/// takes as much as fits (>= 128 bytes: the headers are contiguous, XSA-423).
fn build_tx(
    pool: &Mempool,
    domid: u16,
    pkt: &crate::txparse::TxPacket,
    rsps: &crate::txparse::SmallVec<Rsp, { crate::txparse::MAX_PACKET_SLOTS }>,
    ops: &mut Vec<CopyOp>,
    segs: &mut Vec<(*mut u8, usize)>,
    mut out: SlotRsps,
) -> Option<(Mbuf, SlotRsps)> {
    let mut head = Mbuf::alloc(pool).ok()?;
    let room = usize::from(head.tailroom());
    let mut remaining = pkt.len as usize;
    // Extend the chain to hold the whole packet.
    let first = remaining.min(room);
    head.append(first as u16)?;
    remaining -= first;
    while remaining > 0 {
        let mut m = head.alloc_like().ok()?;
        let n = remaining.min(usize::from(m.tailroom()));
        m.append(n as u16)?;
        head.chain(m).ok()?;
        remaining -= n;
    }
    head.segment_ptrs(segs);
    let (mut si, mut so) = (0usize, 0usize);
    let mut data = pkt.slots.as_slice().iter();
    out.clear();
    // Responses in slot order; each data response owns the ops of the next data slot.
    for r in rsps.as_slice() {
        let Rsp::Data { .. } = r else {
            out.push((*r, 0..0));
            continue;
        };
        let s = data.next().expect("one data slot per data response");
        let r0 = ops.len();
        let mut off = 0usize;
        while off < usize::from(s.len) {
            let n = (usize::from(s.len) - off).min(segs[si].1 - so);
            ops.push(CopyOp {
                domid,
                gref: s.gref,
                offset: s.offset + off as u16,
                // SAFETY: so + n <= the segment's length.
                local: unsafe { segs[si].0.add(so) },
                len: n as u16,
                dir: CopyDir::FromForeign,
                status: 99,
            });
            off += n;
            so += n;
            if so == segs[si].1 && si + 1 < segs.len() {
                si += 1;
                so = 0;
            }
        }
        out.push((*r, r0..ops.len()));
    }
    Some((head, out))
}

fn head_gso(m: &Mbuf, f: &Features) -> Option<(u16, u8)> {
    let ol = m.ol_flags();
    if ol & pmd::sys::RTE_MBUF_F_TX_TCP_SEG == 0 {
        return None;
    }
    let mss = ((m.tx_offload() >> 24) & 0xffff) as u16;
    let v6 = ol & pmd::sys::RTE_MBUF_F_TX_IPV6 != 0;
    let ty = if v6 {
        XEN_NETIF_GSO_TYPE_TCPV6
    } else {
        XEN_NETIF_GSO_TYPE_TCPV4
    };
    let ok = f.sg
        && if v6 {
            f.gso_tcpv6
        } else {
            f.gso_tcpv4 || f.gso_prefix
        };
    (ok && mss > 0).then_some((mss, ty))
}

fn enqueue_backlog(q: &mut Queue, m: Mbuf, cfg: &EngineConfig) {
    let len = m.pkt_len() as usize;
    if q.disabled.is_some()
        || q.backlog.len() >= cfg.backlog_packets
        || q.backlog_bytes + len > cfg.backlog_bytes
    {
        q.local.rx_drop_backlog_full += 1;
        return;
    }
    q.backlog_bytes += len;
    q.backlog.push_back(m);
}
