//! A vif queue as a group holds it: its two rings, channels, credit, counters and the
//! guest-RX backlog.
use super::counters::{Local, QueueCounters};
use super::{Disable, EngineConfig};
use crate::credit::VifCredit;
use crate::netif::{BackRing, RxRing, TxRing};
use crate::switch::{EndpointId, FwdCache};
use pmd::Mbuf;
use std::collections::VecDeque;
use std::sync::Arc;

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

impl Features {
    /// Takes coalesced TCP frames (`crate::gro`): scatter-gather and a TCP GSO type.
    pub fn gro_capable(&self) -> bool {
        self.sg && (self.gso_tcpv4 || self.gso_prefix || self.gso_tcpv6)
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
    /// The vif's MTU (the toolstack's `mtu` key): longer frames that are not TSO are not
    /// delivered to the guest (counted as `rx_drop_too_big`); 0: unchecked.
    pub mtu: u16,
    /// The vif's credit (`rate`), the same for all its queues.
    pub credit: Arc<VifCredit>,
    pub counters: Arc<QueueCounters>,
}

pub(super) struct Queue {
    pub(super) id: QueueId,
    pub(super) tx: BackRing<TxRing>,
    pub(super) rx: BackRing<RxRing>,
    pub(super) evtchn_tx: u32,
    pub(super) evtchn_rx: u32,
    pub(super) features: Features,
    /// Longest frame delivered to the guest (MTU, Ethernet header, a VLAN tag); 0: any.
    pub(super) max_frame: u32,
    pub(super) credit: Arc<VifCredit>,
    pub(super) counters: Arc<QueueCounters>,
    pub(super) local: Local,
    pub(super) backlog: VecDeque<Mbuf>,
    pub(super) backlog_bytes: usize,
    /// Frames at the end of the backlog that no GRO pass has seen yet.
    pub(super) gro_fresh: usize,
    /// How many of those may be TCP segments (`gro::maybe_tcp`, counted as they arrive,
    /// while the header is in cache): a pass runs only for two or more.
    pub(super) gro_tcp: usize,
    /// Packets of this iteration's port burst that went straight to the guest (their
    /// requests taken, their copies queued) without the backlog; they count against the
    /// budget.
    pub(super) direct: usize,
    /// The RX ring's request snapshot was taken this iteration (for the direct lane).
    pub(super) rx_batch_begun: bool,
    /// Since when the head packet has waited for RX buffers.
    pub(super) head_wait_since: Option<u64>,
    pub(super) stalled: bool,
    pub(super) disabled: Option<Disable>,
    /// The disable was handed out by `take_disabled` (the daemon reads
    /// `counters.disabled` instead, so nothing accumulates when nobody asks).
    pub(super) disable_reported: bool,
    pub(super) endpoint: EndpointId,
    /// The vif's MAC and access VLAN (its switch endpoint, wherever the queue moves).
    pub(super) mac: [u8; 6],
    pub(super) vlan: Option<u16>,
    /// The switch's last decision for this queue's guest TX frames.
    pub(super) fwd: FwdCache,
    /// The vif's control-ring hash configuration: with Toeplitz selected, each frame to
    /// the guest carries its hash in a hash extra.
    pub(super) steer: Option<Arc<crate::ctrl::HashState>>,
}

#[inline]
pub(super) fn enqueue_backlog(q: &mut Queue, m: Mbuf, cfg: &EngineConfig) {
    let len = m.pkt_len() as usize;
    if q.disabled.is_some()
        || q.backlog.len() >= cfg.backlog_packets
        || q.backlog_bytes + len > cfg.backlog_bytes
    {
        q.local.rx_drop_backlog_full += 1;
        return;
    }
    q.backlog_bytes += len;
    if cfg.gro && q.features.gro_capable() {
        q.gro_tcp += usize::from(crate::gro::maybe_tcp(&m));
    }
    q.backlog.push_back(m);
    q.gro_fresh += 1;
}
