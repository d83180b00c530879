//! One group: an lcore's poll loop over its queues and one port queue; queue lifecycle
//! (commands between iterations), adaptive sleep, and the batched grant-copy call.
use super::counters::{bump, GroupCounters, Local};
use super::queue::{Queue, QueueId, QueueSetup};
use super::rx::PendingRx;
use super::tx::PendingTx;
use super::{Adaptive, Command, Disable, EngineConfig, GroupHandle};
use crate::credit::Rate;
use crate::ctrl::HashState;
use crate::offload::{OffloadCounters, SoftGso, TxCaps};
use crate::switch::{EndpointId, EndpointKind, FwdCache, Mac, Switch, SwitchConfig};
use crate::txparse::Rsp;
use pmd::{Mbuf, Mempool, Port};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use xen::{CopyOp, EventChannel, GrantCopy};

/// The DPDK side of a group: its mbuf pool, its port queue and how offloads are done.
pub struct GroupIo {
    pub pool: Arc<Mempool>,
    pub port: Arc<Port>,
    pub port_queue: u16,
    pub caps: TxCaps,
    pub soft: SoftGso,
}

/// Responses of a guest TX packet in slot order, with each data slot's copy-op range.
pub(super) type SlotRsps = Vec<(Rsp, std::ops::Range<usize>)>;

/// One group: an lcore's poll loop.
pub struct Group<G: GrantCopy, E: EventChannel> {
    /// Mbufs for guest TX, taken from the pool in bursts.
    pub(super) mbufs: MbufCache,
    pub(super) cfg: EngineConfig,
    pub(super) gc: G,
    pub(super) ev: E,
    pub(super) pool: Arc<Mempool>,
    pub(super) port: Arc<Port>,
    pub(super) port_queue: u16,
    pub(super) caps: TxCaps,
    pub(super) soft: SoftGso,
    pub(super) switch: Switch,
    pub(super) queues: Vec<Queue>,
    pub(super) ops: Vec<CopyOp>,
    pub(super) ptx: Vec<PendingTx>,
    pub(super) prx: Vec<PendingRx>,
    pub(super) to_port: Vec<Mbuf>,
    pub(super) rx_burst: Vec<Mbuf>,
    pub(super) ofl: OffloadCounters,
    clock: pmd::tsc::Clock,
    /// Packets the port refused this iteration (flushed to `counters.port_tx_full`).
    pub(super) port_full: u64,
    /// Longest frame the port may send (its MTU, the Ethernet header and a VLAN tag); 0:
    /// unchecked. Larger frames that are not TSO are dropped here, counted.
    pub(super) port_frame_max: u32,
    pub(super) commands: Option<std::sync::mpsc::Receiver<Command>>,
    pub(super) cmd_tx: Option<std::sync::mpsc::Sender<Command>>,
    pub(super) load: Arc<AtomicU64>,
    pub counters: Arc<GroupCounters>,
    pub(super) copy_calls: u64,
    pub(super) copy_ops: u64,
    /// Buffers reused every iteration so the per-packet path allocates nothing.
    pub(super) scratch: Scratch,
    /// The switch's last decision for frames from the port.
    pub(super) uplink_fwd: FwdCache,
    /// The shared L2 domain, when groups are connected (`connect_groups`).
    pub(super) handoff: Option<super::fabric::Handoff>,
    /// Every vif's queues by queue number (ascending), here or in another group: the
    /// switch's endpoints are vifs, a frame for one goes to one of its queues.
    pub(super) vifs: Routes,
    /// Set while `take_handoffs` runs (it may apply commands): a queue moved out then does
    /// not take handed-over frames itself, which would put later frames before earlier ones.
    pub(super) in_handoffs: bool,
    /// Frames for queues being moved (`Place::Held`), in arrival order, until released.
    pub(super) held: Vec<(EndpointId, u16, Mbuf)>,
    /// Set by [`Group::drain`]: guest TX requests are no longer consumed.
    pub(super) draining: bool,
    /// Set while guest RX switches the port's burst: a frame for a queue with an empty
    /// backlog may go straight to the guest (`Group::rx_direct`).
    pub(super) rx_direct: bool,
}

/// Every vif's queues by queue number, the vifs sorted by endpoint: a binary search costs
/// about what a scan does for a few vifs (the common case) and less than a hash for dozens.
#[derive(Default)]
pub(super) struct Routes(Vec<(EndpointId, VifRoutes)>);

/// Where one vif's queues run, and how a frame picks one of them.
pub(super) struct VifRoutes {
    /// (domid, devid): steering updates name the vif so.
    pub(super) vif: (u16, u32),
    /// (queue number, where it runs), by queue number.
    pub(super) queues: Vec<(u16, Place)>,
    /// The frontend's control-ring hash configuration, if it set one.
    pub(super) steer: Option<Arc<HashState>>,
}

impl Routes {
    #[inline]
    pub(super) fn get(&self, e: &EndpointId) -> Option<&VifRoutes> {
        let i = self.0.binary_search_by_key(e, |x| x.0).ok()?;
        Some(&self.0[i].1)
    }

    fn get_mut(&mut self, e: &EndpointId) -> Option<&mut VifRoutes> {
        let i = self.0.binary_search_by_key(e, |x| x.0).ok()?;
        Some(&mut self.0[i].1)
    }

    /// The routes of `e`, created empty for `vif` if it has none.
    fn entry(&mut self, e: EndpointId, vif: (u16, u32)) -> &mut VifRoutes {
        let i = match self.0.binary_search_by_key(&e, |x| x.0) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(
                    i,
                    (
                        e,
                        VifRoutes {
                            vif,
                            queues: Vec::new(),
                            steer: None,
                        },
                    ),
                );
                i
            }
        };
        &mut self.0[i].1
    }

    fn remove(&mut self, e: &EndpointId) {
        if let Ok(i) = self.0.binary_search_by_key(e, |x| x.0) {
            self.0.remove(i);
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&EndpointId, &mut VifRoutes)> {
        self.0.iter_mut().map(|(e, r)| (&*e, r))
    }

    fn max_endpoint(&self) -> u32 {
        self.0.last().map_or(0, |x| x.0 .0)
    }
}

/// Where a vif queue runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// Here, at this index of `queues` (kept current when queues come and go).
    Local(usize),
    /// In the group of this index (through its handoff ring).
    Remote(usize),
    /// Being moved between groups: frames wait in the group's `held` list.
    Held,
}

/// Mbufs taken from the pool `BURST` at a time (one `rte_pktmbuf_alloc_bulk`) and handed
/// out one by one: per-packet allocation calls cost more than the copy of a small packet.
/// At most `BURST - 1` wait here between iterations.
pub(super) struct MbufCache {
    v: Vec<Mbuf>,
    pool: Arc<Mempool>,
    /// Bytes a fresh mbuf of the pool takes after its headroom.
    room: u16,
}

impl MbufCache {
    const BURST: usize = 32;

    pub(super) fn new(pool: Arc<Mempool>) -> Self {
        let room = pool
            .data_room()
            .saturating_sub(pmd::sys::RTE_PKTMBUF_HEADROOM as u16);
        MbufCache {
            v: Vec::with_capacity(Self::BURST),
            pool,
            room,
        }
    }

    /// Bytes a fresh mbuf holds (its data room less the headroom).
    pub(super) fn room(&self) -> u16 {
        self.room
    }

    /// One mbuf, or None when the pool is empty.
    #[inline]
    pub(super) fn get(&mut self) -> Option<Mbuf> {
        match self.v.pop() {
            Some(m) => Some(m),
            None => self.refill(),
        }
    }

    /// A burst from the pool, one of it returned.
    #[inline(never)]
    fn refill(&mut self) -> Option<Mbuf> {
        if Mbuf::alloc_bulk(&self.pool, &mut self.v, Self::BURST).is_ok() {
            return self.v.pop();
        }
        // Fewer than a burst left in the pool: one at a time.
        Mbuf::alloc(&self.pool).ok()
    }
}

/// Per-group buffers reused across packets and iterations.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) seg_lens: Vec<u32>,
    pub(super) seg_ptrs: Vec<(*mut u8, usize)>,
    pub(super) rx_reqs: Vec<crate::netif::RxRequest>,
    pub(super) offload_out: Vec<Mbuf>,
    pub(super) rsps_pool: Vec<SlotRsps>,
    /// (request id, op range, bytes) of every guest RX data buffer of the iteration.
    pub(super) rx_bufs: Vec<(u16, std::ops::Range<usize>, u16)>,
    /// Mbufs whose data reached the guest, freed in one call.
    pub(super) done: Vec<Mbuf>,
    /// A flooded frame's destinations.
    pub(super) flood: Vec<(EndpointId, crate::switch::Egress)>,
    /// The guest TX parse of the packet at hand, refilled per packet.
    pub(super) parsed: crate::txparse::Parsed,
    /// GRO's flow table and the frames of a pass.
    pub(super) gro: crate::gro::Gro,
    pub(super) gro_out: Vec<Mbuf>,
}

// SAFETY: the raw pointers in `seg_ptrs` are only meaningful (and only used) within one
// iteration of the group that owns them; between iterations they are stale and ignored.
unsafe impl Send for Scratch {}

pub(super) const UPLINK: EndpointId = EndpointId(0);

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
        let mbufs = MbufCache::new(pool.clone());
        Group {
            mbufs,
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
            clock: pmd::tsc::Clock::start(),
            port_full: 0,
            port_frame_max: 0,
            commands: None,
            cmd_tx: None,
            load: Arc::new(AtomicU64::new(0)),
            counters: Arc::new(GroupCounters::default()),
            copy_calls: 0,
            copy_ops: 0,
            scratch: Scratch::default(),
            uplink_fwd: FwdCache::default(),
            handoff: None,
            vifs: Routes::default(),
            in_handoffs: false,
            held: Vec::new(),
            draining: false,
            rx_direct: false,
        }
    }

    /// Frames toward the port longer than `mtu` plus an Ethernet header and a VLAN tag
    /// (and not TSO, which the port or software segments) are dropped and counted
    /// (`GroupCounters::port_tx_too_big`), as a Linux bridge drops them. 0: no check.
    pub fn set_port_mtu(&mut self, mtu: u16) {
        self.port_frame_max = if mtu == 0 { 0 } else { u32::from(mtu) + 18 };
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
            counters: self.counters.clone(),
            fabric: None,
        }
    }

    pub(super) fn apply_commands(&mut self) {
        let Some(rx) = self.commands.take() else {
            return;
        };
        while let Ok(c) = rx.try_recv() {
            match c {
                Command::AddQueue(s, endpoint) => self.add_queue_as(*s, endpoint),
                Command::RemoveQueue(id, ack) => {
                    let removed = self.remove_queue(id);
                    let _ = ack.send(removed);
                }
                Command::SetRate(id, r) => self.set_rate(id, r),
                Command::Hold {
                    endpoint,
                    queue,
                    ack,
                } => {
                    let _ = ack.send(self.hold(endpoint, queue));
                }
                Command::MoveOut { id, to, ack } => {
                    let moved = self.move_out(id, to);
                    let _ = ack.send(moved);
                }
                Command::MoveIn(super::MovedQueue(q)) => self.move_in(*q),
                Command::Release {
                    endpoint,
                    queue,
                    owner,
                } => self.release(endpoint, queue, owner),
                Command::AddRemote {
                    vif,
                    endpoint,
                    mac,
                    vlan,
                    queue,
                    owner,
                } => {
                    if self.handoff.is_some() {
                        self.add_route(vif, endpoint, mac, vlan, queue, Place::Remote(owner));
                    }
                }
                Command::SetSteering { vif, state } => self.set_steering(vif, state),
                Command::Learned {
                    domain,
                    mac,
                    endpoint,
                } => {
                    let now = self.now();
                    self.switch.learn_from_peer(domain, mac, endpoint, now);
                }
                Command::RemoveRemote { endpoint, queue } => {
                    self.remove_route(endpoint, queue, |p| matches!(p, Place::Remote(_)));
                }
                Command::Inspect(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Command::SetAgeing(ns) => self.switch.set_ageing(ns),
                Command::Stall(d) => {
                    log::warn!("fault injection: group stalls for {d:?}");
                    std::thread::sleep(d);
                }
            }
        }
        self.commands = Some(rx);
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Adds a queue (its vif's MAC becomes a switch endpoint).
    pub fn add_queue(&mut self, s: QueueSetup) {
        self.add_queue_as(s, None)
    }

    /// Adds a queue of the vif whose switch endpoint is `endpoint` (allocated by the
    /// fabric when groups share an L2 domain), else of the vif's endpoint here (the one its
    /// other queues use, or a new one).
    fn add_queue_as(&mut self, s: QueueSetup, endpoint: Option<EndpointId>) {
        let endpoint = endpoint.unwrap_or_else(|| {
            let same_vif = self
                .queues
                .iter()
                .find(|q| q.id.domid == s.id.domid && q.id.devid == s.id.devid);
            match same_vif {
                Some(q) => q.endpoint,
                None => EndpointId(1 + self.vifs.max_endpoint()),
            }
        });
        // A queue of that number already here (a re-add): replaced.
        self.remove_queue(s.id);
        self.add_route(
            (s.id.domid, s.id.devid),
            endpoint,
            s.mac,
            s.vlan,
            s.id.queue,
            Place::Local(usize::MAX),
        );
        self.queues.push(Queue {
            id: s.id,
            tx: s.tx,
            rx: s.rx,
            evtchn_tx: s.evtchn_tx,
            evtchn_rx: s.evtchn_rx,
            features: s.features,
            max_frame: if s.mtu == 0 { 0 } else { u32::from(s.mtu) + 18 },
            credit: s.credit,
            counters: s.counters,
            local: Local::default(),
            backlog: VecDeque::new(),
            gro_fresh: 0,
            gro_tcp: 0,
            direct: 0,
            rx_batch_begun: false,
            backlog_bytes: 0,
            head_wait_since: None,
            stalled: false,
            disabled: None,
            disable_reported: false,
            endpoint,
            mac: s.mac,
            vlan: s.vlan,
            fwd: FwdCache::default(),
            steer: self.vifs.get(&endpoint).and_then(|r| r.steer.clone()),
        });
        self.reindex_routes();
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
    }

    /// Removes a queue; nothing of it is in flight between iterations, so this is the
    /// acknowledgement the control plane waits for. Its backlog is freed.
    pub fn remove_queue(&mut self, id: QueueId) -> bool {
        let Some(i) = self.queues.iter().position(|q| q.id == id) else {
            return false;
        };
        let mut q = self.queues.remove(i);
        self.remove_route(q.endpoint, q.id.queue, |p| matches!(p, Place::Local(_)));
        self.reindex_routes();
        q.local.flush(&q.counters);
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
        true
    }

    /// Hands queue `id` to group `to` (see [`Command::MoveOut`]). Every frame handed to
    /// this group so far is taken first (into the backlog that moves along: the other
    /// groups hold the queue's frames meanwhile); from now on this group's frames for the
    /// queue go to `to`'s ring.
    fn move_out(&mut self, id: QueueId, to: usize) -> bool {
        let Some(h) = self.handoff.as_ref() else {
            return false;
        };
        let (gi, n) = (h.gi(), h.groups());
        if to == gi || to >= n || !self.queues.iter().any(|q| q.id == id) {
            return false;
        }
        if !self.in_handoffs {
            self.take_all_handoffs();
        }
        let Some(i) = self.queues.iter().position(|q| q.id == id) else {
            return false;
        };
        let mut q = self.queues.remove(i);
        q.local.flush(&q.counters);
        q.fwd = FwdCache::default();
        let (endpoint, queue) = (q.endpoint, q.id.queue);
        if let Some(r) = self.vifs.get_mut(&endpoint) {
            for (k, place) in r.queues.iter_mut() {
                if *k == queue {
                    *place = Place::Remote(to);
                }
            }
        }
        self.reindex_routes();
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
        let h = self.handoff.as_ref().expect("checked above");
        // Sent before any frame of ours for the queue reaches `to`'s ring.
        if !h.send_to(to, Command::MoveIn(super::MovedQueue(Box::new(q)))) {
            return false;
        }
        bump(&self.counters.queues_moved_out, 1);
        true
    }

    /// Everything in this group's handoff ring now, not only a budget's worth.
    fn take_all_handoffs(&mut self) {
        while self.handoff.as_ref().is_some_and(|h| !h.inbox.is_empty()) {
            if self.take_handoffs() == 0 {
                break;
            }
        }
    }

    /// Holds the frames for a queue about to move (see [`Command::Hold`]).
    fn hold(&mut self, endpoint: EndpointId, queue: u16) -> bool {
        let Some(r) = self.vifs.get_mut(&endpoint) else {
            return false;
        };
        let mut found = false;
        for (k, place) in r.queues.iter_mut() {
            if *k == queue {
                *place = Place::Held;
                found = true;
            }
        }
        self.reindex_routes();
        found
    }

    /// Ends a hold: the queue runs in group `owner` (here, if it moved in); the frames
    /// held for it go there first, in order.
    fn release(&mut self, endpoint: EndpointId, queue: u16, owner: usize) {
        let here = self.handoff.as_ref().is_some_and(|h| h.gi() == owner);
        if let Some(r) = self.vifs.get_mut(&endpoint) {
            for (k, place) in r.queues.iter_mut() {
                if *k == queue && *place == Place::Held {
                    *place = if here {
                        Place::Local(usize::MAX)
                    } else {
                        Place::Remote(owner)
                    };
                }
            }
        }
        self.reindex_routes();
        let held = std::mem::take(&mut self.held);
        for (e, q, m) in held {
            if (e, q) == (endpoint, queue) {
                self.deliver_to(e, q, m);
            } else {
                self.held.push((e, q, m));
            }
        }
    }

    /// Takes in a queue another group handed over: it runs here from this iteration on,
    /// its backlog first.
    fn move_in(&mut self, mut q: Queue) {
        self.remove_queue(q.id);
        let vif = (q.id.domid, q.id.devid);
        // Still held (the release follows): this group's own frames for the queue wait
        // until those it sent the old owner before the hold are through.
        let held = self.vifs.get(&q.endpoint).is_some_and(|r| {
            r.queues
                .iter()
                .any(|&(k, p)| k == q.id.queue && p == Place::Held)
        });
        let at = if held {
            Place::Held
        } else {
            Place::Local(usize::MAX)
        };
        self.add_route(vif, q.endpoint, q.mac, q.vlan, q.id.queue, at);
        q.steer = self.vifs.get(&q.endpoint).and_then(|r| r.steer.clone());
        self.queues.push(q);
        self.reindex_routes();
        self.load.store(self.queues.len() as u64, Ordering::Relaxed);
        bump(&self.counters.queues_moved_in, 1);
        // What the old group sent here before it let go is all in the ring by now: the
        // frames its guest sent to queues here go before any it sends from here (its TX
        // runs later in this iteration), and those for the queue itself after its backlog.
        if !self.in_handoffs {
            self.take_all_handoffs();
        }
    }

    /// Points every local route at its queue's index in `queues` (after the list changed).
    fn reindex_routes(&mut self) {
        for (endpoint, routes) in self.vifs.iter_mut() {
            for (queue, place) in routes.queues.iter_mut() {
                if let Place::Local(qi) = place {
                    *qi = self
                        .queues
                        .iter()
                        .position(|q| q.endpoint == *endpoint && q.id.queue == *queue)
                        .unwrap_or(usize::MAX);
                }
            }
        }
    }

    /// Records queue `queue` of the vif at `endpoint` (its MAC and VLAN become a switch
    /// endpoint with its first queue).
    fn add_route(
        &mut self,
        vif: (u16, u32),
        endpoint: EndpointId,
        mac: Mac,
        vlan: Option<u16>,
        queue: u16,
        at: Place,
    ) {
        let routes = &mut self.vifs.entry(endpoint, vif).queues;
        if routes.is_empty() {
            self.switch
                .add_endpoint(endpoint, EndpointKind::Vif { mac, vlan });
        }
        routes.retain(|r| r.0 != queue);
        let k = routes.partition_point(|r| r.0 < queue);
        routes.insert(k, (queue, at));
    }

    /// Applies a vif's new hash configuration to its routes (choosing the queue) and to
    /// its queues here (reporting the hash). A vif not (yet) known here is ignored: its
    /// configuration is per connection and is sent again with every change.
    fn set_steering(&mut self, vif: (u16, u32), state: Option<Arc<HashState>>) {
        for (_, r) in self.vifs.iter_mut() {
            if r.vif == vif {
                r.steer = state.clone();
            }
        }
        for q in &mut self.queues {
            if (q.id.domid, q.id.devid) == vif {
                q.steer = state.clone();
            }
        }
    }

    /// Forgets queue `queue` of the vif at `endpoint` if `which` accepts where it was; the
    /// vif leaves the switch with its last queue.
    fn remove_route(&mut self, endpoint: EndpointId, queue: u16, which: impl Fn(Place) -> bool) {
        let Some(routes) = self.vifs.get_mut(&endpoint) else {
            return;
        };
        routes.queues.retain(|r| r.0 != queue || !which(r.1));
        if routes.queues.is_empty() {
            self.vifs.remove(&endpoint);
            self.switch.remove_endpoint(endpoint);
        }
    }

    /// Applies a new rate to a queue's vif (all its queues share the credit), live.
    pub fn set_rate(&mut self, id: QueueId, rate: Rate) {
        if let Some(q) = self.queues.iter_mut().find(|q| q.id == id) {
            q.credit.set_rate(rate);
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

    pub(super) fn disable(&mut self, i: usize, why: Disable) {
        let q = &mut self.queues[i];
        if q.disabled.is_none() {
            // Once per queue: the queue is skipped from now on, so this cannot repeat.
            log::warn!(
                "dom{} vif{} queue {}: frontend broke the netif protocol ({why}); queue disabled",
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
            bump(&self.counters.sleeps, 1);
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
        // Handed-over frames raise no event channel: do not sleep on them.
        if let Some(h) = &self.handoff {
            work |= !h.inbox.is_empty();
        }
        work
    }

    /// One iteration of both directions; returns the work done (packets), 0 when idle.
    pub fn poll(&mut self) -> usize {
        let t0 = pmd::tsc::cycles();
        self.apply_commands();
        let tx_work = if self.draining { 0 } else { self.guest_tx() };
        let t_tx = pmd::tsc::cycles();
        let mut work = tx_work;
        work += self.take_handoffs();
        work += self.guest_rx();
        if let Some(h) = self.handoff.as_mut() {
            let (sent, full) = h.flush();
            if sent > 0 {
                bump(&self.counters.handoffs, sent);
            }
            if full > 0 {
                bump(&self.counters.handoff_ring_full, full);
            }
            h.announce(&mut self.switch);
        }
        let mut notes = 0;
        for q in &mut self.queues {
            notes += q.local.notifications;
            q.local.flush(&q.counters);
        }
        let c = &self.counters;
        bump(&c.iterations, 1);
        if notes > 0 {
            bump(&c.notifications, notes);
        }
        if self.copy_calls > 0 {
            bump(&c.grant_copy_calls, self.copy_calls);
            bump(&c.grant_copy_ops, self.copy_ops);
            self.copy_calls = 0;
            self.copy_ops = 0;
        }
        if self.port_full > 0 {
            bump(&c.port_tx_full, self.port_full);
            self.port_full = 0;
        }
        let t_end = pmd::tsc::cycles();
        let spent = t_end.wrapping_sub(t0);
        if tx_work > 0 {
            bump(&c.tx_cycles, t_tx.wrapping_sub(t0));
            bump(&c.tx_packets, tx_work as u64);
        }
        if work > tx_work {
            bump(&c.rx_cycles, t_end.wrapping_sub(t_tx));
            bump(&c.rx_packets, (work - tx_work) as u64);
        }
        if work > 0 {
            bump(&c.busy_iterations, 1);
            bump(&c.batched_packets, work as u64);
            bump(&c.busy_cycles, spent);
        } else {
            bump(&c.idle_cycles, spent);
        }
        work
    }

    /// One grant-copy call for the whole batch of this direction. If the call itself fails
    /// every op counts as failed (each slot then gets its error response).
    pub(super) fn submit_batch(&mut self) {
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
}
