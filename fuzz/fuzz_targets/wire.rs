//! The header views over arbitrary frames: `wire::parse` (Ethernet, one 802.1Q tag,
//! IPv4/IPv6 with extension headers, TCP/UDP), the switch's `parse_l2`, and the flow
//! hashes that read the same headers.
//!
//! Invariants: parsed lengths lie inside the frame and match the bytes they came from
//! (tag, IHL, TCP data offset, addresses); the checksum field is inside the frame; the
//! result depends only on the header bytes (the headers alone, or the frame with more
//! payload, parse the same); the switch's L2 view agrees; the symmetric flow hash is the
//! same for both directions of a TCP/UDP flow.
#![no_main]
use dataplane::switch::parse_l2;
use dataplane::toeplitz::{hash_frame, symmetric_hash, HashFlags, ToeplitzKey};
use dataplane::wire::{parse, L3, L4};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let _ = hash_frame(&ToeplitzKey::default(), HashFlags::ALL, frame);
    let l2 = parse_l2(frame);
    let Ok(h) = parse(frame) else {
        return;
    };
    let l2 = l2.expect("wire parsed a frame the switch calls a runt");
    assert_eq!(l2.vlan, h.vlan);
    let tagged = frame[12..14] == [0x81, 0x00];
    assert_eq!(usize::from(h.l2_len), if tagged { 18 } else { 14 });
    if let Some(v) = h.vlan {
        assert_eq!(v, u16::from_be_bytes([frame[14], frame[15]]) & 0x0FFF);
    }
    let l3 = usize::from(h.l2_len);
    let et = u16::from_be_bytes([frame[l3 - 2], frame[l3 - 1]]);
    match h.l3 {
        L3::V4 { src, dst } => {
            assert_eq!(et, 0x0800);
            assert_eq!(usize::from(h.l3_len), usize::from(frame[l3] & 0x0F) * 4);
            assert!(h.l3_len >= 20);
            assert_eq!(src, frame[l3 + 12..l3 + 16]);
            assert_eq!(dst, frame[l3 + 16..l3 + 20]);
        }
        L3::V6 { src, dst } => {
            assert_eq!(et, 0x86DD);
            assert!(h.l3_len >= 40 && h.l3_len % 4 == 0);
            assert_eq!(src, frame[l3 + 8..l3 + 24]);
            assert_eq!(dst, frame[l3 + 24..l3 + 40]);
        }
    }
    let l4 = h.l4_offset();
    match h.l4 {
        L4::Tcp => {
            assert_eq!(usize::from(h.l4_len), usize::from(frame[l4 + 12] >> 4) * 4);
            assert!((20..=60).contains(&h.l4_len));
        }
        L4::Udp => assert_eq!(h.l4_len, 8),
        L4::Other(_) => assert_eq!(h.l4_len, 0),
    }
    assert!(
        h.header_len() <= frame.len(),
        "{h:?} beyond a {}-byte frame",
        frame.len()
    );
    if let Some(c) = h.csum_field() {
        assert!(c + 2 <= frame.len(), "checksum field outside the frame");
    }
    assert_eq!(
        parse(&frame[..h.header_len()]),
        Ok(h),
        "depends on payload bytes"
    );
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xA5; 64]);
    assert_eq!(parse(&longer), Ok(h));

    // Symmetry: swap the addresses and ports, the flow hash is unchanged.
    if matches!(h.l4, L4::Tcp | L4::Udp) {
        let mut rev = frame.to_vec();
        let (a, n) = match h.l3 {
            L3::V4 { .. } => (l3 + 12, 4),
            L3::V6 { .. } => (l3 + 8, 16),
        };
        for i in 0..n {
            rev.swap(a + i, a + n + i);
        }
        rev.swap(l4, l4 + 2);
        rev.swap(l4 + 1, l4 + 3);
        assert_eq!(
            parse(&rev).map(|r| (r.l2_len, r.l3_len, r.l4, r.l4_len)),
            Ok((h.l2_len, h.l3_len, h.l4, h.l4_len))
        );
        assert_eq!(
            symmetric_hash(&rev),
            symmetric_hash(frame),
            "flow hash not symmetric"
        );
    }
});
