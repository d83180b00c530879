//! Switching a frame to its destinations: the uplink's TX buffer or queues' backlogs
//! (segmenting a TSO frame for a frontend that did not negotiate its GSO type).
use super::counters::bump;
use super::queue::enqueue_backlog;
use super::rx::head_gso;
use super::{Group, UPLINK};
use crate::offload::finish_in_software;
use crate::switch::{apply_egress, Decision, EndpointId};
use pmd::Mbuf;
use xen::{EventChannel, GrantCopy};

/// Where a frame entered, naming the switch decision cache it uses.
#[derive(Clone, Copy)]
pub(super) enum Ingress {
    Uplink,
    /// A queue, by index in the group.
    Queue(usize),
}

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    /// Switches one frame entering at `from` to its destinations (copying it for all but
    /// the last of a flood); false when the switch or the egress tagging dropped it.
    /// `ingress` names the decision cache in place (a cache is ~180 bytes: copying it in
    /// and out per frame cost more than the lookup it saves).
    pub(super) fn switch_frame(
        &mut self,
        from: EndpointId,
        m: Mbuf,
        now: u64,
        ingress: Ingress,
    ) -> bool {
        let cache = match ingress {
            Ingress::Uplink => &mut self.uplink_fwd,
            Ingress::Queue(qi) => &mut self.queues[qi].fwd,
        };
        match self.switch.forward_cached(from, m.data(), now, cache) {
            Decision::Unicast(to, e) => {
                let mut m = m;
                if !apply_egress(&mut m, e) {
                    return false;
                }
                self.deliver(to, m);
                true
            }
            Decision::Flood { domain } => {
                let mut targets = std::mem::take(&mut self.scratch.flood);
                self.switch
                    .flood_targets_into(from, domain, cache, &mut targets);
                let n = targets.len();
                let mut m = Some(m);
                for (k, &(to, e)) in targets.iter().enumerate() {
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
                self.scratch.flood = targets;
                true
            }
            Decision::Drop(_) => false,
        }
    }

    /// Hands a packet to the uplink, to a queue's backlog, or to the group that owns the
    /// destination (tagged with the endpoint, sent at the end of the iteration).
    pub(super) fn deliver(&mut self, to: EndpointId, mut m: Mbuf) {
        if to == UPLINK {
            self.to_port.push(m);
            return;
        }
        if let Some(qi) = self.queues.iter().position(|q| q.endpoint == to) {
            self.deliver_to_queue(qi, m);
            return;
        }
        if let Some(h) = self.handoff.as_mut() {
            if let Some(&owner) = h.remote.get(&to) {
                m.set_user_tag(to.0);
                h.outbox[owner].push(m);
            }
        }
        // Otherwise the endpoint went away since the decision: the frame is dropped.
    }

    /// Frames other groups handed over: each goes to the backlog of the queue it is
    /// tagged for, without switching it again (the sender did). Returns how many arrived.
    pub(super) fn take_handoffs(&mut self) -> usize {
        let limit = (self.cfg.budget * self.queues.len().max(1)) as u32;
        let Some(h) = self.handoff.as_mut() else {
            return 0;
        };
        let mut arrived = std::mem::take(&mut h.arrived);
        let n = h.inbox.dequeue(&mut arrived, limit);
        let mut stale = 0;
        for m in arrived.drain(..) {
            let to = EndpointId(m.user_tag());
            match self.queues.iter().position(|q| q.endpoint == to) {
                Some(qi) => self.deliver_to_queue(qi, m),
                None => stale += 1,
            }
        }
        if let Some(h) = self.handoff.as_mut() {
            h.arrived = arrived;
        }
        if stale > 0 {
            bump(&self.counters.handoff_stale, stale);
        }
        n
    }

    /// Queues a packet for one of this group's queues (segmenting a TSO frame for a
    /// frontend that did not negotiate its GSO type).
    fn deliver_to_queue(&mut self, qi: usize, m: Mbuf) {
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
}
