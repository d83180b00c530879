//! Guest TX parsing over a ring's worth of arbitrary requests and extras, packet after
//! packet as the engine walks the ring, until the ring ends or the frontend is rogue.
//!
//! Invariants: each slot is read at most once and only below the producer; the packet's
//! consumed slots are exactly those read; every consumed slot gets exactly one response,
//! in slot order, echoing that slot's id; an accepted packet's slots stay inside their
//! pages, carry the whole frame (`len` == the first slot's size) and parse again to the
//! same packet when re-encoded; a dropped packet answers nothing OKAY; packets + drops +
//! multicast requests + rogue stops == packets seen; the engine's reused `Parsed` gives
//! what a fresh parse gives.
#![no_main]
use dataplane::netif::{
    ExtraInfo, TxRequest, NETTXF_CSUM_BLANK, NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO,
    NETTXF_MORE_DATA, PAGE_SIZE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use dataplane::txparse::{parse_tx, Gso, Parsed, Rsp, Verdict, MAX_SLOTS};
use libfuzzer_sys::fuzz_target;
use netbackd_fuzz::{parse_checked, tx_slots};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mcast = mode & 1 != 0;
    // At most one ring's worth (256 TX slots).
    let ring = tx_slots(&rest[..rest.len().min(256 * 12)]);
    let mut parsed = Parsed::default();
    let (mut seen, mut packets, mut drops, mut mcasts, mut rogues) = (0, 0, 0, 0, 0);
    let mut answered = 0usize;
    let mut cons = 0usize;
    while cons < ring.len() {
        seen += 1;
        parse_checked(&ring, cons, mcast, &mut parsed);
        let fresh = parse_tx(
            ring[cons],
            (ring.len() - cons) as u32,
            |i| ring[cons + i as usize],
            mcast,
        );
        assert_eq!(fresh.consumed, parsed.consumed);
        assert_eq!(fresh.verdict, parsed.verdict);
        assert_eq!(fresh.responses, parsed.responses);
        let first = ring[cons];
        match parsed.verdict {
            Verdict::Packet => {
                packets += 1;
                assert_eq!(fresh.packet.slots, parsed.packet.slots);
                check_packet(&ring[cons..cons + parsed.consumed as usize], &parsed, mcast);
            }
            Verdict::Drop(_) => {
                drops += 1;
                assert!(
                    parsed
                        .responses
                        .iter()
                        .all(|r| matches!(r, Rsp::Error { .. } | Rsp::Extra)),
                    "a dropped packet answered {:?}",
                    parsed.responses
                );
            }
            Verdict::Mcast(_) => {
                mcasts += 1;
                assert_ne!(first.flags & NETTXF_EXTRA_INFO, 0);
                let want = if mcast { 0 } else { -1 };
                assert_eq!(
                    parsed.responses[0],
                    Rsp::Status {
                        id: first.id,
                        status: want
                    }
                );
                assert!(parsed.responses[1..].iter().all(|r| *r == Rsp::Extra));
            }
            Verdict::Rogue(_) => {
                rogues += 1;
                break;
            }
        }
        answered += parsed.responses.len();
        cons += parsed.consumed as usize;
    }
    assert_eq!(packets + drops + mcasts + rogues, seen);
    if rogues == 0 {
        assert_eq!(answered, ring.len(), "every consumed slot answered once");
    }
});

/// Checks an accepted packet against its slots, then re-encodes it and parses it again.
fn check_packet(slots: &[TxRequest], p: &Parsed, mcast: bool) {
    let pk = &p.packet;
    let first = slots[0];
    assert!(!pk.slots.is_empty() && pk.slots.len() <= MAX_SLOTS);
    assert_eq!(
        (pk.slots[0].gref, pk.slots[0].offset),
        (first.gref, first.offset)
    );
    assert!(pk.slots[0].len >= 14, "runt accepted");
    assert_eq!(
        pk.len,
        u32::from(first.size),
        "frame length is the first slot's size"
    );
    let sum: u32 = pk.slots.iter().map(|s| u32::from(s.len)).sum();
    assert_eq!(pk.len, sum);
    for s in &pk.slots {
        assert!(
            usize::from(s.offset) + usize::from(s.len) <= PAGE_SIZE,
            "{s:?} crosses its page"
        );
    }
    // The data slots are the Data responses, in order.
    let data: Vec<_> = p
        .responses
        .iter()
        .zip(slots)
        .filter(|(r, _)| matches!(r, Rsp::Data { .. }))
        .map(|(_, s)| (s.gref, s.offset))
        .collect();
    let got: Vec<_> = pk.slots.iter().map(|s| (s.gref, s.offset)).collect();
    assert_eq!(data, got);
    for (k, s) in pk.slots.iter().enumerate().skip(1) {
        assert!(s.len > 0, "empty slot {k} attached");
    }
    if let Some(Gso::TcpV4 { mss } | Gso::TcpV6 { mss }) = pk.gso {
        assert!(mss > 0);
    }

    // Round trip: the canonical encoding of the packet parses to the same packet.
    let mut ring = Vec::new();
    let n = pk.slots.len();
    let keep = first.flags & (NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED);
    let mut flags = keep;
    if pk.gso.is_some() {
        flags |= NETTXF_EXTRA_INFO;
    }
    if n > 1 {
        flags |= NETTXF_MORE_DATA;
    }
    ring.push(TxRequest {
        gref: pk.slots[0].gref,
        offset: pk.slots[0].offset,
        flags,
        id: 0,
        size: pk.len as u16,
    });
    match pk.gso {
        Some(Gso::TcpV4 { mss }) => {
            ring.push(ExtraInfo::gso(mss, XEN_NETIF_GSO_TYPE_TCPV4, false).to_tx_slot())
        }
        Some(Gso::TcpV6 { mss }) => {
            ring.push(ExtraInfo::gso(mss, XEN_NETIF_GSO_TYPE_TCPV6, false).to_tx_slot())
        }
        None => {}
    }
    for (k, s) in pk.slots.iter().enumerate().skip(1) {
        let more = if k + 1 < n { NETTXF_MORE_DATA } else { 0 };
        ring.push(TxRequest {
            gref: s.gref,
            offset: s.offset,
            flags: more,
            id: k as u16,
            size: s.len,
        });
    }
    let mut again = Parsed::default();
    parse_checked(&ring, 0, mcast, &mut again);
    assert_eq!(again.verdict, Verdict::Packet, "re-encoded packet refused");
    assert_eq!(again.consumed as usize, ring.len());
    assert_eq!(again.packet.slots, pk.slots);
    assert_eq!(again.packet.gso, pk.gso);
    assert_eq!(again.packet.len, pk.len);
}
