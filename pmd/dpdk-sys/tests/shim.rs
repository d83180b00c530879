//! The C shim links and calls DPDK's inline functions; no EAL needed for these.
use dpdk_sys as sys;

/// RFC 1071 one's-complement sum, written from the definition.
fn rfc1071(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn ipv4_header_checksum_matches_rfc1071() {
    let mut hdr: [u8; 20] = [
        0x45, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 172, 16, 10, 99, 172, 16, 10, 12,
    ];
    // SAFETY: hdr is a 20-byte IPv4 header (IHL 5), which is all rte_ipv4_cksum reads;
    // rte_ipv4_hdr has alignment 1 (packed).
    let dpdk = unsafe { sys::nbd_ipv4_cksum(hdr.as_ptr() as *const sys::rte_ipv4_hdr) };
    // DPDK returns the checksum in network byte order, as it is stored in the header.
    let ours = rfc1071(&hdr);
    assert_eq!(u16::from_be(dpdk), ours);
    hdr[10..12].copy_from_slice(&ours.to_be_bytes());
    assert_eq!(rfc1071(&hdr), 0, "a header with its checksum sums to zero");
}

#[test]
fn version_string_from_library() {
    // SAFETY: rte_version returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(sys::rte_version()) };
    assert!(v.to_str().unwrap().starts_with("DPDK 2"));
}
