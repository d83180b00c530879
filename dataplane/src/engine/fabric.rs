//! One L2 domain across groups. Every group's switch knows every vif, and every group
//! knows where each vif queue runs (its own, or another group's, registered by message); a
//! frame for a queue of another group is handed to that group through its multi-producer
//! `rte_ring`, tagged with the vif's endpoint and the queue, and the owner queues it for
//! its guest without switching it again. A flood is expanded by the ingress group alone (one
//! copy per destination vif, local or remote, and one toward its own port queue), so every
//! vif gets a broadcast exactly once and the uplink never sees a vif-to-vif frame.
//!
//! What a group's switch learns (a MAC on its port queue or behind one of its vifs) is
//! announced to the other groups by message, so they forward to it instead of flooding.
//!
//! Endpoint ids are global (allocated here, never reused while the daemon runs), so a frame
//! still in a ring for a queue that went away is recognised as stale and dropped.
use super::queue::QueueId;
use super::{Command, Group, GroupHandle};
use crate::switch::{EndpointId, Mac};
use pmd::{Mbuf, MbufRing, RingConsumer, RingProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use xen::{EventChannel, GrantCopy};

/// What the control plane's handles share: every group's command channel, the endpoint
/// allocator and each vif's endpoint with the number of its queues placed.
pub(super) struct Fabric {
    senders: Vec<Sender<Command>>,
    next_endpoint: AtomicU32,
    vifs: Mutex<HashMap<(u16, u32), (EndpointId, usize)>>,
}

impl Fabric {
    /// The endpoint of queue `id`'s vif (a fresh one for its first queue) as the queue is
    /// placed in group `owner`; the other groups are told where the queue runs (before or
    /// after the owner adds it: a frame that races ahead is dropped as stale at the owner,
    /// never misdelivered).
    pub(super) fn place(
        &self,
        owner: usize,
        id: QueueId,
        mac: Mac,
        vlan: Option<u16>,
    ) -> EndpointId {
        let endpoint = {
            let mut vifs = self.vifs.lock().unwrap_or_else(|e| e.into_inner());
            let e = vifs.entry((id.domid, id.devid)).or_insert_with(|| {
                (
                    EndpointId(self.next_endpoint.fetch_add(1, Ordering::Relaxed)),
                    0,
                )
            });
            e.1 += 1;
            e.0
        };
        for (g, tx) in self.senders.iter().enumerate() {
            if g != owner {
                let _ = tx.send(Command::AddRemote {
                    vif: (id.domid, id.devid),
                    endpoint,
                    mac,
                    vlan,
                    queue: id.queue,
                    owner,
                });
            }
        }
        endpoint
    }

    /// The switch endpoint of queue `id`'s vif, while it has queues placed.
    pub(super) fn endpoint_of(&self, id: QueueId) -> Option<EndpointId> {
        let vifs = self.vifs.lock().unwrap_or_else(|e| e.into_inner());
        vifs.get(&(id.domid, id.devid)).map(|e| e.0)
    }

    /// Forgets a removed queue in the other groups (its vif's endpoint with its last).
    pub(super) fn unplace(&self, owner: usize, id: QueueId) {
        let endpoint = {
            let mut vifs = self.vifs.lock().unwrap_or_else(|e| e.into_inner());
            let Some(e) = vifs.get_mut(&(id.domid, id.devid)) else {
                return;
            };
            e.1 = e.1.saturating_sub(1);
            let endpoint = e.0;
            if e.1 == 0 {
                vifs.remove(&(id.domid, id.devid));
            }
            endpoint
        };
        for (g, tx) in self.senders.iter().enumerate() {
            if g != owner {
                let _ = tx.send(Command::RemoveRemote {
                    endpoint,
                    queue: id.queue,
                });
            }
        }
    }
}

/// A group's side of the fabric.
pub(super) struct Handoff {
    /// This group's index.
    gi: usize,
    /// Every group's command channel (for announcing learned MACs).
    cmds: Vec<Sender<Command>>,
    /// Learned entries to announce this iteration.
    fresh: Vec<crate::switch::Announce>,
    /// Frames other groups handed to this one.
    pub(super) inbox: RingConsumer,
    /// Every group's inbox, by group index (this group's own included, unused).
    peers: Vec<RingProducer>,
    /// Frames for each group, sent once per iteration.
    pub(super) outbox: Vec<Vec<Mbuf>>,
    /// Frames taken out of the inbox this iteration.
    pub(super) arrived: Vec<Mbuf>,
}

impl Handoff {
    /// This group's index.
    pub(super) fn gi(&self) -> usize {
        self.gi
    }

    /// Groups in the L2 domain.
    pub(super) fn groups(&self) -> usize {
        self.cmds.len()
    }

    /// Sends a command to group `g`; false if it is gone.
    pub(super) fn send_to(&self, g: usize, c: Command) -> bool {
        self.cmds.get(g).is_some_and(|tx| tx.send(c).is_ok())
    }

    /// Tells the other groups what `switch` learned since the last call (new or moved
    /// MACs, and live ones again every half ageing time), so a MAC learned on one group's
    /// port queue or vif is not flooded to by the others.
    pub(super) fn announce(&mut self, switch: &mut crate::switch::Switch) {
        switch.take_fresh(&mut self.fresh);
        for &(domain, mac, endpoint) in &self.fresh {
            for (g, tx) in self.cmds.iter().enumerate() {
                if g != self.gi {
                    let _ = tx.send(Command::Learned {
                        domain,
                        mac,
                        endpoint,
                    });
                }
            }
        }
        self.fresh.clear();
    }

    /// Sends the outboxes; returns (handed over, dropped because a ring was full).
    pub(super) fn flush(&mut self) -> (u64, u64) {
        let (mut sent, mut full) = (0, 0);
        for (g, out) in self.outbox.iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            sent += self.peers[g].enqueue(out) as u64;
            full += out.len() as u64;
            out.clear();
        }
        (sent, full)
    }
}

/// Moves queue `id` from group `from` to group `to` of one L2 domain while they run,
/// without losing or reordering a frame of any flow: the other groups first hold the
/// queue's frames (each has then put every earlier one in `from`'s ring); `from` takes its
/// ring, hands the queue with its backlog to `to` and sends its own later frames there;
/// then the holders release what they held to the new place. Each step is acknowledged
/// within `timeout`; a move that fails before the hand-over leaves the queue where it was.
/// Returns whether the queue moved. For the control thread (it blocks on the steps).
pub fn move_queue(
    handles: &[GroupHandle],
    id: QueueId,
    from: usize,
    to: usize,
    timeout: std::time::Duration,
) -> bool {
    let Some(fabric) = handles.get(from).and_then(|h| h.fabric.as_ref()) else {
        return false;
    };
    if from == to || to >= handles.len() {
        return false;
    }
    let Some(endpoint) = fabric.0.endpoint_of(id) else {
        return false;
    };
    let queue = id.queue;
    let others: Vec<usize> = (0..handles.len()).filter(|&g| g != from).collect();
    let ask = |g: usize, make: &dyn Fn(Sender<bool>) -> Command| {
        let (ack, done) = std::sync::mpsc::channel();
        handles[g].tx.send(make(ack)).is_ok() && done.recv_timeout(timeout).unwrap_or(false)
    };
    let release = |owner: usize| {
        for &g in &others {
            let _ = handles[g].tx.send(Command::Release {
                endpoint,
                queue,
                owner,
            });
        }
    };
    let held = others.iter().all(|&g| {
        ask(g, &|ack| Command::Hold {
            endpoint,
            queue,
            ack,
        })
    });
    if !held {
        release(from);
        return false;
    }
    if !ask(from, &|ack| Command::MoveOut { id, to, ack }) {
        release(from);
        return false;
    }
    release(to);
    true
}

/// Default handoff ring size per group: a few iterations of a full budget from every
/// other group.
pub const HANDOFF_RING: u32 = 4096;

/// Joins `groups` into one L2 domain: a handoff ring of `ring` mbufs per group, and
/// control-plane handles through which every queue added anywhere becomes reachable from
/// every group. With one group it only returns that group's plain handle. Call before the
/// groups run.
pub fn connect_groups<G: GrantCopy, E: EventChannel>(
    groups: &mut [Group<G, E>],
    ring: u32,
) -> Result<Vec<GroupHandle>, pmd::PmdError> {
    let mut handles: Vec<GroupHandle> = groups.iter_mut().map(|g| g.handle()).collect();
    if groups.len() < 2 {
        return Ok(handles);
    }
    // Ring names are process-wide in DPDK: number each fabric.
    static FABRICS: AtomicU32 = AtomicU32::new(0);
    let f = FABRICS.fetch_add(1, Ordering::Relaxed);
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for gi in 0..groups.len() {
        let (p, c) = MbufRing::new(&format!("nbd-hoff{f}-{gi}"), ring, -1)?;
        producers.push(p);
        consumers.push(c);
    }
    let fabric = Arc::new(Fabric {
        senders: handles.iter().map(|h| h.tx.clone()).collect(),
        next_endpoint: AtomicU32::new(1),
        vifs: Mutex::new(HashMap::new()),
    });
    let n = groups.len();
    for (gi, (g, inbox)) in groups.iter_mut().zip(consumers).enumerate() {
        g.switch.set_announce(true);
        g.handoff = Some(Handoff {
            gi,
            cmds: fabric.senders.clone(),
            fresh: Vec::new(),
            inbox,
            peers: producers.clone(),
            outbox: (0..n).map(|_| Vec::new()).collect(),
            arrived: Vec::new(),
        });
    }
    for (gi, h) in handles.iter_mut().enumerate() {
        h.fabric = Some((fabric.clone(), gi));
    }
    Ok(handles)
}
