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
mod counters;
mod drain;
mod fabric;
mod forward;
mod group;
mod inspect;
mod queue;
mod rx;
mod tx;

pub use counters::{GroupCounters, QueueCounters};
pub use drain::Drained;
pub use fabric::{connect_groups, move_queue, HANDOFF_RING};
pub use group::{Group, GroupIo};
pub use inspect::{GroupSnapshot, QueueSnapshot, RingIndices};
pub use queue::{Features, QueueId, QueueSetup};
pub use tx::TxBatchBuilder;

use group::{SlotRsps, UPLINK};

use crate::credit::Rate;
use crate::txparse::Rogue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Coalesce TCP segments toward frontends that take GSO (`crate::gro`).
    pub gro: bool,
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
            gro: true,
        }
    }
}

/// What the control plane asks of a group. Commands are applied between iterations, when
/// nothing of any queue is in flight: a removal's acknowledgement therefore means the
/// group has finished every operation on that queue and will not touch its rings again.
pub enum Command {
    /// A queue to run, with its endpoint id when groups share one L2 domain.
    AddQueue(Box<QueueSetup>, Option<crate::switch::EndpointId>),
    RemoveQueue(QueueId, std::sync::mpsc::Sender<bool>),
    /// Moving a queue, step 1 (to every group but its owner): frames for queue `queue` of
    /// the vif at `endpoint` are held here from now on, in order, until `Release`; every
    /// frame this group decided before is already in the owner's ring.
    Hold {
        endpoint: crate::switch::EndpointId,
        queue: u16,
        ack: std::sync::mpsc::Sender<bool>,
    },
    /// Step 2 (to the owner): hands the queue over to group `to` with everything it holds
    /// (rings, guest-RX backlog with every frame already handed to this group, credit,
    /// counters), between two iterations; acknowledged (true) once it is on its way.
    MoveOut {
        id: QueueId,
        to: usize,
        ack: std::sync::mpsc::Sender<bool>,
    },
    /// A queue another group handed over.
    MoveIn(MovedQueue),
    /// Step 3 (to every group but the old owner): the queue runs in group `owner`; the
    /// frames held for it go there first, then new ones.
    Release {
        endpoint: crate::switch::EndpointId,
        queue: u16,
        owner: usize,
    },
    SetRate(QueueId, Rate),
    /// Another group's queue: reachable through that group's handoff ring.
    AddRemote {
        /// The vif's (domid, devid), to which steering updates are addressed.
        vif: (u16, u32),
        endpoint: crate::switch::EndpointId,
        mac: crate::switch::Mac,
        vlan: Option<u16>,
        queue: u16,
        owner: usize,
    },
    RemoveRemote {
        endpoint: crate::switch::EndpointId,
        queue: u16,
    },
    /// The receive-side hash a vif's frontend configured over its control ring (None: the
    /// default symmetric flow hash, no hash extra): which of its queues a frame for it
    /// goes to, in every group, and the hash its queues report to the guest.
    SetSteering {
        vif: (u16, u32),
        state: Option<Arc<crate::ctrl::HashState>>,
    },
    /// Another group learned `mac` behind `endpoint` (the port: `EndpointId(0)` in
    /// every group).
    Learned {
        domain: crate::switch::Domain,
        mac: crate::switch::Mac,
        endpoint: crate::switch::EndpointId,
    },
    /// A copy of what only the group knows (ring indices, backlogs, credit, the MAC
    /// table), taken between two iterations, for the operator's `show` commands.
    Inspect(std::sync::mpsc::Sender<GroupSnapshot>),
    /// A new switch ageing time (ns), live.
    SetAgeing(u64),
    /// Fault injection (tests of the daemon's watchdog only): the group sleeps this long
    /// between two iterations, as a stuck lcore would.
    Stall(std::time::Duration),
}

/// A queue on its way between groups (see [`Command::MoveOut`]).
pub struct MovedQueue(Box<queue::Queue>);

/// The control plane's handle on a group running elsewhere.
#[derive(Clone)]
pub struct GroupHandle {
    tx: std::sync::mpsc::Sender<Command>,
    load: Arc<AtomicU64>,
    /// The group's counters (busy and idle cycles, for rebalancing).
    pub counters: Arc<GroupCounters>,
    /// The shared L2 domain and this group's index in it (`connect_groups`).
    fabric: Option<(Arc<fabric::Fabric>, usize)>,
}

impl GroupHandle {
    /// Queues the group runs (for least-loaded assignment).
    pub fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }

    /// Hands a queue to the group; with groups connected, every other group learns its
    /// MAC (and VLAN) as a remote endpoint.
    pub fn add_queue(&self, s: QueueSetup) -> bool {
        let endpoint = self
            .fabric
            .as_ref()
            .map(|(f, gi)| f.place(*gi, s.id, s.mac, s.vlan));
        // Counted now, so the next placement sees it before the group applies this one
        // (the group stores its true count when it does).
        self.load.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::AddQueue(Box::new(s), endpoint))
            .is_ok()
    }

    /// Removes a queue and waits (up to `timeout`) until the group has let go of it.
    pub fn remove_queue(&self, id: QueueId, timeout: std::time::Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.tx.send(Command::RemoveQueue(id, ack_tx)).is_err() {
            return false;
        }
        let removed = ack_rx.recv_timeout(timeout).unwrap_or(false);
        if let Some((f, gi)) = &self.fabric {
            f.unplace(*gi, id);
        }
        removed
    }

    pub fn set_rate(&self, id: QueueId, rate: Rate) -> bool {
        self.tx.send(Command::SetRate(id, rate)).is_ok()
    }

    /// Publishes a vif's control-ring hash configuration to this group (send it to every
    /// group that may deliver to the vif: with groups connected, all of them).
    pub fn set_steering(
        &self,
        domid: u16,
        devid: u32,
        state: Option<Arc<crate::ctrl::HashState>>,
    ) -> bool {
        self.tx
            .send(Command::SetSteering {
                vif: (domid, devid),
                state,
            })
            .is_ok()
    }

    /// What the group alone knows, copied between two iterations; None if the group does
    /// not answer within `timeout` (stopped, or stuck). The group is never stopped for it.
    pub fn inspect(&self, timeout: std::time::Duration) -> Option<GroupSnapshot> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.send(Command::Inspect(tx)).ok()?;
        rx.recv_timeout(timeout).ok()
    }

    /// Changes the switch's ageing time live.
    pub fn set_ageing(&self, ageing_ns: u64) -> bool {
        self.tx.send(Command::SetAgeing(ageing_ns)).is_ok()
    }

    /// Fault injection: makes the group sleep `d` between two iterations (see
    /// [`Command::Stall`]).
    pub fn stall(&self, d: std::time::Duration) -> bool {
        self.tx.send(Command::Stall(d)).is_ok()
    }
}

/// The group with the fewest queues (Linux netback's `xen_netbk_add_xenvif` rule).
pub fn least_loaded(groups: &[GroupHandle]) -> Option<&GroupHandle> {
    groups.iter().min_by_key(|g| g.load())
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
            Disable::Rogue(r) => write!(f, "malformed TX request: {r}"),
        }
    }
}

/// `Vec::push` for the per-packet lists, with the capacity made sure of before the element
/// is built: a push whose value must live across the grow call had it assembled on the
/// stack field by field and copied with wider loads, which stalled on store forwarding
/// (the largest single cost of the RX plan loop in a profile).
#[inline(always)]
pub(super) fn push_in_place<T>(v: &mut Vec<T>, make: impl FnOnce() -> T) {
    v.reserve(1);
    let len = v.len();
    // SAFETY: reserve(1) left capacity > len, so slot `len` is allocated; it is written
    // before set_len makes it part of the vector.
    unsafe {
        v.as_mut_ptr().add(len).write(make());
        v.set_len(len + 1);
    }
}
