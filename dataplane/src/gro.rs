//! GRO toward guests: the TCP segments of one flow waiting in a queue's guest-RX backlog
//! are coalesced into one GSO frame (one ring walk, one response chain and one trip
//! through the guest's stack instead of one per wire segment), as Linux's GRO does before
//! its netback sees a frame.
//!
//! Only for queues whose frontend negotiated the frame's GSO type (`feature-gso-tcpv4`/
//! `-tcpv6`, with scatter-gather); other queues get the segments untouched. A segment joins
//! the flow's open frame only when the result is what the sender would have produced with
//! TSO: the same headers except the lengths, IP id, sequence number, PSH and checksums
//! (Linux's `tcp_gro_receive` rules: same ACK, window and options); the next sequence
//! number; every segment but the last exactly the first one's size; flags ACK and PSH only
//! (a PSH ends the frame); IPv4 without fragments and with incrementing ids (or DF); IPv6
//! without extension headers; at most 64 KiB of IP datagram. Each merged segment's TCP
//! checksum is verified first (in software unless the port said it is good): a frame with
//! a bad checksum is passed on as it came, for the guest to drop. The coalesced frame
//! carries a partial checksum (the pseudo-header sum, `NETRXF_csum_blank` and
//! `data_validated` to the guest, as Linux's `tcp4_gro_complete` leaves it).
//!
//! Latency is bounded by the engine: a pass runs once per poll iteration over the frames
//! that arrived since the last one, and never holds a frame back.
use crate::wire::{self, L3, L4};
use pmd::sys;
use pmd::Mbuf;

/// Open flows tracked in one pass (Linux's napi keeps 8 per bucket list).
const MAX_FLOWS: usize = 8;
/// Largest IP datagram a coalesced frame may become (the IPv4 total-length field).
const MAX_IP_LEN: u32 = 65535;
/// Segments per coalesced frame at most (a 64 KiB frame of 1448-byte segments is 46).
const MAX_SEGS: u16 = 64;

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Offload flags of a frame that is not a plain received one (a guest's partial checksum
/// or TSO frame, or one already coalesced): such frames are never merged.
const TX_FLAGS: u64 = sys::RTE_MBUF_F_TX_TCP_SEG
    | sys::RTE_MBUF_F_TX_UDP_SEG
    | sys::RTE_MBUF_F_TX_L4_MASK
    | sys::RTE_MBUF_F_TX_IP_CKSUM;

/// What one GRO pass did, for the queue's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroStats {
    /// Coalesced frames produced (each of two or more segments).
    pub frames: u64,
    /// Segments those frames carry.
    pub segments: u64,
    /// Header bytes removed (the merged segments' headers), for the backlog's byte count.
    pub bytes_removed: u64,
}

/// Header facts of a TCP segment, read once from the first mbuf segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegInfo {
    pub l2_len: u16,
    pub l3_len: u16,
    pub l4_len: u16,
    pub v6: bool,
    pub seq: u32,
    pub payload: u32,
    pub ip_id: u16,
    pub df: bool,
    pub flags: u8,
}

impl SegInfo {
    pub fn hdr_len(&self) -> usize {
        usize::from(self.l2_len) + usize::from(self.l3_len) + usize::from(self.l4_len)
    }
}

/// How a frame takes part in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A TCP segment that may be merged.
    Mergeable(SegInfo),
    /// A TCP segment that must stay as it is (SYN/FIN/RST/URG/ECN flags, no payload,
    /// IP options that differ...): later segments of its flow must not pass it.
    TcpOther(SegInfo),
    /// Not TCP (ARP, UDP, ...): no TCP flow is affected.
    NotTcp,
    /// Unparsable or an IP fragment: might belong to any flow, so every open flow ends.
    Unknown,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether a frame may be a TCP segment GRO could merge (IPv4 or IPv6 carrying TCP,
/// untagged or with one VLAN tag, no offload pending): a few bytes of the first cache line,
/// so that a pass over traffic with nothing to merge costs next to nothing.
#[inline]
pub fn maybe_tcp(m: &Mbuf) -> bool {
    let d = m.data();
    let l2 = if d.len() >= 18 && d[12..14] == [0x81, 0x00] {
        16
    } else {
        12
    };
    if m.ol_flags() & TX_FLAGS != 0 || d.len() < l2 + 2 + 40 {
        return false;
    }
    match (d[l2], d[l2 + 1]) {
        (0x08, 0x00) => d[l2 + 2 + 9] == wire::IPPROTO_TCP,
        (0x86, 0xdd) => d[l2 + 2 + 6] == wire::IPPROTO_TCP,
        _ => false,
    }
}

/// Classifies a frame from its first segment `head` and total length `pkt_len`.
pub fn classify(head: &[u8], pkt_len: u32) -> Class {
    let h = match wire::parse(head) {
        Ok(h) => h,
        Err(wire::WireError::NotIp(_)) => return Class::NotTcp,
        Err(_) => return Class::Unknown,
    };
    if h.l4 != L4::Tcp {
        return Class::NotTcp;
    }
    let hdr = h.header_len();
    let l2 = usize::from(h.l2_len);
    let l4 = h.l4_offset();
    let v6 = matches!(h.l3, L3::V6 { .. });
    let Some(payload) = (pkt_len as usize).checked_sub(hdr) else {
        return Class::Unknown;
    };
    let (ip_len_ok, ip_id, df, plain_l3) = if v6 {
        let plen = usize::from(be16(head, l2 + 4));
        (plen + 40 == pkt_len as usize - l2, 0, false, h.l3_len == 40)
    } else {
        let total = usize::from(be16(head, l2 + 2));
        let frag = be16(head, l2 + 6);
        let more_fragments = frag & 0x2000 != 0;
        (
            total == pkt_len as usize - l2,
            be16(head, l2 + 4),
            frag & 0x4000 != 0,
            !more_fragments,
        )
    };
    if !plain_l3 && !v6 {
        // A first fragment: the rest of the datagram follows elsewhere.
        return Class::Unknown;
    }
    let info = SegInfo {
        l2_len: h.l2_len,
        l3_len: h.l3_len,
        l4_len: h.l4_len,
        v6,
        seq: be32(head, l4 + 4),
        payload: payload as u32,
        ip_id,
        df,
        flags: head[l4 + 13],
    };
    let flags_ok = info.flags & !(TCP_ACK | TCP_PSH) == 0 && info.flags & TCP_ACK != 0;
    // The payload must start in the first segment, after whole headers, so that merging
    // only moves the next segment's start (no empty segments in the chain).
    if flags_ok && ip_len_ok && plain_l3 && payload > 0 && head.len() > hdr {
        Class::Mergeable(info)
    } else {
        Class::TcpOther(info)
    }
}

/// Byte ranges of the headers that may differ between two segments of one coalesced
/// frame (relative to the frame start), in order: IPv4 total length and id, and header
/// checksum (or the IPv6 payload length); the TCP sequence number, flags byte (compared
/// apart: PSH may differ) and checksum.
fn varying(i: &SegInfo) -> [std::ops::Range<usize>; 5] {
    let l2 = usize::from(i.l2_len);
    let l4 = l2 + usize::from(i.l3_len);
    let (a, b) = if i.v6 {
        (l2 + 4..l2 + 6, l2 + 6..l2 + 6)
    } else {
        (l2 + 2..l2 + 6, l2 + 10..l2 + 12)
    };
    [a, b, l4 + 4..l4 + 8, l4 + 13..l4 + 14, l4 + 16..l4 + 18]
}

/// Whether two segments' headers are equal in every byte that must not change within one
/// coalesced frame. Both must have the same layout.
pub fn same_headers(a: &[u8], b: &[u8], i: &SegInfo) -> bool {
    let hdr = i.hdr_len();
    if a.len() < hdr || b.len() < hdr {
        return false;
    }
    let mut at = 0;
    for r in varying(i) {
        if a[at..r.start] != b[at..r.start] {
            return false;
        }
        at = r.end;
    }
    let flags = usize::from(i.l2_len) + usize::from(i.l3_len) + 13;
    a[at..hdr] == b[at..hdr] && (a[flags] ^ b[flags]) & !TCP_PSH == 0
}

/// Whether two segments are of the same TCP flow (MACs, VLAN, addresses, ports).
fn same_flow(a: &[u8], ai: &SegInfo, b: &[u8], bi: &SegInfo) -> bool {
    if ai.l2_len != bi.l2_len || ai.v6 != bi.v6 {
        return false;
    }
    let l2 = usize::from(ai.l2_len);
    let (addr, alen) = if ai.v6 { (l2 + 8, 32) } else { (l2 + 12, 8) };
    let (al4, bl4) = (l2 + usize::from(ai.l3_len), l2 + usize::from(bi.l3_len));
    a[..l2] == b[..l2]
        && a[addr..addr + alen] == b[addr..addr + alen]
        && a[al4..al4 + 4] == b[bl4..bl4 + 4]
}

/// One's-complement sum of `b` read as 16-bit words in native byte order, unfolded.
fn sum_ne(b: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        s += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut r = chunks.remainder();
    while r.len() >= 2 {
        s += u64::from(u16::from_ne_bytes([r[0], r[1]]));
        r = &r[2..];
    }
    if let [last] = r {
        s += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// One's-complement sum (folded, big-endian value) of the bytes of `segs` in order,
/// as if they were contiguous.
pub fn sum_segments<'a>(segs: impl Iterator<Item = &'a [u8]>) -> u16 {
    let mut total = 0u64;
    let mut odd = false;
    for s in segs {
        let f = fold(sum_ne(s));
        // A segment starting at an odd offset has its bytes in the other halves.
        total += u64::from(if odd { f.swap_bytes() } else { f });
        odd ^= s.len() % 2 == 1;
    }
    u16::from_be(fold(total))
}

/// The TCP pseudo-header sum (folded, big-endian value) for an L4 length of `l4_len`.
fn pseudo_sum(head: &[u8], i: &SegInfo, l4_len: u32) -> u16 {
    let l2 = usize::from(i.l2_len);
    let mut s = 0u32;
    let (addr, alen) = if i.v6 { (l2 + 8, 32) } else { (l2 + 12, 8) };
    for w in head[addr..addr + alen].chunks_exact(2) {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    s += u32::from(wire::IPPROTO_TCP) + (l4_len >> 16) + (l4_len & 0xffff);
    fold(u64::from(s))
}

/// Whether the TCP checksum of the (possibly chained) segment is right.
fn tcp_checksum_ok(m: &Mbuf, i: &SegInfo) -> bool {
    let ol = m.ol_flags();
    let l4 = ol & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK);
    if l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) {
        return true;
    }
    if l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_BAD) {
        return false;
    }
    let off = usize::from(i.l2_len) + usize::from(i.l3_len);
    let l4_len = m.pkt_len() - off as u32;
    let head = m.data();
    let mut first = true;
    let data = m.segments().map(|s| {
        if std::mem::take(&mut first) {
            &s[off..]
        } else {
            s
        }
    });
    let d = sum_segments(data);
    let p = pseudo_sum(head, i, l4_len);
    fold(u64::from(d) + u64::from(p)) == 0xffff
}

/// Whether the IPv4 header checksum is right (IPv6 has none).
fn ip_checksum_ok(m: &Mbuf, i: &SegInfo) -> bool {
    if i.v6 {
        return true;
    }
    let ip = m.ol_flags() & u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_MASK);
    if ip == u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_GOOD) {
        return true;
    }
    if ip == u64::from(sys::RTE_MBUF_F_RX_IP_CKSUM_BAD) {
        return false;
    }
    let l2 = usize::from(i.l2_len);
    let h = &m.data()[l2..l2 + usize::from(i.l3_len)];
    sum_segments(std::iter::once(h)) == 0xffff
}

/// A flow with an open frame in the output.
struct Flow {
    /// Index of its frame (the first segment, growing) in the output list.
    at: usize,
    info: SegInfo,
    next_seq: u32,
    last_id: u16,
    payload: u32,
    segs: u16,
    /// Mbuf segments of the frame so far (the head's and the merged ones').
    nb_segs: u32,
    /// The merged segments (headers removed), chained to the head when the frame is
    /// finished: chained one by one, each would walk the whole chain so far.
    parts: Vec<Mbuf>,
    /// Whether the head's checksums were checked (done when the first merge comes).
    checked: bool,
    /// A segment shorter than the first, or one with PSH, ended the frame.
    closed: bool,
    psh: bool,
}

/// Reusable state of GRO passes (no allocation per pass once warm).
#[derive(Default)]
pub struct Gro {
    flows: Vec<Flow>,
    /// Emptied `Flow::parts` lists, reused.
    spare: Vec<Vec<Mbuf>>,
}

impl Gro {
    /// Moves `input`'s frames, in order, to the end of `out`, coalescing TCP segments of
    /// one flow (IPv4 if `v4`, IPv6 if `v6`). Frames of different flows may change order
    /// relative to each other; within a flow the order is kept.
    pub fn coalesce(
        &mut self,
        input: impl Iterator<Item = Mbuf>,
        out: &mut Vec<Mbuf>,
        v4: bool,
        v6: bool,
    ) -> GroStats {
        let mut st = GroStats::default();
        self.flows.clear();
        for m in input {
            let class = if m.ol_flags() & TX_FLAGS != 0 {
                Class::NotTcp
            } else {
                classify(m.data(), m.pkt_len())
            };
            let info = match class {
                Class::NotTcp => {
                    out.push(m);
                    continue;
                }
                Class::Unknown => {
                    self.close_all(out, &mut st);
                    out.push(m);
                    continue;
                }
                Class::TcpOther(i) => {
                    self.end_flow(out, &m, &i, &mut st);
                    out.push(m);
                    continue;
                }
                Class::Mergeable(i) => i,
            };
            if (info.v6 && !v6) || (!info.v6 && !v4) {
                out.push(m);
                continue;
            }
            match self.try_merge(out, m, &info, &mut st) {
                None => {}
                Some(m) => {
                    // Starts (or restarts) its flow's frame.
                    self.end_flow(out, &m, &info, &mut st);
                    if self.flows.len() == MAX_FLOWS {
                        let f = self.flows.remove(0);
                        self.finish(out, f, &mut st);
                    }
                    let nb_segs = u32::from(m.nb_segs());
                    let parts = self.spare.pop().unwrap_or_default();
                    self.flows.push(Flow {
                        nb_segs,
                        parts,
                        at: out.len(),
                        info,
                        next_seq: info.seq.wrapping_add(info.payload),
                        last_id: info.ip_id,
                        payload: info.payload,
                        segs: 1,
                        checked: false,
                        closed: info.flags & TCP_PSH != 0,
                        psh: info.flags & TCP_PSH != 0,
                    });
                    out.push(m);
                }
            }
        }
        self.close_all(out, &mut st);
        st
    }

    /// Merges `m` into its flow's open frame; gives it back if it cannot be.
    fn try_merge(
        &mut self,
        out: &mut [Mbuf],
        mut m: Mbuf,
        i: &SegInfo,
        st: &mut GroStats,
    ) -> Option<Mbuf> {
        let Some(k) = self.flows.iter().position(|f| {
            f.info.l2_len == i.l2_len
                && f.info.l3_len == i.l3_len
                && f.info.l4_len == i.l4_len
                && f.info.v6 == i.v6
                && same_headers(out[f.at].data(), m.data(), i)
        }) else {
            return Some(m);
        };
        let f = &mut self.flows[k];
        let head = &mut out[f.at];
        let ip_len = u32::from(f.info.l3_len) + u32::from(f.info.l4_len) + f.payload + i.payload;
        let id_ok = f.info.v6 || f.info.df || i.ip_id == f.last_id.wrapping_add(1);
        if f.closed
            || i.seq != f.next_seq
            || i.payload > f.info.payload
            || !id_ok
            || ip_len > MAX_IP_LEN
            || f.segs >= MAX_SEGS
            || f.nb_segs + u32::from(m.nb_segs()) > u32::from(MAX_SEGS) * 4
        {
            return Some(m);
        }
        if !f.checked {
            if !(ip_checksum_ok(head, &f.info) && tcp_checksum_ok(head, &f.info)) {
                return Some(m);
            }
            f.checked = true;
        }
        if !(ip_checksum_ok(&m, i) && tcp_checksum_ok(&m, i)) {
            return Some(m);
        }
        let hdr = i.hdr_len() as u16;
        if !m.adj(hdr) {
            return Some(m);
        }
        f.nb_segs += u32::from(m.nb_segs());
        f.parts.push(m);
        f.payload += i.payload;
        f.next_seq = f.next_seq.wrapping_add(i.payload);
        f.last_id = i.ip_id;
        f.segs += 1;
        let psh = i.flags & TCP_PSH != 0;
        f.psh |= psh;
        f.closed = psh || i.payload < f.info.payload;
        st.bytes_removed += u64::from(hdr);
        None
    }

    /// Ends the open frame of `m`'s flow, if any (a frame of that flow that cannot be
    /// merged follows: nothing later may join the frame before it).
    fn end_flow(&mut self, out: &mut [Mbuf], m: &Mbuf, i: &SegInfo, st: &mut GroStats) {
        if let Some(k) = self
            .flows
            .iter()
            .position(|f| same_flow(out[f.at].data(), &f.info, m.data(), i))
        {
            let f = self.flows.remove(k);
            self.finish(out, f, st);
        }
    }

    fn close_all(&mut self, out: &mut [Mbuf], st: &mut GroStats) {
        while let Some(f) = self.flows.pop() {
            self.finish(out, f, st);
        }
    }

    /// Chains a flow's merged segments to its head (from the last one back, so that each
    /// link walks one short chain) and finishes the frame.
    fn finish(&mut self, out: &mut [Mbuf], mut f: Flow, st: &mut GroStats) {
        let mut tail: Option<Mbuf> = None;
        while let Some(mut m) = f.parts.pop() {
            if let Some(t) = tail.take() {
                // At most MAX_SEGS * 4 segments, far below what a chain can hold
                // (RTE_MBUF_MAX_NB_SEGS): linking cannot fail.
                if m.chain(t).is_err() {
                    debug_assert!(false, "mbuf chain full");
                }
            }
            tail = Some(m);
        }
        if let Some(t) = tail {
            if out[f.at].chain(t).is_err() {
                debug_assert!(false, "mbuf chain full");
            }
        }
        finish(out, &f, st);
        self.spare.push(std::mem::take(&mut f.parts));
    }
}

/// Turns a flow's frame of two or more segments into a GSO frame: IP length fields and
/// the IPv4 header checksum rewritten, PSH if any segment had it, the TCP checksum field
/// the pseudo-header sum over the whole length, TSO offload flags with the first
/// segment's size as the MSS.
fn finish(out: &mut [Mbuf], f: &Flow, st: &mut GroStats) {
    if f.segs < 2 {
        return;
    }
    let i = &f.info;
    let m = &mut out[f.at];
    let l2 = usize::from(i.l2_len);
    let l4 = l2 + usize::from(i.l3_len);
    let l4_total = u32::from(i.l4_len) + f.payload;
    let d = m.data_mut();
    if i.v6 {
        d[l2 + 4..l2 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
    } else {
        let total = (u32::from(i.l3_len) + l4_total) as u16;
        d[l2 + 2..l2 + 4].copy_from_slice(&total.to_be_bytes());
        d[l2 + 10..l2 + 12].copy_from_slice(&[0, 0]);
        let c = !sum_segments(std::iter::once(&d[l2..l4]));
        d[l2 + 10..l2 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if f.psh {
        d[l4 + 13] |= TCP_PSH;
    }
    let p = pseudo_sum(d, i, l4_total);
    d[l4 + 16..l4 + 18].copy_from_slice(&p.to_be_bytes());
    let ip = if i.v6 {
        sys::RTE_MBUF_F_TX_IPV6
    } else {
        sys::RTE_MBUF_F_TX_IPV4
    };
    let keep = m.ol_flags() & !(u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK));
    m.set_ol_flags(keep | ip | sys::RTE_MBUF_F_TX_TCP_SEG | sys::RTE_MBUF_F_TX_TCP_CKSUM);
    m.set_tx_offload(i.l2_len, i.l3_len, i.l4_len, i.payload as u16);
    st.frames += 1;
    st.segments += u64::from(f.segs);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(b: &[u8]) -> u16 {
        let mut s = 0u32;
        for w in b.chunks(2) {
            s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        fold(u64::from(s))
    }

    #[test]
    fn sums_match_the_definition_across_odd_splits() {
        let data: Vec<u8> = (0..3001u32).map(|i| (i * 7 + 3) as u8).collect();
        let want = naive(&data);
        assert_eq!(sum_segments(std::iter::once(&data[..])), want);
        for cut in [1, 2, 3, 7, 8, 9, 1500, 2999] {
            let (a, b) = data.split_at(cut);
            assert_eq!(sum_segments([a, b].into_iter()), want, "cut {cut}");
            let (b1, b2) = b.split_at((b.len() / 2) | 1);
            assert_eq!(sum_segments([a, b1, b2].into_iter()), want, "cut {cut}");
        }
        assert_eq!(sum_segments(std::iter::empty()), 0);
    }

    fn seg(seq: u32, payload: usize, flags: u8, id: u16) -> Vec<u8> {
        let mut f = crate::wire::tests::v4_tcp(payload, None);
        let l2 = 14;
        let l4 = l2 + 20;
        f[l2 + 4..l2 + 6].copy_from_slice(&id.to_be_bytes());
        f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        f[l4 + 13] = flags;
        f
    }

    #[test]
    fn classification() {
        let f = seg(1, 100, TCP_ACK, 1);
        let Class::Mergeable(i) = classify(&f, f.len() as u32) else {
            panic!("plain ACK segment");
        };
        assert_eq!((i.seq, i.payload, i.hdr_len()), (1, 100, 54));
        for flags in [0x02 | TCP_ACK, 0x01 | TCP_ACK, 0x04, 0x20 | TCP_ACK, 0] {
            let f = seg(1, 100, flags, 1);
            assert!(
                matches!(classify(&f, f.len() as u32), Class::TcpOther(_)),
                "{flags:#x}"
            );
        }
        // No payload, a length field disagreeing with the frame, a first fragment.
        let f = seg(1, 0, TCP_ACK, 1);
        assert!(matches!(classify(&f, f.len() as u32), Class::TcpOther(_)));
        let f = seg(1, 100, TCP_ACK, 1);
        assert!(matches!(
            classify(&f, f.len() as u32 + 4),
            Class::TcpOther(_)
        ));
        let mut f = seg(1, 100, TCP_ACK, 1);
        f[14 + 6] |= 0x20;
        assert_eq!(classify(&f, f.len() as u32), Class::Unknown);
        assert_eq!(classify(&[0u8; 60], 60), Class::NotTcp);
        assert_eq!(classify(&f[..30], 30), Class::Unknown);
        for n in 0..f.len() {
            let _ = classify(&f[..n], n as u32);
        }
    }

    #[test]
    fn header_comparison() {
        let a = seg(1, 100, TCP_ACK, 1);
        let b = seg(101, 100, TCP_ACK | TCP_PSH, 2);
        let Class::Mergeable(i) = classify(&a, a.len() as u32) else {
            panic!()
        };
        assert!(same_headers(&a, &b, &i));
        // A different ACK number, window or TTL is another frame.
        for at in [14 + 20 + 8, 14 + 20 + 14, 14 + 8] {
            let mut c = b.clone();
            c[at] ^= 1;
            assert!(!same_headers(&a, &c, &i), "byte {at}");
        }
        assert!(same_flow(&a, &i, &b, &i));
        let mut c = b.clone();
        c[14 + 20] ^= 1; // source port
        assert!(!same_flow(&a, &i, &c, &i));
    }
}
