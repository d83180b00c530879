//! Checked views of the packet headers the engine needs for offloads.
//!
//! Only what checksum and segmentation offload need: where L3 and L4 start, their lengths,
//! the L4 protocol and where its checksum field is. Every length is checked against the
//! bytes actually present before it is used, so a hostile frame yields an error, never an
//! out-of-bounds read. Input is the packet's first contiguous segment (the engine gathers
//! at least 128 bytes there, more than an Ethernet + IPv4/IPv6 + TCP header).
use thiserror::Error;

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Why headers could not be parsed (the caller counts it and drops or passes the frame
/// without offload, depending on whether offload was required).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("frame truncated inside the {0} header")]
    Truncated(&'static str),
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("IP fragment: no L4 header to offload")]
    Fragment,
}

/// The L3 protocol with the addresses the pseudo-header needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// The L4 protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    Other(u8),
}

impl L4 {
    /// Offset of the checksum field inside the L4 header (Linux `csum_offset`).
    pub fn csum_offset(self) -> Option<u16> {
        match self {
            L4::Tcp => Some(16),
            L4::Udp => Some(6),
            L4::Other(_) => None,
        }
    }
}

/// Header layout of one frame (the mbuf's `l2_len`/`l3_len`/`l4_len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// Ethernet header, including one 802.1Q tag when present.
    pub l2_len: u16,
    pub vlan: Option<u16>,
    pub l3: L3,
    /// IPv4 header with options, or IPv6 header with its extension headers.
    pub l3_len: u16,
    pub l4: L4,
    /// TCP header with options, 8 for UDP, 0 for other protocols.
    pub l4_len: u16,
}

impl Headers {
    /// Offset of L4 from the start of the frame.
    pub fn l4_offset(&self) -> usize {
        usize::from(self.l2_len) + usize::from(self.l3_len)
    }

    /// Offset of the L4 checksum field from the start of the frame.
    pub fn csum_field(&self) -> Option<usize> {
        self.l4
            .csum_offset()
            .map(|o| self.l4_offset() + usize::from(o))
    }

    /// Total length of all headers (where a TSO payload starts).
    pub fn header_len(&self) -> usize {
        self.l4_offset() + usize::from(self.l4_len)
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses Ethernet (one optional VLAN tag), IPv4 or IPv6 (with extension headers), and the
/// TCP or UDP header when present in `frame`.
pub fn parse(frame: &[u8]) -> Result<Headers, WireError> {
    if frame.len() < ETH_HLEN {
        return Err(WireError::Truncated("Ethernet"));
    }
    let mut l2_len = ETH_HLEN;
    let mut ethertype = be16(frame, 12);
    let mut vlan = None;
    if ethertype == ETHERTYPE_VLAN {
        if frame.len() < ETH_HLEN + 4 {
            return Err(WireError::Truncated("802.1Q"));
        }
        vlan = Some(be16(frame, 14) & 0x0FFF);
        ethertype = be16(frame, 16);
        l2_len += 4;
    }
    let ip = &frame[l2_len..];
    let (l3, l3_len, proto) = match ethertype {
        ETHERTYPE_IPV4 => parse_v4(ip)?,
        ETHERTYPE_IPV6 => parse_v6(ip)?,
        other => return Err(WireError::NotIp(other)),
    };
    let l4b = &ip[l3_len..];
    let (l4, l4_len) = match proto {
        IPPROTO_TCP => {
            if l4b.len() < 20 {
                return Err(WireError::Truncated("TCP"));
            }
            let doff = usize::from(l4b[12] >> 4) * 4;
            if doff < 20 {
                return Err(WireError::Malformed("TCP"));
            }
            if l4b.len() < doff {
                return Err(WireError::Truncated("TCP options"));
            }
            (L4::Tcp, doff)
        }
        IPPROTO_UDP => {
            if l4b.len() < 8 {
                return Err(WireError::Truncated("UDP"));
            }
            (L4::Udp, 8)
        }
        p => (L4::Other(p), 0),
    };
    Ok(Headers {
        l2_len: l2_len as u16,
        vlan,
        l3,
        l3_len: l3_len as u16,
        l4,
        l4_len: l4_len as u16,
    })
}

fn parse_v4(ip: &[u8]) -> Result<(L3, usize, u8), WireError> {
    if ip.len() < 20 {
        return Err(WireError::Truncated("IPv4"));
    }
    if ip[0] >> 4 != 4 {
        return Err(WireError::Malformed("IPv4 version"));
    }
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    if ihl < 20 {
        return Err(WireError::Malformed("IPv4 IHL"));
    }
    if ip.len() < ihl {
        return Err(WireError::Truncated("IPv4 options"));
    }
    let frag = be16(ip, 6);
    if frag & 0x1FFF != 0 {
        return Err(WireError::Fragment);
    }
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&ip[12..16]);
    dst.copy_from_slice(&ip[16..20]);
    Ok((L3::V4 { src, dst }, ihl, ip[9]))
}

/// Extension headers walked before giving up (a chain of hundreds is an attack).
const MAX_V6_EXT: usize = 8;

fn parse_v6(ip: &[u8]) -> Result<(L3, usize, u8), WireError> {
    if ip.len() < 40 {
        return Err(WireError::Truncated("IPv6"));
    }
    if ip[0] >> 4 != 6 {
        return Err(WireError::Malformed("IPv6 version"));
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = 40usize;
    for _ in 0..MAX_V6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                if ip.len() < off + 8 {
                    return Err(WireError::Truncated("IPv6 extension"));
                }
                let len = (usize::from(ip[off + 1]) + 1) * 8;
                if ip.len() < off + len {
                    return Err(WireError::Truncated("IPv6 extension"));
                }
                next = ip[off];
                off += len;
            }
            // Fragment header: 8 bytes; only the first fragment has the L4 header.
            44 => {
                if ip.len() < off + 8 {
                    return Err(WireError::Truncated("IPv6 fragment"));
                }
                if be16(ip, off + 2) & 0xFFF8 != 0 {
                    return Err(WireError::Fragment);
                }
                next = ip[off];
                off += 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                if ip.len() < off + 8 {
                    return Err(WireError::Truncated("IPv6 AH"));
                }
                let len = (usize::from(ip[off + 1]) + 2) * 4;
                if ip.len() < off + len {
                    return Err(WireError::Truncated("IPv6 AH"));
                }
                next = ip[off];
                off += len;
            }
            _ => return Ok((L3::V6 { src, dst }, off, next)),
        }
    }
    Err(WireError::Malformed("IPv6 extension chain too long"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds Ethernet + IPv4 + TCP (20-byte header) + payload; checksums left zero.
    pub fn v4_tcp(payload: usize, vlan: Option<u16>) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let tot = (20 + 20 + payload) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (tot >> 8) as u8,
            tot as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18]);
        f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    pub fn v6_udp(payload: usize, ext: &[(u8, usize)]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xDD];
        let ext_len: usize = ext.iter().map(|e| e.1).sum();
        let plen = (ext_len + 8 + payload) as u16;
        let first = ext.first().map(|e| e.0).unwrap_or(IPPROTO_UDP);
        f.extend_from_slice(&[0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, first, 64]);
        f.extend_from_slice(&[0xfd; 16]);
        f.extend_from_slice(&[0xfe; 16]);
        for (i, (_, len)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map(|e| e.0).unwrap_or(IPPROTO_UDP);
            let mut h = vec![0u8; *len];
            h[0] = next;
            h[1] = (len / 8 - 1) as u8;
            f.extend_from_slice(&h);
        }
        let ulen = (8 + payload) as u16;
        f.extend_from_slice(&[0x04, 0xd2, 0x16, 0x2e, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn ipv4_tcp() {
        let h = parse(&v4_tcp(100, None)).unwrap();
        assert_eq!((h.l2_len, h.l3_len, h.l4, h.l4_len), (14, 20, L4::Tcp, 20));
        assert_eq!(h.csum_field(), Some(14 + 20 + 16));
        assert_eq!(h.header_len(), 54);
        assert!(matches!(
            h.l3,
            L3::V4 {
                src: [10, 0, 0, 1],
                dst: [10, 0, 0, 2]
            }
        ));
        let h = parse(&v4_tcp(0, Some(42))).unwrap();
        assert_eq!((h.l2_len, h.vlan), (18, Some(42)));
    }

    #[test]
    fn ipv6_udp_with_extensions() {
        let h = parse(&v6_udp(10, &[])).unwrap();
        assert_eq!((h.l3_len, h.l4, h.l4_len), (40, L4::Udp, 8));
        assert_eq!(h.csum_field(), Some(14 + 40 + 6));
        let h = parse(&v6_udp(10, &[(0, 8), (60, 16)])).unwrap();
        assert_eq!(h.l3_len, 64);
        assert_eq!(h.l4, L4::Udp);
    }

    #[test]
    fn rejects_malformed() {
        let f = v4_tcp(0, None);
        for cut in 0..f.len() {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = v4_tcp(10, None);
        bad[14] = 0x44; // IHL 16 bytes
        assert_eq!(parse(&bad), Err(WireError::Malformed("IPv4 IHL")));
        let mut frag = v4_tcp(10, None);
        frag[14 + 7] = 8; // fragment offset 8
        assert_eq!(parse(&frag), Err(WireError::Fragment));
        let mut arp = v4_tcp(10, None);
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse(&arp), Err(WireError::NotIp(0x0806)));
        // An endless extension chain is refused.
        let long: Vec<(u8, usize)> = (0..20).map(|_| (60u8, 8usize)).collect();
        assert!(parse(&v6_udp(0, &long)).is_err());
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 7u64;
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let len = (seed >> 56) as usize;
            let mut f = v6_udp(4, &[(0, 8)]);
            if seed & 1 == 0 {
                f = v4_tcp(4, None);
            }
            for b in f.iter_mut() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                if seed >> 61 == 0 {
                    *b = (seed >> 32) as u8;
                }
            }
            f.truncate(len.min(f.len()));
            if let Ok(h) = parse(&f) {
                assert!(h.header_len() <= f.len());
            }
        }
    }
}
