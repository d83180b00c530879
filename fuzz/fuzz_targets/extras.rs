//! netif extra-info chains: a first TX slot flagged EXTRA_INFO followed by arbitrary
//! 8-byte extras (and a data slot), checked against an independent model of the chain
//! rules, plus the extra-info encodings' round trips.
//!
//! Invariants: the parser's verdict is the model's (missing extra, bad type, more extras
//! than types, multicast answered with the negotiated status, GSO size 0 or unknown type,
//! else the packet with the last GSO extra); the chain consumes exactly its slots; an
//! extra survives bytes, TX-slot and RX-slot encodings unchanged.
#![no_main]
use dataplane::netif::{
    ExtraInfo, TxRequest, NETTXF_EXTRA_INFO, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
};
use dataplane::txparse::{Gso, McastOp, Parsed, Rogue, Rsp, Verdict, MAX_EXTRAS};
use libfuzzer_sys::fuzz_target;
use netbackd_fuzz::parse_checked;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mcast_enabled = mode & 1 != 0;
    let extras: Vec<ExtraInfo> = rest
        .chunks_exact(8)
        .take(16)
        .map(|c| ExtraInfo::from_bytes(c.try_into().unwrap()))
        .collect();
    for e in &extras {
        assert_eq!(ExtraInfo::from_bytes(e.to_bytes()), *e);
        assert_eq!(ExtraInfo::from_tx_slot(&e.to_tx_slot()), *e);
        assert_eq!(ExtraInfo::from_rx_slot(&e.to_rx_slot()), *e);
        let g = e.as_gso();
        let back = ExtraInfo::gso(g.size, g.gso_type, e.more()).as_gso();
        assert_eq!((back.size, back.gso_type), (g.size, g.gso_type));
        assert_eq!(
            ExtraInfo::mcast(e.ty, e.as_mcast(), e.more()).as_mcast(),
            e.payload
        );
    }
    // First slot: a valid one-slot 60-byte frame, so only the extras decide.
    let first = TxRequest {
        gref: 1,
        offset: 0,
        flags: NETTXF_EXTRA_INFO,
        id: 7,
        size: 60,
    };
    let mut ring = vec![first];
    ring.extend(extras.iter().map(|e| e.to_tx_slot()));
    let mut p = Parsed::default();
    parse_checked(&ring, 0, mcast_enabled, &mut p);
    let (want, consumed) = model(&extras);
    assert_eq!(p.verdict, want, "chain {extras:?}");
    assert_eq!(p.consumed, consumed);
    if let Verdict::Mcast(_) = want {
        let status = if mcast_enabled { 0 } else { -1 };
        assert_eq!(p.responses[0], Rsp::Status { id: 7, status });
    }
    if let (Verdict::Packet, Some(g)) = (want, model_gso(&extras)) {
        assert_eq!(p.packet.gso, Some(g));
    }
});

/// The chain rules, written from the netif.h description: extras follow until one without
/// the MORE flag; type 0 or >= MAX is rogue; more extras than there are types is rogue; a
/// missing slot is rogue; a multicast extra makes the request a filter change; a GSO
/// extra needs a size and a known type.
fn model(extras: &[ExtraInfo]) -> (Verdict, u32) {
    let mut mcast = None;
    let mut gso = None;
    let mut n = 0;
    loop {
        let Some(e) = extras.get(n) else {
            return (Verdict::Rogue(Rogue::MissingExtra), 1 + n as u32);
        };
        n += 1;
        if e.ty == 0 || e.ty >= XEN_NETIF_EXTRA_TYPE_MAX || n > MAX_EXTRAS {
            return (Verdict::Rogue(Rogue::BadExtraType(e.ty)), 1 + n as u32);
        }
        match e.ty {
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD => mcast = Some(McastOp::Add(e.payload)),
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL => mcast = Some(McastOp::Del(e.payload)),
            XEN_NETIF_EXTRA_TYPE_GSO => gso = Some(e.as_gso()),
            _ => {}
        }
        if !e.more() {
            break;
        }
    }
    let consumed = 1 + n as u32;
    if let Some(op) = mcast {
        return (Verdict::Mcast(op), consumed);
    }
    match gso {
        Some(g) if g.size == 0 => (Verdict::Rogue(Rogue::ZeroGsoSize), consumed),
        Some(g)
            if g.gso_type != XEN_NETIF_GSO_TYPE_TCPV4 && g.gso_type != XEN_NETIF_GSO_TYPE_TCPV6 =>
        {
            (Verdict::Rogue(Rogue::BadGsoType(g.gso_type)), consumed)
        }
        _ => (Verdict::Packet, consumed),
    }
}

fn model_gso(extras: &[ExtraInfo]) -> Option<Gso> {
    let mut g = None;
    for e in extras {
        if e.ty == XEN_NETIF_EXTRA_TYPE_GSO {
            let x = e.as_gso();
            g = Some(if x.gso_type == XEN_NETIF_GSO_TYPE_TCPV4 {
                Gso::TcpV4 { mss: x.size }
            } else {
                Gso::TcpV6 { mss: x.size }
            });
        }
        if !e.more() {
            break;
        }
    }
    g
}
