//! Counters: per-queue atomics read by metrics, their lcore-local deltas flushed once per
//! iteration, and the group-wide counters.
use super::Disable;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// GSO frames coalesced toward the guest, and the wire segments they carry.
    pub rx_gro_frames: AtomicU64,
    pub rx_gro_segments: AtomicU64,
    pub notifications: AtomicU64,
    pub rogue: AtomicU64,
    /// Set once by the group when it disables the queue (tier 2), so the control plane can
    /// write the vif's `error` node and close it.
    pub disabled: std::sync::OnceLock<Disable>,
}

/// Calls macro `$m` with the names of every counter of [`QueueCounters`] (all but
/// `disabled`), so that copies of the list (the lcore-local deltas here, the metrics'
/// snapshots) cannot drift from it.
#[macro_export]
macro_rules! with_queue_counters {
    ($m:ident) => {
        $m!(
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
            rx_gro_frames,
            rx_gro_segments,
            notifications,
            rogue
        );
    };
}

macro_rules! local_deltas {
    ($($n:ident),* $(,)?) => {
        /// Lcore-local counter deltas, flushed to the atomics once per iteration.
        #[derive(Clone, Copy, Debug, Default)]
        pub(super) struct Local {
            $(pub(super) $n: u64,)*
        }

        impl Local {
            pub(super) fn flush(&mut self, c: &QueueCounters) {
                $(
                    if self.$n != 0 {
                        c.$n.fetch_add(self.$n, Ordering::Relaxed);
                    }
                )*
                *self = Local::default();
            }
        }
    };
}
with_queue_counters!(local_deltas);

/// Group-wide counters (readable while the group runs).
#[derive(Debug, Default)]
pub struct GroupCounters {
    pub iterations: AtomicU64,
    pub busy_iterations: AtomicU64,
    pub grant_copy_calls: AtomicU64,
    pub grant_copy_ops: AtomicU64,
    pub port_tx_full: AtomicU64,
    /// Frames toward the port longer than its MTU allows (not TSO): dropped.
    pub port_tx_too_big: AtomicU64,
    /// Sum of packets per busy iteration (batch size = this / busy_iterations).
    pub batched_packets: AtomicU64,
    /// Times the group slept on its event channels (adaptive mode).
    pub sleeps: AtomicU64,
    /// TSC cycles spent in iterations that moved a packet, and in those that did not
    /// (OVS's pmd-stats split): busy cycles per packet is the engine's own cost,
    /// whatever the load offered.
    pub busy_cycles: AtomicU64,
    pub idle_cycles: AtomicU64,
    /// Frames handed to another group's ring (its vif was the destination), refused
    /// because that ring was full, and received for an endpoint that had gone meanwhile.
    pub handoffs: AtomicU64,
    pub handoff_ring_full: AtomicU64,
    pub handoff_stale: AtomicU64,
    /// Handed-over frames passed on to the group a queue had just moved to.
    pub handoff_forwarded: AtomicU64,
    /// Queues moved to another group, and received from one (rebalancing).
    pub queues_moved_out: AtomicU64,
    pub queues_moved_in: AtomicU64,
    /// Frames dropped while their queue was being moved (more held than a backlog).
    pub move_held_dropped: AtomicU64,
    /// Per direction: TSC cycles of the guest-TX part of iterations that moved guest TX
    /// packets, and those packets; the same for the guest-RX part (port and handoff
    /// bursts, copies to guests). Cycles per packet each way = cycles / packets.
    pub tx_cycles: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_cycles: AtomicU64,
    pub rx_packets: AtomicU64,
    /// Event-channel notifications sent to the group's guests (both directions).
    pub notifications: AtomicU64,
}

/// Adds to a counter only its group writes (a plain load and store: no locked
/// instruction in the poll loop; readers see whole values).
pub(super) fn bump(c: &AtomicU64, v: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
}
