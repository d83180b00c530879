//! Switching a frame to its destinations: the uplink's TX buffer or queues' backlogs
//! (segmenting a TSO frame for a frontend that did not negotiate its GSO type).
use super::counters::bump;
use super::group::Place;
use super::queue::enqueue_backlog;
use super::rx::head_gso;
use super::{Group, UPLINK};
use crate::ctrl::HashState;
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
    /// and out per frame cost more than the lookup it saves). Inlined into the per-packet
    /// loops; a flood of more than one destination is out of line.
    #[inline(always)]
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
                if let Some((to, e)) = self.switch.sole_flood_target(domain, cache) {
                    let mut m = m;
                    if apply_egress(&mut m, e) {
                        self.deliver(to, m);
                    }
                    return true;
                }
                self.flood(from, m, domain, ingress);
                true
            }
            Decision::Drop(_) => false,
        }
    }

    /// Delivers a flooded frame to each destination of its domain (a copy for all but the
    /// last).
    #[inline(never)]
    fn flood(
        &mut self,
        from: EndpointId,
        m: Mbuf,
        domain: crate::switch::Domain,
        ingress: Ingress,
    ) {
        let cache = match ingress {
            Ingress::Uplink => &mut self.uplink_fwd,
            Ingress::Queue(qi) => &mut self.queues[qi].fwd,
        };
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
    }

    /// Hands a packet to the uplink, or to one queue of the destination vif (chosen by a
    /// flow hash when it has several): its backlog here, or the ring of the group it runs
    /// in (tagged with the vif's endpoint and the queue, sent at the end of the iteration).
    #[inline]
    pub(super) fn deliver(&mut self, to: EndpointId, m: Mbuf) {
        if to == UPLINK {
            if self.port_frame_max != 0
                && m.pkt_len() > self.port_frame_max
                && m.ol_flags() & pmd::sys::RTE_MBUF_F_TX_TCP_SEG == 0
            {
                bump(&self.counters.port_tx_too_big, 1);
                return;
            }
            self.to_port.push(m);
            return;
        }
        // A vif with one queue, here (the common case): straight to its backlog.
        if let Some(r) = self.vifs.get(&to) {
            if let [(_, Place::Local(qi))] = r.queues.as_slice() {
                let qi = *qi;
                if qi < self.queues.len() {
                    self.deliver_to_queue(qi, m);
                }
                return;
            }
        }
        self.deliver_to_vif(to, m);
    }

    /// `deliver` to a vif's queue.
    #[inline(never)]
    fn deliver_to_vif(&mut self, to: EndpointId, m: Mbuf) {
        // Gone since the decision: dropped.
        let Some(routes) = self.vifs.get(&to) else {
            return;
        };
        let (queue, place) = match (routes.queues.as_slice(), &routes.steer) {
            ([only], _) => *only,
            (all, None) => all[flow_hash(m.data()) as usize % all.len()],
            (all, Some(s)) => steered(s, all, m.data()),
        };
        self.send_to_place(to, queue, place, m);
    }

    /// Hands a packet to queue `queue` of the vif at `to`, which runs at `place`.
    #[inline]
    fn send_to_place(&mut self, to: EndpointId, queue: u16, place: Place, mut m: Mbuf) {
        match place {
            Place::Local(qi) => {
                if qi < self.queues.len() {
                    self.deliver_to_queue(qi, m);
                }
            }
            Place::Remote(owner) => {
                if let Some(h) = self.handoff.as_mut() {
                    m.set_user_tag(u64::from(to.0) << 16 | u64::from(queue));
                    h.outbox[owner].push(m);
                }
            }
            Place::Held => {
                if self.held.len() < self.cfg.backlog_packets {
                    self.held.push((to, queue, m));
                } else {
                    bump(&self.counters.move_held_dropped, 1);
                }
            }
        }
    }

    /// Hands a held packet to queue `queue` of the vif at `to`, wherever it runs now.
    pub(super) fn deliver_to(&mut self, to: EndpointId, queue: u16, m: Mbuf) {
        let place = self
            .vifs
            .get(&to)
            .and_then(|r| r.queues.iter().find(|r| r.0 == queue))
            .map(|r| r.1);
        match place {
            Some(p) => self.send_to_place(to, queue, p, m),
            None => bump(&self.counters.handoff_stale, 1),
        }
    }

    fn local_queue(&self, endpoint: EndpointId, queue: u16) -> Option<usize> {
        let routes = self.vifs.get(&endpoint)?;
        match routes.queues.iter().find(|r| r.0 == queue)?.1 {
            Place::Local(qi) if qi < self.queues.len() => Some(qi),
            // Moved in, its release pending: frames the old owner passes on go to it.
            Place::Held => self
                .queues
                .iter()
                .position(|q| q.endpoint == endpoint && q.id.queue == queue),
            _ => None,
        }
    }

    /// Frames other groups handed over: each goes to the backlog of the queue it is
    /// tagged for, without switching it again (the sender did). A frame for a queue that
    /// is not here: if the queue is moving here, its command may lag the frames that
    /// follow it, so pending commands are applied once and the frame looked up again; if
    /// it moved away, the frame is passed on once to its new group; else it is stale.
    /// Returns how many arrived.
    pub(super) fn take_handoffs(&mut self) -> usize {
        let limit = (self.cfg.budget * self.queues.len().max(1)) as u32;
        let Some(h) = self.handoff.as_mut() else {
            return 0;
        };
        let mut arrived = std::mem::take(&mut h.arrived);
        let n = h.inbox.dequeue(&mut arrived, limit);
        let (mut stale, mut forwarded, mut caught_up) = (0, 0, false);
        for mut m in arrived.drain(..) {
            let tag = m.user_tag();
            let (to, queue) = (EndpointId((tag >> 16) as u32), tag as u16);
            let mut here = self.local_queue(to, queue);
            if here.is_none() && !caught_up {
                caught_up = true;
                self.in_handoffs = true;
                self.apply_commands();
                self.in_handoffs = false;
                here = self.local_queue(to, queue);
            }
            if let Some(qi) = here {
                self.deliver_to_queue(qi, m);
                continue;
            }
            let moved_to = self.vifs.get(&to).and_then(|r| {
                r.queues.iter().find_map(|&(n, p)| match p {
                    Place::Remote(g) if n == queue => Some(g),
                    _ => None,
                })
            });
            match (moved_to, self.handoff.as_mut()) {
                (Some(g), Some(h)) if tag & FORWARDED == 0 => {
                    m.set_user_tag(tag | FORWARDED);
                    h.outbox[g].push(m);
                    forwarded += 1;
                }
                _ => stale += 1,
            }
        }
        if let Some(h) = self.handoff.as_mut() {
            h.arrived = arrived;
        }
        if stale > 0 {
            bump(&self.counters.handoff_stale, stale);
        }
        if forwarded > 0 {
            bump(&self.counters.handoff_forwarded, forwarded);
        }
        n
    }

    /// Queues a packet for one of this group's queues (segmenting a TSO frame for a
    /// frontend that did not negotiate its GSO type; a frame over the vif's MTU is
    /// dropped, counted, as a bridge drops it).
    #[inline]
    fn deliver_to_queue(&mut self, qi: usize, m: Mbuf) {
        let max = self.queues[qi].max_frame;
        if max != 0 && m.pkt_len() > max && m.ol_flags() & pmd::sys::RTE_MBUF_F_TX_TCP_SEG == 0 {
            self.queues[qi].local.rx_drop_too_big += 1;
            return;
        }
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
        let m = if self.rx_direct {
            match self.rx_direct(qi, m) {
                Ok(()) => return,
                Err(m) => m,
            }
        } else {
            m
        };
        enqueue_backlog(&mut self.queues[qi], m, &self.cfg);
    }
}

/// Tag bit of a handed-over frame already passed on once (after a queue moved): it is
/// not passed on again.
const FORWARDED: u64 = 1 << 63;

/// The queue the frontend's hash configuration picks for `frame` (as Linux's
/// `xenvif_select_queue`), among a vif's `all` queues; the default flow hash if that queue
/// is not placed (a frontend whose mapping names a queue that is going away).
fn steered(s: &HashState, all: &[(u16, Place)], frame: &[u8]) -> (u16, Place) {
    let wanted = s.queue_for(frame).map(|st| st.queue);
    match wanted.and_then(|q| all.binary_search_by_key(&q, |r| u32::from(r.0)).ok()) {
        Some(i) => all[i],
        None => all[flow_hash(frame) as usize % all.len()],
    }
}

/// A flow's hash for choosing among a vif's queues: symmetric (both directions of a flow
/// get the same value), over the IPv4/IPv6 addresses and, for unfragmented TCP and UDP,
/// the ports; 0 for anything else (one queue for all non-IP frames, so their order is
/// kept). The frame is dissected as for the control ring's hash (`toeplitz::flow_keys`);
/// the mixing is a fold and one multiply, not a per-bit Toeplitz walk, as it runs per frame.
fn flow_hash(f: &[u8]) -> u32 {
    use crate::wire::{IPPROTO_TCP, IPPROTO_UDP, L3};
    let Some(k) = crate::toeplitz::flow_keys(f) else {
        return 0;
    };
    let fold = |a: &[u8]| {
        a.chunks_exact(4).fold(0u32, |h, w| {
            h ^ u32::from_be_bytes([w[0], w[1], w[2], w[3]])
        })
    };
    let addrs = match k.l3 {
        L3::V4 { src, dst } => fold(&src) ^ fold(&dst),
        L3::V6 { src, dst } => fold(&src) ^ fold(&dst),
    };
    let ports = if !k.fragment && (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) {
        u32::from(
            u16::from_be_bytes([k.ports[0], k.ports[1]])
                ^ u16::from_be_bytes([k.ports[2], k.ports[3]]),
        )
    } else {
        0
    };
    let x = u64::from(addrs ^ ports.rotate_left(16) ^ u32::from(k.proto));
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::flow_hash;

    fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn symmetric_and_spread() {
        let a = [10, 0, 0, 1];
        let b = [10, 0, 0, 2];
        assert_eq!(
            flow_hash(&v4(a, b, 1000, 80)),
            flow_hash(&v4(b, a, 80, 1000))
        );
        // Flows differing only in a port land on both of two queues.
        let odd = (0..64u16)
            .filter(|p| flow_hash(&v4(a, b, 1000 + p, 80)) % 2 == 1)
            .count();
        assert!((16..=48).contains(&odd), "{odd} of 64");
        // Short or odd frames: no panic, hash 0 for non-IP.
        assert_eq!(flow_hash(&[]), 0);
        assert_eq!(flow_hash(&[0u8; 13]), 0);
        let mut t = v4(a, b, 1, 2);
        t.truncate(30);
        let _ = flow_hash(&t);
    }
}
