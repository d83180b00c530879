//! Guest TX: ring -> copy each request once -> `txparse` -> credit -> mbufs and grant-copy
//! ops -> one batched copy -> responses by each slot's own copies -> offload -> switch -> port.
use super::forward::Ingress;
use super::group::MbufCache;
use super::{push_in_place, Disable, Group, SlotRsps};
use crate::credit::Admit;
use crate::netif::{
    TxResponse, NETTXF_CSUM_BLANK, XEN_NETIF_RSP_ERROR, XEN_NETIF_RSP_NULL, XEN_NETIF_RSP_OKAY,
};
use crate::offload::{needs_finishing, prepare_guest_tx};
use crate::txparse::{one_slot_packet, parse_tx_into, Gso, Rsp, Verdict};
use pmd::Mbuf;
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy};

/// A guest TX packet whose data is being copied in this iteration.
pub(super) struct PendingTx {
    q: usize,
    mbuf: Mbuf,
    csum_blank: bool,
    gso: Option<Gso>,
    rsps: TxRsps,
    len: u32,
}

/// A guest TX packet's responses in slot order, with the copy ops of each data slot.
pub(super) enum TxRsps {
    /// A packet of one data slot (most packets): its response and its one op's index,
    /// kept inline (a list per packet cost a pool round trip and a heap line).
    One(Rsp, usize),
    /// Any other packet: data slots carry the index range of their ops.
    Many(SlotRsps),
}

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    pub(super) fn guest_tx(&mut self) -> usize {
        let now = self.now();
        self.ops.clear();
        for qi in 0..self.queues.len() {
            if self.queues[qi].disabled.is_some() {
                continue;
            }
            if self.queues[qi].tx.begin_batch().is_err() {
                self.disable(qi, Disable::ImpossibleTxIndex);
                continue;
            }
            let mut n = 0;
            while n < self.cfg.budget {
                let q = &mut self.queues[qi];
                let avail = q.tx.batch_unconsumed();
                let Some(first) = q.tx.batch_request(0) else {
                    break;
                };
                if let Admit::Throttled { .. } = q.credit.admit(u32::from(first.size)) {
                    q.local.tx_credit_throttled += 1;
                    break;
                }
                // A packet of one slot that the parser would take as it is and that fits one
                // mbuf (most packets): built from the request, without the parser's record.
                if one_slot_packet(&first) && first.size <= self.mbufs.room() {
                    q.tx.advance(1);
                    let to = (qi, &mut self.ptx);
                    if !build_tx_one(&mut self.mbufs, q.id.domid, &first, &mut self.ops, to) {
                        q.local.tx_drop_no_mbuf += 1;
                        q.tx.push_response(settled(Rsp::Data { id: first.id }, false));
                    }
                    n += 1;
                    continue;
                }
                let tx = &q.tx;
                let parsed = &mut self.scratch.parsed;
                parse_tx_into(
                    parsed,
                    first,
                    avail,
                    |i| tx.batch_request(i).unwrap_or_default(),
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
                    Verdict::Packet => {
                        q.tx.advance(parsed.consumed);
                        let pkt = &parsed.packet;
                        let built = build_tx(
                            &mut self.mbufs,
                            q.id.domid,
                            pkt,
                            &parsed.responses,
                            &mut self.ops,
                            &mut self.scratch.seg_ptrs,
                            &mut self.scratch.rsps_pool,
                            (qi, &mut self.ptx),
                        );
                        if !built {
                            q.local.tx_drop_no_mbuf += 1;
                            for r in parsed.responses.as_slice() {
                                q.tx.push_response(settled(*r, false));
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
            let ok = match p.rsps {
                TxRsps::One(rsp, op) => {
                    let good = self.ops[op].status == 0;
                    q.tx.push_response(settled(rsp, good));
                    good
                }
                TxRsps::Many(list) => {
                    let mut ok = true;
                    for (rsp, range) in &list {
                        let good = self.ops[range.clone()].iter().all(|o| o.status == 0);
                        ok &= good;
                        q.tx.push_response(settled(*rsp, good));
                    }
                    self.scratch.rsps_pool.push(list);
                    ok
                }
            };
            if !ok {
                q.local.tx_drop_copy_error += 1;
                continue;
            }
            q.local.tx_packets += 1;
            q.local.tx_bytes += u64::from(p.len);
            let from = q.endpoint;
            if !needs_finishing(p.csum_blank, p.gso) {
                // Straight to the switch, without the offload path's list and counter
                // snapshot (`prepare_guest_tx` would pass it on as is).
                if !self.switch_frame(from, p.mbuf, now, Ingress::Queue(p.q)) {
                    self.queues[p.q].local.tx_drop_switch += 1;
                }
                continue;
            }
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
                if !self.switch_frame(from, m, now, Ingress::Queue(p.q)) {
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
}

/// A group's guest-TX batch building on its own: the mbuf chain of a parsed packet
/// allocated (from a burst cache, as in a group) and its grant-copy ops appended. Exposed
/// for the micro-benchmarks (`gcbatch/*`); a group does exactly this per packet.
pub struct TxBatchBuilder {
    mbufs: MbufCache,
    segs: Vec<(*mut u8, usize)>,
    rsps: Vec<SlotRsps>,
    built: Vec<PendingTx>,
}

impl TxBatchBuilder {
    pub fn new(pool: std::sync::Arc<pmd::Mempool>) -> Self {
        TxBatchBuilder {
            mbufs: MbufCache::new(pool),
            segs: Vec::new(),
            rsps: Vec::new(),
            built: Vec::new(),
        }
    }

    /// Appends the copy ops of `pkt` (guest `domid`, slot responses `rsps` as `parse_tx`
    /// gave them) to `ops`; returns the mbuf they copy into, or None when the pool is empty.
    pub fn build(
        &mut self,
        domid: u16,
        pkt: &crate::txparse::TxPacket,
        rsps: &crate::txparse::SmallVec<Rsp, { crate::txparse::MAX_PACKET_SLOTS }>,
        ops: &mut Vec<CopyOp>,
    ) -> Option<Mbuf> {
        let to = (0, &mut self.built);
        // A packet of one data slot that fits an mbuf takes the group's one-op path.
        let built = match (rsps.as_slice(), pkt.slots.as_slice()) {
            ([Rsp::Data { id }], [s]) if s.len <= self.mbufs.room() && pkt.gso.is_none() => {
                let csum_blank = pkt.flags & NETTXF_CSUM_BLANK != 0;
                let one = (s.gref, s.offset, s.len);
                let head = self.mbufs.get()?;
                push_one_op(head, domid, one, *id, csum_blank, ops, to)
            }
            _ => build_tx(
                &mut self.mbufs,
                domid,
                pkt,
                rsps,
                ops,
                &mut self.segs,
                &mut self.rsps,
                to,
            ),
        };
        let p = self.built.pop().filter(|_| built)?;
        if let TxRsps::Many(v) = p.rsps {
            self.rsps.push(v);
        }
        Some(p.mbuf)
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

/// Allocates the mbuf chain for a packet the parser decided (a packet that is its one
/// request and fits an mbuf takes `build_tx_one` instead) and appends its copy ops. The
/// first mbuf takes as much as fits (>= 128 bytes: the headers are contiguous, XSA-423).
/// A list of responses, when one is needed, comes from `pool`. The packet goes into `to.1`
/// as queue `to.0`'s; false when the pool is empty. It is pushed here, not returned:
/// returned through memory, the result was written field by field and read back wider, a
/// store-forwarding stall per packet.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn build_tx(
    mbufs: &mut MbufCache,
    domid: u16,
    pkt: &crate::txparse::TxPacket,
    rsps: &crate::txparse::SmallVec<Rsp, { crate::txparse::MAX_PACKET_SLOTS }>,
    ops: &mut Vec<CopyOp>,
    segs: &mut Vec<(*mut u8, usize)>,
    pool: &mut Vec<SlotRsps>,
    to: (usize, &mut Vec<PendingTx>),
) -> bool {
    let Some(head) = mbufs.get() else {
        return false;
    };
    let room = usize::from(head.tailroom());
    let pending = |mbuf, rsps| PendingTx {
        q: to.0,
        mbuf,
        csum_blank: pkt.flags & NETTXF_CSUM_BLANK != 0,
        gso: pkt.gso,
        rsps,
        len: pkt.len,
    };
    match build_tx_chain(head, room, mbufs, domid, pkt, rsps, ops, segs, pool) {
        Some((m, r)) => {
            push_in_place(to.1, || pending(m, r));
            true
        }
        None => false,
    }
}

/// `build_tx` for a packet that is its one request (`txparse::one_slot_packet`) and fits
/// one mbuf: the request's fields are used as read (in registers), not through the
/// parser's record, whose fields written one by one and read back wider stalled store
/// forwarding. False when the pool is empty.
#[inline(always)]
fn build_tx_one(
    mbufs: &mut MbufCache,
    domid: u16,
    r: &crate::netif::TxRequest,
    ops: &mut Vec<CopyOp>,
    to: (usize, &mut Vec<PendingTx>),
) -> bool {
    let Some(head) = mbufs.get() else {
        return false;
    };
    let csum_blank = r.flags & NETTXF_CSUM_BLANK != 0;
    push_one_op(
        head,
        domid,
        (r.gref, r.offset, r.size),
        r.id,
        csum_blank,
        ops,
        to,
    )
}

/// A packet of one data slot (`gref`, `offset`, `len`) without extras in `head`: the bytes
/// appended, their one copy op, and the pending packet with the slot's response (`id`).
#[inline(always)]
fn push_one_op(
    mut head: Mbuf,
    domid: u16,
    (gref, offset, len): (u32, u16, u16),
    id: u16,
    csum_blank: bool,
    ops: &mut Vec<CopyOp>,
    to: (usize, &mut Vec<PendingTx>),
) -> bool {
    let Some(local) = head.append(len).map(|d| d.as_mut_ptr()) else {
        return false;
    };
    ops.push(CopyOp {
        domid,
        gref,
        offset,
        local,
        len,
        dir: CopyDir::FromForeign,
        status: 99,
    });
    let op = ops.len() - 1;
    push_in_place(to.1, || PendingTx {
        q: to.0,
        mbuf: head,
        csum_blank,
        gso: None,
        rsps: TxRsps::One(Rsp::Data { id }, op),
        len: u32::from(len),
    });
    true
}

/// `build_tx` for any other packet: the chain extended to hold it, ops per segment piece.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn build_tx_chain(
    mut head: Mbuf,
    room: usize,
    mbufs: &mut MbufCache,
    domid: u16,
    pkt: &crate::txparse::TxPacket,
    rsps: &crate::txparse::SmallVec<Rsp, { crate::txparse::MAX_PACKET_SLOTS }>,
    ops: &mut Vec<CopyOp>,
    segs: &mut Vec<(*mut u8, usize)>,
    pool: &mut Vec<SlotRsps>,
) -> Option<(Mbuf, TxRsps)> {
    let mut remaining = pkt.len as usize;
    // Extend the chain to hold the whole packet.
    let first = remaining.min(room);
    head.append(first as u16)?;
    remaining -= first;
    while remaining > 0 {
        let mut m = mbufs.get()?;
        let n = remaining.min(usize::from(m.tailroom()));
        m.append(n as u16)?;
        head.chain(m).ok()?;
        remaining -= n;
    }
    head.segment_ptrs(segs);
    let (mut si, mut so) = (0usize, 0usize);
    let mut data = pkt.slots.as_slice().iter();
    let mut out = pool.pop().unwrap_or_default();
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
    Some((head, TxRsps::Many(out)))
}
