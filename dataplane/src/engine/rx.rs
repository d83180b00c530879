//! Guest RX: port burst -> switch -> bounded per-queue backlogs -> slots counted (`rxplan`)
//! before any request is consumed -> one batched copy -> responses with `more_data`,
//! checksum flags and the GSO extra (or legacy prefix) -> stall detection (XSA-392).
//! The common frame (one buffer, no extras) for a queue with nothing waiting skips the
//! backlog: the switch hands it straight to its request and copy (`rx_direct`).
use super::forward::Ingress;
use super::queue::Features;
use super::{push_in_place, Disable, Group, UPLINK};
use crate::netif::{
    ExtraInfo, RxRequest, RxResponse, NETRXF_EXTRA_INFO, NETRXF_GSO_PREFIX, NETRXF_MORE_DATA,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_RSP_ERROR,
};
use crate::offload::guest_rx_csum_flags;
use crate::rxplan;
use crate::toeplitz::FrameHash;
use pmd::Mbuf;
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy};

/// A guest RX packet being copied into guest buffers.
pub(super) struct PendingRx {
    q: usize,
    mbuf: Mbuf,
    /// Its data buffers: a range of the iteration's `Scratch::rx_bufs`, in slot order;
    /// with `one`, the index range of its one copy op instead.
    bufs: std::ops::Range<usize>,
    /// One buffer without extras (most packets): its request id and bytes, kept here
    /// rather than in `rx_bufs`.
    one: Option<(u16, u16)>,
    /// The GSO extra and the id of the request slot it takes.
    gso: Option<(u16, u8, u16)>,
    /// GSO as a prefix slot before the data (legacy frontends) instead of an extra.
    prefix: bool,
    /// The hash extra (the frontend configured Toeplitz hashing over its control ring).
    hash: Option<FrameHash>,
    flags: u16,
}

impl<G: GrantCopy, E: EventChannel> Group<G, E> {
    /// The direct lane: a frame from the port for queue `qi` whose backlog is empty goes
    /// straight to the guest when it is the common case of the backlog path's fast path
    /// (one segment in one buffer, no GSO, no hash extra, not held back for GRO) and a
    /// request is there: its request taken and its copy queued now, as the backlog would
    /// have done later in this iteration, without passing through it. Anything else (and
    /// when the guest has no buffer) is handed back for the backlog, which then decides,
    /// stalls included, as before.
    #[inline]
    pub(super) fn rx_direct(&mut self, qi: usize, m: Mbuf) -> Result<(), Mbuf> {
        let q = &mut self.queues[qi];
        if !q.backlog.is_empty()
            || q.disabled.is_some()
            || q.direct >= self.cfg.budget
            || q.steer.is_some()
            || m.nb_segs() != 1
            || m.ol_flags() & pmd::sys::RTE_MBUF_F_TX_TCP_SEG != 0
        {
            return Err(m);
        }
        let Some(len) = rxplan::single_len(u32::from(m.data_len())) else {
            return Err(m);
        };
        if self.cfg.gro && q.features.gro_capable() && crate::gro::maybe_tcp(&m) {
            return Err(m);
        }
        if !q.rx_batch_begun {
            if q.rx.begin_batch().is_err() {
                // The backlog pass finds the same index and disables the queue.
                return Err(m);
            }
            q.rx_batch_begun = true;
        }
        if q.rx.batch_unconsumed() == 0 {
            return Err(m);
        }
        let req = q.rx.next_batch_request().expect("counted above");
        q.direct += 1;
        q.head_wait_since = None;
        q.stalled = false;
        let domid = q.id.domid;
        let flags = guest_rx_csum_flags(m.ol_flags());
        self.queue_one(qi, domid, req, m, len, flags);
        Ok(())
    }

    /// Queues the one copy of a packet that fills one buffer without extras (most
    /// packets) into request `req`, and its pending record: no plan, no buffer list.
    #[inline(always)]
    fn queue_one(
        &mut self,
        qi: usize,
        domid: u16,
        req: RxRequest,
        mut m: Mbuf,
        len: u16,
        flags: u16,
    ) {
        let r0 = self.ops.len();
        self.ops.push(CopyOp {
            domid,
            gref: req.gref,
            offset: 0,
            local: m.data_ptr(),
            len,
            dir: CopyDir::ToForeign,
            status: 99,
        });
        push_in_place(&mut self.prx, || PendingRx {
            q: qi,
            mbuf: m,
            bufs: r0..r0 + 1,
            one: Some((req.id, len)),
            gso: None,
            prefix: false,
            hash: None,
            flags,
        });
    }

    pub(super) fn guest_rx(&mut self) -> usize {
        let now = self.now();
        // Pull no more than the queues can take this iteration: what stays in the port is
        // not allocated just to be dropped at a full backlog. A queue takes a budget a
        // iteration, less what already waits for it: under overload the excess stays in
        // the port (whose drops cost no cycles) instead of standing in the backlogs, whose
        // mbufs would then be cold when their turn came. With groups sharing an L2 domain
        // one burst at least: frames for other groups' queues come through here too.
        let free: usize = self
            .queues
            .iter()
            .filter(|q| q.disabled.is_none())
            .map(|q| self.cfg.budget.saturating_sub(q.backlog.len()))
            .sum();
        let want = free.div_ceil(usize::from(self.cfg.burst.max(1)));
        let least = usize::from(self.handoff.is_some() || self.queues.is_empty());
        let bursts = want.clamp(least, usize::from(self.cfg.rx_bursts.max(1)));
        for _ in 0..bursts {
            let n = self
                .port
                .rx_burst(self.port_queue, &mut self.rx_burst, self.cfg.burst);
            if n < usize::from(self.cfg.burst) {
                break;
            }
        }
        self.ops.clear();
        self.scratch.rx_bufs.clear();
        let mut burst = std::mem::take(&mut self.rx_burst);
        self.rx_direct = true;
        for m in burst.drain(..) {
            // From the wire: the switch's own drops (runts, unknown VLANs) are not a guest's.
            self.switch_frame(UPLINK, m, now, Ingress::Uplink);
        }
        self.rx_direct = false;
        self.rx_burst = burst;
        for qi in 0..self.queues.len() {
            let q = &mut self.queues[qi];
            let direct = std::mem::take(&mut q.direct);
            q.rx_batch_begun = false;
            if q.disabled.is_some() || q.backlog.is_empty() {
                q.head_wait_since = None;
                continue;
            }
            let (v4, v6) = (
                q.features.gso_tcpv4 || q.features.gso_prefix,
                q.features.gso_tcpv6,
            );
            let start = q.backlog.len() - q.gro_fresh.min(q.backlog.len());
            if q.gro_tcp >= 2 && q.gro_fresh >= 2 && self.cfg.gro && q.features.gro_capable() {
                // The frames that arrived since the last pass (the backlog's tail), when two
                // of them may be TCP segments.
                let out = &mut self.scratch.gro_out;
                let st = self
                    .scratch
                    .gro
                    .coalesce(q.backlog.drain(start..), out, v4, v6);
                q.backlog.extend(out.drain(..));
                q.backlog_bytes -= st.bytes_removed as usize;
                q.local.rx_gro_frames += st.frames;
                q.local.rx_gro_segments += st.segments;
            }
            q.gro_fresh = 0;
            q.gro_tcp = 0;
            if q.rx.begin_batch().is_err() {
                self.disable(qi, Disable::ImpossibleRxIndex);
                continue;
            }
            let mut n = direct;
            while n < self.cfg.budget {
                let q = &mut self.queues[qi];
                let Some(head) = q.backlog.front() else {
                    break;
                };
                let gso = head_gso(head, &q.features);
                let hash = q.steer.as_ref().and_then(|s| s.frame_hash(head.data()));
                // Most packets are one segment that fits one buffer: no walk needed (its
                // one chunk's length; the chunk starts the buffer).
                let single = if head.nb_segs() == 1 {
                    rxplan::single_len(u32::from(head.data_len()))
                } else {
                    None
                };
                let segs = &mut self.scratch.seg_lens;
                segs.clear();
                let buffers = match single {
                    Some(_) => 1,
                    None => {
                        segs.extend(head.segments().map(|s| s.len() as u32));
                        rxplan::buffers_needed(segs.iter().copied())
                    }
                };
                let needed = buffers + u32::from(gso.is_some()) + u32::from(hash.is_some());
                // A frontend without scatter-gather takes one buffer per packet.
                if (!q.features.sg && buffers > 1) || needed as usize > crate::netif::RX_RING_SIZE {
                    let m = q.backlog.pop_front().expect("head");
                    q.backlog_bytes -= m.pkt_len() as usize;
                    q.local.rx_drop_too_big += 1;
                    continue;
                }
                if q.rx.batch_unconsumed() < needed {
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
                if let (Some(len), None, None) = (single, gso, hash) {
                    // One buffer, no extras (most packets): its request, one op, no plan.
                    let req = q.rx.next_batch_request().expect("counted above");
                    let domid = q.id.domid;
                    self.queue_one(qi, domid, req, m, len, flags);
                    n += 1;
                    continue;
                }
                let reqs = &mut self.scratch.rx_reqs;
                reqs.clear();
                for _ in 0..needed {
                    reqs.push(q.rx.next_batch_request().expect("counted above"));
                }
                // Slot order: first data buffer, the extras (GSO, then hash), then the other
                // buffers; in the legacy prefix mode the GSO slot comes before all.
                let prefix = gso.is_some() && q.features.gso_prefix;
                let first = usize::from(prefix);
                let extras = usize::from(gso.is_some() && !prefix) + usize::from(hash.is_some());
                let data_req = |k: usize| first + k + if k > 0 { extras } else { 0 };
                let all_bufs = &mut self.scratch.rx_bufs;
                let b0 = all_bufs.len();
                all_bufs.extend((0..buffers as usize).map(|k| (reqs[data_req(k)].id, 0..0, 0u16)));
                let bufs = &mut all_bufs[b0..];
                let mut m = m;
                let seg_ptrs = &mut self.scratch.seg_ptrs;
                m.segment_ptrs(seg_ptrs);
                let domid = q.id.domid;
                let ops = &mut self.ops;
                let reqs = &*reqs;
                let mut emit = |c: rxplan::Chunk| {
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
                };
                match single.and_then(|len| rxplan::single(u32::from(len))) {
                    Some(c) => emit(c),
                    None => {
                        rxplan::plan(segs.iter().copied(), emit);
                    }
                }
                let gso_slot = gso.map(|(size, ty)| (size, ty, reqs[usize::from(!prefix)].id));
                self.prx.push(PendingRx {
                    q: qi,
                    mbuf: m,
                    bufs: b0..self.scratch.rx_bufs.len(),
                    one: None,
                    gso: gso_slot,
                    prefix,
                    hash,
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
            if let Some((id, bytes)) = p.one {
                // One buffer, no extras (most packets): its one response.
                let ok = self.ops[p.bufs.start].status == 0;
                q.rx.push_response(RxResponse {
                    id,
                    offset: 0,
                    flags: p.flags,
                    status: if ok {
                        bytes as i16
                    } else {
                        XEN_NETIF_RSP_ERROR
                    },
                });
                count_rx(&mut q.local, ok, p.mbuf.pkt_len());
                self.scratch.done.push(p.mbuf);
                continue;
            }
            let bufs = &self.scratch.rx_bufs[p.bufs];
            let ok = bufs
                .iter()
                .all(|b| self.ops[b.1.clone()].iter().all(|o| o.status == 0));
            let n = bufs.len();
            if let (true, Some((size, _ty, id))) = (p.prefix, p.gso) {
                // The seed's prefix slot: offset = GSO size, status = data slots following.
                q.rx.push_response(RxResponse {
                    id,
                    offset: size,
                    flags: NETRXF_GSO_PREFIX | NETRXF_MORE_DATA,
                    status: n as i16,
                });
            }
            let gso_extra = p.gso.filter(|_| !p.prefix);
            for (k, (id, _, bytes)) in bufs.iter().enumerate() {
                let mut flags = if k + 1 < n { NETRXF_MORE_DATA } else { 0 };
                if k == 0 {
                    flags |= p.flags;
                    if gso_extra.is_some() || p.hash.is_some() {
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
                if k == 0 {
                    if let Some((size, ty, _id)) = gso_extra {
                        let more = p.hash.is_some();
                        q.rx.push_response(ExtraInfo::gso(size, ty, more).to_rx_slot());
                    }
                    if let Some(h) = p.hash {
                        q.rx.push_response(h.to_extra().to_rx_slot());
                    }
                }
            }
            count_rx(&mut q.local, ok, p.mbuf.pkt_len());
            self.scratch.done.push(p.mbuf);
        }
        self.prx = prx;
        pmd::free_bulk(&mut self.scratch.done);
        for q in &mut self.queues {
            if q.rx.push_responses_and_check_notify() {
                let _ = self.ev.notify(q.evtchn_rx);
                q.local.notifications += 1;
            }
        }
        packets
    }
}

/// Counts a packet whose copies to the guest all succeeded (`ok`) or not.
#[inline]
fn count_rx(l: &mut super::counters::Local, ok: bool, bytes: u32) {
    if ok {
        l.rx_packets += 1;
        l.rx_bytes += u64::from(bytes);
    } else {
        l.rx_drop_copy_error += 1;
    }
}

pub(super) fn head_gso(m: &Mbuf, f: &Features) -> Option<(u16, u8)> {
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
