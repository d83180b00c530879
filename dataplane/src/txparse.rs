//! Guest TX: turns the requests of one packet into a plan, or a verdict.
//!
//! Pure logic over *copies* of ring slots: the caller copies each slot out of shared
//! memory once (through `fetch`) and this module never sees shared memory, so a frontend
//! rewriting a slot meanwhile changes nothing (XSA-155). The rules are those of Linux
//! netback (`xenvif_tx_build_gops`, `xenvif_get_extras`, `xenvif_count_requests`), with
//! the fixes since the 3.8 seed:
//! - extras: type 0 or >= MAX, or a missing extra slot: rogue frontend; GSO with size 0 or
//!   an unknown type: rogue; MCAST_ADD/DEL: the request carries no packet and is answered;
//! - continuation slots: missing (more_data but the ring ends): rogue; 20 slots or more:
//!   rogue; more than 18: dropped (every slot answered ERROR); a slot bigger than what is
//!   left of the frame: dropped (buggy frontends send >= 64 KiB frames); a slot crossing
//!   a 4 KiB page: rogue;
//! - zero-length continuation slots are answered OKAY and never attached (XSA-448);
//! - the first slot's own data shorter than an Ethernet header: ERROR; crossing a page:
//!   rogue.
//!
//! The response plan always has exactly one entry per consumed slot, so the response
//! producer can never run ahead of or behind the requests.
use crate::netif::{
    ExtraInfo, TxRequest, FATAL_SLOTS, NETTXF_EXTRA_INFO as TXF_EXTRA_INFO,
    NETTXF_MORE_DATA as TXF_MORE_DATA, PAGE_SIZE, XEN_NETIF_EXTRA_TYPE_GSO as EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_HASH as EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_MAX as EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD as EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_EXTRA_TYPE_MCAST_DEL as EXTRA_TYPE_MCAST_DEL,
    XEN_NETIF_GSO_TYPE_TCPV4 as GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6 as GSO_TYPE_TCPV6,
    XEN_NETIF_NR_SLOTS_MIN,
};

/// Slots beyond this make the packet dropped.
pub const MAX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Most extra slots one packet may carry (one per valid type).
pub const MAX_EXTRAS: usize = (EXTRA_TYPE_MAX - 1) as usize;
/// Most slots a packet can consume: data slots up to the fatal limit plus extras.
pub const MAX_PACKET_SLOTS: usize = FATAL_SLOTS + MAX_EXTRAS;
const ETH_HLEN: u16 = 14;

/// A response to write, in slot order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rsp {
    /// A data slot: OKAY unless its copy fails (the engine decides after the copy).
    Data { id: u16 },
    /// A zero-length slot: OKAY, settled now.
    Empty { id: u16 },
    /// A slot that carried an extra: NULL.
    #[default]
    Extra,
    /// The whole packet is refused: ERROR.
    Error { id: u16 },
    /// A multicast control request answered with this status.
    Status { id: u16, status: i16 },
}

/// One data slot to copy from the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub gref: u32,
    pub offset: u16,
    pub len: u16,
}

/// GSO metadata from the GSO extra.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gso {
    TcpV4 { mss: u16 },
    TcpV6 { mss: u16 },
}

/// A multicast filter change requested through an extra.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McastOp {
    Add([u8; 6]),
    Del([u8; 6]),
}

/// Why a packet is refused without disabling the vif (counted per reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// First slot holds less than an Ethernet header.
    Runt,
    /// More than 18 data slots.
    TooManySlots,
    /// A continuation slot larger than what remains of the frame.
    FragOverflow,
}

/// Why a frontend is disabled (tier 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rogue {
    MissingExtra,
    BadExtraType(u8),
    ZeroGsoSize,
    BadGsoType(u8),
    MissingSlots,
    FatalSlotCount,
    SlotCrossesPage,
    FirstSlotCrossesPage,
}

impl std::fmt::Display for Rogue {
    /// What the frontend did, for the vif's `error` node and the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rogue::MissingExtra => f.write_str("extra-info slot missing at the end of the ring"),
            Rogue::BadExtraType(t) => write!(f, "extra-info type {t} is not valid"),
            Rogue::ZeroGsoSize => f.write_str("GSO extra with size 0"),
            Rogue::BadGsoType(t) => write!(f, "GSO type {t} is not valid"),
            Rogue::MissingSlots => f.write_str("continuation slots missing at the end of the ring"),
            Rogue::FatalSlotCount => write!(f, "a packet of {FATAL_SLOTS} or more slots"),
            Rogue::SlotCrossesPage => f.write_str("a continuation slot crosses its 4 KiB page"),
            Rogue::FirstSlotCrossesPage => f.write_str("the first slot crosses its 4 KiB page"),
        }
    }
}

/// Fixed-capacity list, so parsing allocates nothing; its storage is not initialised up
/// front (a parse of a one-slot packet would otherwise write ~600 bytes of defaults).
/// Pushing past the capacity panics: the capacities are sized by construction, so that
/// would be an internal bug.
pub type SmallVec<T, const N: usize> = arrayvec::ArrayVec<T, N>;

/// A packet ready for grant copies.
#[derive(Clone, Debug)]
pub struct TxPacket {
    /// Total frame length (sum of the data slots).
    pub len: u32,
    /// First-slot flags (csum_blank, data_validated).
    pub flags: u16,
    pub gso: Option<Gso>,
    /// Non-empty data slots in order; the first is the first request.
    pub slots: SmallVec<Slot, MAX_SLOTS>,
}

/// What the parser decided for the packet at the head of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Copy `Parsed::packet`; answer with `responses` (Data entries settled by copy status).
    Packet,
    /// Refused: `responses` are all settled; count `reason`.
    Drop(DropReason),
    /// A multicast filter request; answered by `responses`.
    Mcast(McastOp),
    /// Disable the vif; nothing is answered.
    Rogue(Rogue),
}

/// The parser's result for one packet. The engine keeps one and has it refilled per
/// packet (`parse_tx_into`): returning the ~300 bytes of slot and response lists by value
/// cost a `memcpy` per packet.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// Ring slots this packet used: the caller advances `req_cons` by this much (also on
    /// `Rogue`, where it no longer matters).
    pub consumed: u32,
    pub verdict: Verdict,
    /// The packet to copy; meaningful only when `verdict` is `Packet`.
    pub packet: TxPacket,
    /// One entry per consumed slot, in slot order (empty for `Rogue`).
    pub responses: SmallVec<Rsp, MAX_PACKET_SLOTS>,
}

impl Default for Parsed {
    fn default() -> Self {
        Parsed {
            consumed: 0,
            verdict: Verdict::Packet,
            packet: TxPacket {
                len: 0,
                flags: 0,
                gso: None,
                slots: SmallVec::new(),
            },
            responses: SmallVec::new(),
        }
    }
}

/// Parses the packet whose first request is `first` (already copied, slot 0).
/// `avail` is the number of unconsumed requests including `first`; `fetch(i)` copies slot
/// `req_cons + i` out of the ring (called at most once per slot, `0 < i < avail`).
/// `mcast_enabled`: the frontend negotiated multicast control.
pub fn parse_tx(
    first: TxRequest,
    avail: u32,
    fetch: impl FnMut(u32) -> TxRequest,
    mcast_enabled: bool,
) -> Parsed {
    let mut p = Parsed::default();
    parse_tx_into(&mut p, first, avail, fetch, mcast_enabled);
    p
}

/// True when `first` alone is a whole packet the parser accepts as it is: one slot, no
/// extras, at least an Ethernet header, inside its page (most packets). The parser's
/// result for it is `Packet` with one data slot = the request, `gso` None, one `Data`
/// response; the engine builds such a packet from the request itself.
#[inline]
pub fn one_slot_packet(first: &TxRequest) -> bool {
    first.flags & (TXF_EXTRA_INFO | TXF_MORE_DATA) == 0
        && first.size >= ETH_HLEN
        && usize::from(first.offset) + usize::from(first.size) <= PAGE_SIZE
}

/// `parse_tx` writing into `out` (every field is overwritten). The engine decides a
/// packet that is its one request with `one_slot_packet` and does not parse it.
#[inline]
pub fn parse_tx_into(
    out: &mut Parsed,
    first: TxRequest,
    avail: u32,
    fetch: impl FnMut(u32) -> TxRequest,
    mcast_enabled: bool,
) {
    parse_tx_general(out, first, avail, fetch, mcast_enabled)
}

/// The parser (`parse_tx_into`), out of line.
#[inline(never)]
fn parse_tx_general(
    out: &mut Parsed,
    first: TxRequest,
    avail: u32,
    mut fetch: impl FnMut(u32) -> TxRequest,
    mcast_enabled: bool,
) {
    out.responses.clear();
    out.packet.slots.clear();
    let rogue = |out: &mut Parsed, consumed, r| {
        out.consumed = consumed;
        out.verdict = Verdict::Rogue(r);
        out.responses.clear();
    };
    let mut idx: u32 = 1;

    // Extras.
    let mut gso = None;
    let mut mcast = None;
    let mut n_extras = 0usize;
    if first.flags & TXF_EXTRA_INFO != 0 {
        loop {
            if idx >= avail {
                return rogue(out, idx, Rogue::MissingExtra);
            }
            let e = ExtraInfo::from_tx_slot(&fetch(idx));
            idx += 1;
            let ty = e.ty;
            if ty == 0 || ty >= EXTRA_TYPE_MAX {
                return rogue(out, idx, Rogue::BadExtraType(ty));
            }
            n_extras += 1;
            if n_extras > MAX_EXTRAS {
                // Legal types repeated more often than there are types: only a hostile
                // frontend chains that many.
                return rogue(out, idx, Rogue::BadExtraType(ty));
            }
            match ty {
                EXTRA_TYPE_GSO => {
                    let g = e.as_gso();
                    gso = Some((g.size, g.gso_type));
                }
                EXTRA_TYPE_MCAST_ADD | EXTRA_TYPE_MCAST_DEL => {
                    let mac = e.as_mcast();
                    mcast = Some(if ty == EXTRA_TYPE_MCAST_ADD {
                        McastOp::Add(mac)
                    } else {
                        McastOp::Del(mac)
                    });
                }
                EXTRA_TYPE_HASH => {} // a hint only; netbackd computes its own
                _ => unreachable!("type range checked above"),
            }
            if !e.more() {
                break;
            }
        }
    }

    // A multicast request carries no packet: answer it and stop (as Linux does).
    if let Some(op) = mcast {
        let status = if mcast_enabled { 0 } else { -1 };
        out.responses.push(Rsp::Status {
            id: first.id,
            status,
        });
        for _ in 0..n_extras {
            out.responses.push(Rsp::Extra);
        }
        out.consumed = idx;
        out.verdict = Verdict::Mcast(op);
        return;
    }

    // The first slot's length is known only after the continuation slots; its entries
    // are written now and its length at the end.
    out.responses.push(Rsp::Data { id: first.id });
    for _ in 0..n_extras {
        out.responses.push(Rsp::Extra);
    }
    out.packet.slots.push(Slot {
        gref: first.gref,
        offset: first.offset,
        len: 0,
    });

    // Continuation slots. `remaining` is what is left of the frame after each slot; it
    // ends as the first slot's own data length.
    let mut remaining: u16 = first.size;
    let mut frags_len = 0u32;
    let mut drop = None;
    let mut more = first.flags & TXF_MORE_DATA != 0;
    let mut slots = 1usize;
    while more {
        if idx >= avail {
            return rogue(out, idx, Rogue::MissingSlots);
        }
        // `slots` counts the packet's slots so far; this one would be slot `slots + 1`.
        if slots + 1 >= FATAL_SLOTS {
            return rogue(out, idx, Rogue::FatalSlotCount);
        }
        if slots >= MAX_SLOTS && drop.is_none() {
            drop = Some(DropReason::TooManySlots);
        }
        let txp = fetch(idx);
        idx += 1;
        if drop.is_none() && txp.size > remaining {
            drop = Some(DropReason::FragOverflow);
        }
        remaining = remaining.wrapping_sub(txp.size);
        slots += 1;
        if usize::from(txp.offset) + usize::from(txp.size) > PAGE_SIZE {
            return rogue(out, idx, Rogue::SlotCrossesPage);
        }
        if txp.size == 0 {
            out.responses.push(Rsp::Empty { id: txp.id });
        } else {
            out.responses.push(Rsp::Data { id: txp.id });
            // Without a drop there are at most MAX_SLOTS slots, so this always fits.
            if drop.is_none() {
                out.packet.slots.push(Slot {
                    gref: txp.gref,
                    offset: txp.offset,
                    len: txp.size,
                });
                frags_len += u32::from(txp.size);
            }
        }
        more = txp.flags & TXF_MORE_DATA != 0;
    }

    let first_len = remaining;
    // A refused packet: every slot but the extras answered ERROR.
    let refuse = |out: &mut Parsed, reason| {
        for r in out.responses.iter_mut() {
            if let Rsp::Data { id } | Rsp::Empty { id } = *r {
                *r = Rsp::Error { id };
            }
        }
        out.consumed = idx;
        out.verdict = Verdict::Drop(reason);
    };
    if let Some(reason) = drop {
        return refuse(out, reason);
    }
    if first_len < ETH_HLEN {
        return refuse(out, DropReason::Runt);
    }
    if usize::from(first.offset) + usize::from(first_len) > PAGE_SIZE {
        return rogue(out, idx, Rogue::FirstSlotCrossesPage);
    }
    let gso = match gso {
        None => None,
        Some((0, _)) => return rogue(out, idx, Rogue::ZeroGsoSize),
        Some((mss, GSO_TYPE_TCPV4)) => Some(Gso::TcpV4 { mss }),
        Some((mss, GSO_TYPE_TCPV6)) => Some(Gso::TcpV6 { mss }),
        Some((_, t)) => return rogue(out, idx, Rogue::BadGsoType(t)),
    };
    out.packet.slots[0].len = first_len;
    out.packet.len = u32::from(first_len) + frags_len;
    out.packet.flags = first.flags;
    out.packet.gso = gso;
    out.consumed = idx;
    out.verdict = Verdict::Packet;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxRequest {
        TxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
    }

    /// An extra slot as a TxRequest image: type, flags, then 6 payload bytes.
    fn extra(ty: u8, flags: u8, payload: [u8; 6]) -> TxRequest {
        ExtraInfo { ty, flags, payload }.to_tx_slot()
    }

    fn gso_extra(size: u16, ty: u8, more: bool) -> TxRequest {
        let s = size.to_le_bytes();
        extra(EXTRA_TYPE_GSO, u8::from(more), [s[0], s[1], ty, 0, 0, 0])
    }

    /// Runs the parser over a ring image; checks each slot is fetched at most once.
    fn run(ring: &[TxRequest]) -> Parsed {
        run_mc(ring, false)
    }
    fn run_mc(ring: &[TxRequest], mc: bool) -> Parsed {
        let mut fetched = vec![false; ring.len()];
        let p = parse_tx(
            ring[0],
            ring.len() as u32,
            |i| {
                let i = i as usize;
                assert!(
                    i > 0 && !fetched[i],
                    "slot {i} fetched twice or slot 0 refetched"
                );
                fetched[i] = true;
                ring[i]
            },
            mc,
        );
        if !matches!(p.verdict, Verdict::Rogue(_)) {
            assert_eq!(
                p.responses.len(),
                p.consumed as usize,
                "one response per slot"
            );
        }
        p
    }

    /// `one_slot_packet` (the engine's way around the parser) holds exactly when the parser
    /// returns that one-slot packet, on every edge of size (runt) and offset (page
    /// crossing) and with every other flag; `parse_tx_into` decides as the parser.
    #[test]
    fn one_slot_fast_path_equals_general() {
        let mut seen = 0;
        for flags in [
            0u16,
            crate::netif::NETTXF_CSUM_BLANK,
            crate::netif::NETTXF_DATA_VALIDATED,
            0xfff3,
        ] {
            if flags & (TXF_EXTRA_INFO | TXF_MORE_DATA) != 0 {
                continue;
            }
            for size in [0u16, 1, 13, 14, 15, 60, 1514, 4095, 4096, 4097, 65535] {
                for offset in [0u16, 1, 2048, 4082, 4095, 4096, 65535] {
                    for avail in [1u32, 2, 256] {
                        let r = req(9, offset, flags, 3, size);
                        let mut fast = Parsed::default();
                        parse_tx_into(&mut fast, r, avail, |_| unreachable!(), false);
                        let mut gen = Parsed::default();
                        parse_tx_general(&mut gen, r, avail, |_| unreachable!(), false);
                        let one = gen.verdict == Verdict::Packet
                            && gen.consumed == 1
                            && gen.responses.as_slice() == [Rsp::Data { id: r.id }]
                            && gen.packet.gso.is_none()
                            && (gen.packet.len, gen.packet.flags) == (u32::from(size), flags)
                            && gen.packet.slots.as_slice()
                                == [Slot {
                                    gref: r.gref,
                                    offset,
                                    len: size,
                                }];
                        assert_eq!(one_slot_packet(&r), one, "size {size} offset {offset}");
                        assert_eq!(
                            (fast.consumed, fast.verdict, fast.responses.as_slice()),
                            (gen.consumed, gen.verdict, gen.responses.as_slice()),
                            "size {size} offset {offset} flags {flags:#x}"
                        );
                        if fast.verdict == Verdict::Packet {
                            assert_eq!(
                                (
                                    fast.packet.len,
                                    fast.packet.flags,
                                    fast.packet.gso,
                                    fast.packet.slots.as_slice()
                                ),
                                (
                                    gen.packet.len,
                                    gen.packet.flags,
                                    gen.packet.gso,
                                    gen.packet.slots.as_slice()
                                )
                            );
                            seen += 1;
                        }
                    }
                }
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn single_slot() {
        let p = run(&[req(7, 100, crate::netif::NETTXF_CSUM_BLANK, 1, 60)]);
        assert_eq!(p.consumed, 1);
        assert_eq!(p.verdict, Verdict::Packet);
        let pk = &p.packet;
        assert_eq!(pk.len, 60);
        assert_eq!(pk.flags, crate::netif::NETTXF_CSUM_BLANK);
        assert_eq!(
            pk.slots.as_slice(),
            &[Slot {
                gref: 7,
                offset: 100,
                len: 60
            }]
        );
        assert_eq!(p.responses.as_slice(), &[Rsp::Data { id: 1 }]);
    }

    #[test]
    fn multi_slot_with_gso_and_empty_slot() {
        // first.size = total = 3000: first slot 1000, then 2000, then an empty slot.
        let ring = [
            req(1, 0, TXF_MORE_DATA | TXF_EXTRA_INFO, 10, 3000),
            gso_extra(1448, GSO_TYPE_TCPV6, false),
            req(2, 0, TXF_MORE_DATA, 11, 2000),
            req(3, 0, 0, 12, 0),
        ];
        let p = run(&ring);
        assert_eq!(p.consumed, 4);
        assert_eq!(p.verdict, Verdict::Packet);
        let pk = &p.packet;
        assert_eq!(pk.len, 3000);
        assert_eq!(pk.gso, Some(Gso::TcpV6 { mss: 1448 }));
        assert_eq!(pk.slots.len(), 2);
        assert_eq!(pk.slots.as_slice()[0].len, 1000);
        assert_eq!(
            p.responses.as_slice(),
            &[
                Rsp::Data { id: 10 },
                Rsp::Extra,
                Rsp::Data { id: 11 },
                Rsp::Empty { id: 12 }
            ]
        );
    }

    #[test]
    fn runt_gets_error() {
        let p = run(&[req(1, 0, 0, 5, 13)]);
        assert!(matches!(p.verdict, Verdict::Drop(DropReason::Runt)));
        assert_eq!(p.responses.as_slice(), &[Rsp::Error { id: 5 }]);
        // First slot below ETH_HLEN even though the frame is bigger.
        let p = run(&[req(1, 0, TXF_MORE_DATA, 5, 100), req(2, 0, 0, 6, 90)]);
        assert!(matches!(p.verdict, Verdict::Drop(DropReason::Runt)));
        assert_eq!(
            p.responses.as_slice(),
            &[Rsp::Error { id: 5 }, Rsp::Error { id: 6 }]
        );
    }

    #[test]
    fn frag_bigger_than_frame_is_dropped_not_fatal() {
        let p = run(&[req(1, 0, TXF_MORE_DATA, 1, 100), req(2, 0, 0, 2, 200)]);
        assert!(matches!(p.verdict, Verdict::Drop(DropReason::FragOverflow)));
        assert_eq!(p.consumed, 2);
    }

    fn chain(n: usize) -> Vec<TxRequest> {
        let mut v = vec![req(0, 0, TXF_MORE_DATA, 0, (n * 100) as u16)];
        for i in 1..n {
            let more = if i + 1 < n { TXF_MORE_DATA } else { 0 };
            v.push(req(i as u32, 0, more, i as u16, 100));
        }
        v
    }

    #[test]
    fn slot_limits() {
        assert!(matches!(run(&chain(18)).verdict, Verdict::Packet));
        let p = run(&chain(19));
        assert!(matches!(p.verdict, Verdict::Drop(DropReason::TooManySlots)));
        assert_eq!(p.consumed, 19);
        assert!(p
            .responses
            .as_slice()
            .iter()
            .all(|r| matches!(r, Rsp::Error { .. })));
        assert!(matches!(
            run(&chain(20)).verdict,
            Verdict::Rogue(Rogue::FatalSlotCount)
        ));
        assert!(matches!(
            run(&chain(200)).verdict,
            Verdict::Rogue(Rogue::FatalSlotCount)
        ));
    }

    #[test]
    fn missing_slots_and_extras_are_rogue() {
        let mut c = chain(5);
        c.truncate(3);
        assert!(matches!(
            run(&c).verdict,
            Verdict::Rogue(Rogue::MissingSlots)
        ));
        assert!(matches!(
            run(&[req(1, 0, TXF_EXTRA_INFO, 1, 60)]).verdict,
            Verdict::Rogue(Rogue::MissingExtra)
        ));
        // Extra chain with MORE set but nothing after.
        assert!(matches!(
            run(&[
                req(1, 0, TXF_EXTRA_INFO, 1, 60),
                gso_extra(1000, GSO_TYPE_TCPV4, true)
            ])
            .verdict,
            Verdict::Rogue(Rogue::MissingExtra)
        ));
    }

    #[test]
    fn bad_extras_and_gso_are_rogue() {
        for ty in [0u8, 5, 6, 255] {
            let p = run(&[req(1, 0, TXF_EXTRA_INFO, 1, 60), extra(ty, 0, [0; 6])]);
            assert!(matches!(p.verdict, Verdict::Rogue(Rogue::BadExtraType(t)) if t == ty));
        }
        let p = run(&[
            req(1, 0, TXF_EXTRA_INFO, 1, 60),
            gso_extra(0, GSO_TYPE_TCPV4, false),
        ]);
        assert!(matches!(p.verdict, Verdict::Rogue(Rogue::ZeroGsoSize)));
        let p = run(&[req(1, 0, TXF_EXTRA_INFO, 1, 60), gso_extra(1000, 3, false)]);
        assert!(matches!(p.verdict, Verdict::Rogue(Rogue::BadGsoType(3))));
        // An endless chain of valid extras is bounded.
        let mut ring = vec![req(1, 0, TXF_EXTRA_INFO, 1, 60)];
        ring.extend((0..50).map(|_| gso_extra(1000, GSO_TYPE_TCPV4, true)));
        assert!(matches!(run(&ring).verdict, Verdict::Rogue(_)));
    }

    #[test]
    fn page_crossing() {
        assert!(matches!(
            run(&[req(1, 4000, 0, 1, 100)]).verdict,
            Verdict::Rogue(Rogue::FirstSlotCrossesPage)
        ));
        assert!(matches!(
            run(&[req(1, 0, TXF_MORE_DATA, 1, 200), req(2, 4090, 0, 2, 100)]).verdict,
            Verdict::Rogue(Rogue::SlotCrossesPage)
        ));
        // Exactly to the end of the page is fine.
        assert!(matches!(
            run(&[req(1, 4096 - 60, 0, 1, 60)]).verdict,
            Verdict::Packet
        ));
    }

    #[test]
    fn multicast_requests() {
        let mac = [0x01, 0, 0x5e, 0, 0, 1];
        let ring = [
            req(1, 0, TXF_EXTRA_INFO, 9, 0),
            extra(EXTRA_TYPE_MCAST_ADD, 0, mac),
        ];
        let p = run_mc(&ring, true);
        assert!(matches!(p.verdict, Verdict::Mcast(McastOp::Add(m)) if m == mac));
        assert_eq!(
            p.responses.as_slice(),
            &[Rsp::Status { id: 9, status: 0 }, Rsp::Extra]
        );
        let p = run_mc(&ring, false);
        assert_eq!(
            p.responses.as_slice(),
            &[Rsp::Status { id: 9, status: -1 }, Rsp::Extra]
        );
    }

    /// No input panics, every non-rogue verdict answers every consumed slot, and data
    /// slots never cross a page.
    #[test]
    fn arbitrary_rings_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // One `Parsed` refilled for every ring, as the engine does: nothing of an earlier
        // packet may survive into the next.
        let mut reused = Parsed::default();
        for _ in 0..20_000 {
            let n = (rnd() % 30 + 1) as usize;
            let ring: Vec<TxRequest> = (0..n)
                .map(|_| {
                    let r = rnd();
                    req(
                        r as u32,
                        (r >> 32) as u16 % 4200,
                        (r >> 48) as u16 & 0xf,
                        (r >> 20) as u16,
                        (rnd() % 5000) as u16,
                    )
                })
                .collect();
            let p = run(&ring);
            assert!(p.consumed as usize <= n);
            parse_tx_into(&mut reused, ring[0], n as u32, |i| ring[i as usize], false);
            assert_eq!(reused.consumed, p.consumed);
            assert_eq!(reused.verdict, p.verdict);
            assert_eq!(reused.responses, p.responses);
            if p.verdict == Verdict::Packet {
                let pk = &p.packet;
                assert_eq!(reused.packet.len, pk.len);
                assert_eq!(reused.packet.flags, pk.flags);
                assert_eq!(reused.packet.gso, pk.gso);
                assert_eq!(reused.packet.slots, pk.slots);
                for s in pk.slots.as_slice() {
                    assert!(u32::from(s.offset) + u32::from(s.len) <= 4096);
                    assert!(s.len > 0);
                }
                let sum: u32 = pk.slots.as_slice().iter().map(|s| u32::from(s.len)).sum();
                assert_eq!(sum, pk.len);
            }
        }
    }
}
