//! What only a group knows (its rings' private indices, backlogs, credit, the MAC table),
//! copied on request between two iterations ([`super::Command::Inspect`]) for the daemon's
//! operator commands. Slow path: it allocates, and runs only when an operator asks.
use super::group::Group;
use super::queue::QueueId;
use super::Disable;
use crate::credit::Rate;
use crate::switch::TableEntry;
use xen::{EventChannel, GrantCopy};

/// One ring's indices: the frontend's `req_prod` (shared page), the backend's `req_cons`
/// and its `rsp_prod` (every response produced is pushed before an iteration ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingIndices {
    pub req_prod: u32,
    pub req_cons: u32,
    pub rsp_prod: u32,
}

/// One queue as its group holds it.
#[derive(Clone, Debug)]
pub struct QueueSnapshot {
    pub id: QueueId,
    /// The vif's switch endpoint (the MAC table's entries point at endpoints).
    pub endpoint: u32,
    pub tx: RingIndices,
    pub rx: RingIndices,
    /// Guest-RX backlog: packets and bytes waiting for the guest's buffers.
    pub backlog_packets: usize,
    pub backlog_bytes: usize,
    /// The queue's token bucket: its rate and the bytes left in the current window.
    pub rate: Rate,
    pub credit_remaining: u64,
    pub stalled: bool,
    pub disabled: Option<Disable>,
}

/// A group's state at one instant between two iterations.
#[derive(Clone, Debug)]
pub struct GroupSnapshot {
    pub queues: Vec<QueueSnapshot>,
    /// The group's MAC table (static and live learned entries).
    pub table: Vec<TableEntry>,
    pub ageing_ns: u64,
}

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    /// A copy of the group's private state (between iterations: nothing is in flight).
    pub fn snapshot(&self) -> GroupSnapshot {
        let ring = |req_prod, req_cons, rsp_prod| RingIndices {
            req_prod,
            req_cons,
            rsp_prod,
        };
        GroupSnapshot {
            queues: self
                .queues
                .iter()
                .map(|q| QueueSnapshot {
                    id: q.id,
                    endpoint: q.endpoint.0,
                    tx: ring(q.tx.req_prod(), q.tx.req_cons(), q.tx.rsp_prod_pvt()),
                    rx: ring(q.rx.req_prod(), q.rx.req_cons(), q.rx.rsp_prod_pvt()),
                    backlog_packets: q.backlog.len(),
                    backlog_bytes: q.backlog_bytes,
                    rate: q.credit.rate(),
                    credit_remaining: q.credit.remaining(),
                    stalled: q.stalled,
                    disabled: q.disabled,
                })
                .collect(),
            table: self.switch.entries(self.now()),
            ageing_ns: self.switch.config().ageing_ns,
        }
    }
}
