//! Helpers shared by the fuzz targets: turning raw fuzzer bytes into ring slots, and the
//! checks several targets make on a parsed TX packet.
use dataplane::netif::TxRequest;
use dataplane::txparse::{Parsed, Rsp, Verdict};

/// Splits `data` into 12-byte TX slot images (the tail shorter than a slot is dropped).
pub fn tx_slots(data: &[u8]) -> Vec<TxRequest> {
    data.chunks_exact(12)
        .map(|c| {
            let mut b = [0u8; 12];
            b.copy_from_slice(c);
            TxRequest::from_bytes(b)
        })
        .collect()
}

/// Parses the packet at `ring[cons..]` with a fetch that panics on a slot read twice, on
/// slot 0 read again, or on a read at or beyond the end; checks that the consumed slots
/// are exactly the ones read.
pub fn parse_checked(ring: &[TxRequest], cons: usize, mcast: bool, out: &mut Parsed) {
    let avail = (ring.len() - cons) as u32;
    let mut read = vec![false; ring.len() - cons];
    dataplane::txparse::parse_tx_into(
        out,
        ring[cons],
        avail,
        |i| {
            let i = i as usize;
            assert!(i > 0 && i < read.len(), "fetch({i}) outside 1..{avail}");
            assert!(!read[i], "slot {i} fetched twice");
            read[i] = true;
            ring[cons + i]
        },
        mcast,
    );
    let consumed = out.consumed as usize;
    assert!(
        (1..=read.len()).contains(&consumed),
        "consumed {consumed} of {avail}"
    );
    for (i, r) in read.iter().enumerate().skip(1) {
        assert_eq!(
            *r,
            i < consumed,
            "slot {i} read={r} but consumed={consumed}"
        );
    }
    if matches!(out.verdict, Verdict::Rogue(_)) {
        assert!(out.responses.is_empty(), "a rogue packet is answered");
    } else {
        assert_eq!(out.responses.len(), consumed, "one response per slot");
        for (k, rsp) in out.responses.iter().enumerate() {
            let slot = ring[cons + k];
            match *rsp {
                Rsp::Data { id }
                | Rsp::Empty { id }
                | Rsp::Error { id }
                | Rsp::Status { id, .. } => {
                    assert_eq!(id, slot.id, "response {k} answers another request's id")
                }
                Rsp::Extra => assert!(k > 0, "the first slot answered as an extra"),
            }
        }
    }
}
