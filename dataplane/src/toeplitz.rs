//! The Toeplitz hash of netif.h (the Microsoft RSS hash) and the bytes of a frame Linux
//! netback feeds it, so a frontend that configured hashing over the control ring gets the
//! hash values and types (and so the queues) it would get from Linux's xen-netback.
//!
//! Which bytes: Linux (`hash.c`, `xenvif_set_skb_hash`) hashes what its flow dissector
//! finds, in this order:
//! - IPv4 + TCP (type IPV4_TCP): source address, destination address, source port,
//!   destination port (12 bytes, as on the wire);
//! - IPv4 (type IPV4): source address, destination address (8 bytes);
//! - IPv6 + TCP (type IPV6_TCP): source, destination address, source, destination port (36);
//! - IPv6 (type IPV6): source, destination address (32).
//!
//! The TCP types apply only to unfragmented TCP (any IPv4 fragment, the first included, or
//! an IPv6 fragment header means addresses only); a TCP frame falls back to the address
//! type when only that is enabled; a frame whose protocol has no enabled type, and every
//! non-IP frame, gets no hash. One 802.1Q (or 802.1ad) tag is skipped: Linux sees the
//! frame after its receive path moved the tag out of the data.
//!
//! Where Linux differs from the "IP packet without options" of netif.h, Linux is followed:
//! IPv4 options are skipped (IHL), IPv6 hop-by-hop, routing and destination-options headers
//! are walked (at most 16, the dissector's bound), and a TCP header cut short of its ports
//! hashes zero ports. Not followed: Linux's dissector also descends into IP-in-IP and GRE
//! tunnels and then hashes the inner header; here the outer header is hashed (netif.h).
use crate::netif::abi::{
    ExtraInfo, _XEN_NETIF_CTRL_HASH_TYPE_IPV4, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    _XEN_NETIF_CTRL_HASH_TYPE_IPV6, _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
    XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_CTRL_HASH_TYPE_IPV4,
    XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, XEN_NETIF_CTRL_HASH_TYPE_IPV6,
    XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP, XEN_NETIF_EXTRA_TYPE_HASH,
};
use crate::wire::{
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, L3,
};

/// Longest key Linux netback accepts (`XEN_NETBK_MAX_HASH_KEY_SIZE`), enough for the 36
/// input bytes of an IPv6 + TCP hash (36 * 8 + 31 key bits).
pub const MAX_KEY_LEN: usize = 40;

/// 802.1ad service tag: Linux's receive path strips it like an 802.1Q tag.
const ETHERTYPE_QINQ: u16 = 0x88A8;
/// IPv6 extension headers Linux's flow dissector walks before it stops
/// (`MAX_FLOW_DISSECT_HDRS` re-entries after the first).
const MAX_IPV6_EXT: usize = 16;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;

/// The Toeplitz hash of `input` under `key`; key bits past the end of `key` are zero
/// (netif.h: "any key octets not specified are assumed to be zero").
///
/// For each set input bit, from the most significant bit of `input[0]` on, the 32 key bits
/// starting at that bit position are XORed into the result.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_byte = |i: usize| key.get(i).copied().unwrap_or(0);
    // Key bits [8i, 8i + 64) for input byte i: every 32-bit window its 8 bits need.
    let mut window = u64::from_be_bytes(std::array::from_fn(key_byte));
    let mut hash = 0u32;
    for (i, &byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                // Truncation keeps exactly key bits [8i + bit, 8i + bit + 32).
                hash ^= (window >> (32 - bit)) as u32;
            }
        }
        window = (window << 8) | u64::from(key_byte(i + 8));
    }
    hash
}

/// A Toeplitz key as a backend keeps it: 40 bytes, zero past what the frontend set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToeplitzKey([u8; MAX_KEY_LEN]);

impl Default for ToeplitzKey {
    fn default() -> Self {
        ToeplitzKey::ZERO
    }
}

impl ToeplitzKey {
    /// The all-zero key (Linux's initial key: every hash is 0).
    pub const ZERO: ToeplitzKey = ToeplitzKey([0; MAX_KEY_LEN]);

    pub const fn new(bytes: [u8; MAX_KEY_LEN]) -> ToeplitzKey {
        ToeplitzKey(bytes)
    }

    /// `key` zero-padded to 40 bytes; None if it is longer.
    pub fn from_slice(key: &[u8]) -> Option<ToeplitzKey> {
        let mut k = [0u8; MAX_KEY_LEN];
        k.get_mut(..key.len())?.copy_from_slice(key);
        Some(ToeplitzKey(k))
    }

    pub fn as_bytes(&self) -> &[u8; MAX_KEY_LEN] {
        &self.0
    }

    pub fn hash(&self, input: &[u8]) -> u32 {
        toeplitz(&self.0, input)
    }
}

/// A hash type of netif.h (`_XEN_NETIF_CTRL_HASH_TYPE_*`; the discriminant is the bit
/// number, which is also what a hash extra's `type` field carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HashType {
    Ipv4 = _XEN_NETIF_CTRL_HASH_TYPE_IPV4,
    Ipv4Tcp = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
    Ipv6 = _XEN_NETIF_CTRL_HASH_TYPE_IPV6,
    Ipv6Tcp = _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
}

impl HashType {
    /// The bit number (`_XEN_NETIF_CTRL_HASH_TYPE_*`), as sent in a hash extra.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The flag (`XEN_NETIF_CTRL_HASH_TYPE_*`), as in GET/SET_HASH_FLAGS.
    pub fn flag(self) -> u32 {
        1 << self.number()
    }

    /// Whether the hash covers the TCP ports (Linux: an L4 hash).
    pub fn is_l4(self) -> bool {
        matches!(self, HashType::Ipv4Tcp | HashType::Ipv6Tcp)
    }
}

/// The set of hash types a frontend enabled (`XEN_NETIF_CTRL_HASH_TYPE_*` bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashFlags(u32);

impl HashFlags {
    pub const NONE: HashFlags = HashFlags(0);
    /// Every type netif.h defines (what Linux answers to GET_HASH_FLAGS).
    pub const ALL: HashFlags = HashFlags(
        XEN_NETIF_CTRL_HASH_TYPE_IPV4
            | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
            | XEN_NETIF_CTRL_HASH_TYPE_IPV6
            | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
    );

    /// The flags of `bits`; None if a bit names no type netif.h defines.
    pub fn from_bits(bits: u32) -> Option<HashFlags> {
        (bits & !Self::ALL.0 == 0).then_some(HashFlags(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn contains(self, t: HashType) -> bool {
        self.0 & t.flag() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A frame's hash and its type: what goes to the frontend in a hash extra.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHash {
    pub value: u32,
    pub ty: HashType,
}

impl FrameHash {
    /// The guest-RX hash extra Linux sends with the frame (`XEN_NETIF_EXTRA_TYPE_HASH`:
    /// the type's bit number, algorithm Toeplitz, the value in little-endian byte order).
    pub fn to_extra(self) -> ExtraInfo {
        let v = self.value.to_le_bytes();
        ExtraInfo {
            ty: XEN_NETIF_EXTRA_TYPE_HASH,
            flags: 0,
            payload: [
                self.ty.number(),
                XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ as u8,
                v[0],
                v[1],
                v[2],
                v[3],
            ],
        }
    }
}

/// What Linux's flow dissector finds in a frame, as far as hashing needs it.
///
/// Not `wire::parse`: that view serves offloads, so it refuses what hashing must accept
/// (non-first fragments, TCP headers cut short) and takes a first fragment for whole TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKeys {
    pub l3: L3,
    /// The L4 protocol (IPv4 protocol, or IPv6 next header after the extension headers).
    pub proto: u8,
    /// Any IPv4 fragment (MF set or non-zero offset) or an IPv6 fragment header.
    pub fragment: bool,
    /// The 4 bytes where a TCP/UDP header keeps its ports (source, destination; wire
    /// order), zero where the frame ends first. Meaningless for fragments.
    pub ports: [u8; 4],
}

impl FlowKeys {
    /// Whether the TCP hash types apply (Linux: TCP and not a fragment).
    pub fn has_tcp(&self) -> bool {
        self.proto == IPPROTO_TCP && !self.fragment
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Four bytes at `at`, or zeros if the frame ends before them (Linux's dissector reports
/// zero ports when it cannot read them).
fn ports_at(b: &[u8], at: usize) -> [u8; 4] {
    at.checked_add(4)
        .and_then(|end| b.get(at..end))
        .map(|p| [p[0], p[1], p[2], p[3]])
        .unwrap_or([0; 4])
}

/// The flow keys of an Ethernet frame (untagged or with one 802.1Q/802.1ad tag); None for
/// non-IP frames and for IP headers Linux's dissector rejects (truncated fixed header,
/// IPv4 IHL below 5, truncated IPv6 extension or fragment header).
pub fn flow_keys(frame: &[u8]) -> Option<FlowKeys> {
    let mut l3_at = ETH_HLEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        ethertype = be16(frame, 16)?;
        l3_at += 4;
    }
    let ip = frame.get(l3_at..)?;
    match ethertype {
        ETHERTYPE_IPV4 => v4_keys(ip),
        ETHERTYPE_IPV6 => v6_keys(ip),
        _ => None,
    }
}

fn v4_keys(ip: &[u8]) -> Option<FlowKeys> {
    let hdr = ip.get(..20)?;
    // Like Linux, the version nibble is not checked: the ethertype said IPv4.
    let ihl = usize::from(hdr[0] & 0x0F);
    if ihl < 5 {
        return None;
    }
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&hdr[12..16]);
    dst.copy_from_slice(&hdr[16..20]);
    // More-fragments or a fragment offset: no L4 header to trust.
    let fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3FFF != 0;
    Some(FlowKeys {
        l3: L3::V4 { src, dst },
        proto: hdr[9],
        fragment,
        ports: ports_at(ip, ihl * 4),
    })
}

fn v6_keys(ip: &[u8]) -> Option<FlowKeys> {
    let hdr = ip.get(..40)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let mut next = hdr[6];
    let mut at = 40usize;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Linux reads just the 2-byte (next header, length) prefix here.
                let opt = ip.get(at..at.checked_add(2)?)?;
                next = opt[0];
                at += (usize::from(opt[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let frag = ip.get(at..at.checked_add(8)?)?;
                next = frag[0];
                fragment = true;
                break;
            }
            _ => break,
        }
    }
    Some(FlowKeys {
        l3: L3::V6 { src, dst },
        proto: next,
        fragment,
        ports: ports_at(ip, at),
    })
}

/// The hash Linux netback computes for `frame` with `key` and the enabled `flags`, or None
/// (no enabled type applies; Linux then clears the hash, which steers as hash 0).
pub fn hash_frame(key: &ToeplitzKey, flags: HashFlags, frame: &[u8]) -> Option<FrameHash> {
    if flags.is_empty() {
        return None;
    }
    let keys = flow_keys(frame)?;
    let mut buf = [0u8; 36];
    let (len, ty) = match keys.l3 {
        L3::V4 { src, dst } => {
            buf[..4].copy_from_slice(&src);
            buf[4..8].copy_from_slice(&dst);
            if keys.has_tcp() && flags.contains(HashType::Ipv4Tcp) {
                buf[8..12].copy_from_slice(&keys.ports);
                (12, HashType::Ipv4Tcp)
            } else if flags.contains(HashType::Ipv4) {
                (8, HashType::Ipv4)
            } else {
                return None;
            }
        }
        L3::V6 { src, dst } => {
            buf[..16].copy_from_slice(&src);
            buf[16..32].copy_from_slice(&dst);
            if keys.has_tcp() && flags.contains(HashType::Ipv6Tcp) {
                buf[32..36].copy_from_slice(&keys.ports);
                (36, HashType::Ipv6Tcp)
            } else if flags.contains(HashType::Ipv6) {
                (32, HashType::Ipv6)
            } else {
                return None;
            }
        }
    };
    Some(FrameHash {
        value: key.hash(&buf[..len]),
        ty,
    })
}

/// The fixed key of [`symmetric_hash`] (the Microsoft RSS verification key: any fixed key
/// does; this one is well mixed).
const SYMMETRIC_KEY: ToeplitzKey = ToeplitzKey([
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]);

/// A direction-independent flow hash for steering when the frontend configured no hashing:
/// the two (address, port) endpoints are put in a fixed order before a Toeplitz hash, so
/// both directions of a connection (a guest routing or bridging) land on one queue, as
/// with Linux's own default (its flow hash sorts the endpoints too). Ports count for
/// unfragmented TCP and UDP. None for non-IP frames.
pub fn symmetric_hash(frame: &[u8]) -> Option<u32> {
    let keys = flow_keys(frame)?;
    let with_ports = !keys.fragment && (keys.proto == IPPROTO_TCP || keys.proto == IPPROTO_UDP);
    let (sp, dp) = if with_ports {
        (
            [keys.ports[0], keys.ports[1]],
            [keys.ports[2], keys.ports[3]],
        )
    } else {
        ([0; 2], [0; 2])
    };
    let mut buf = [0u8; 36];
    let len = match keys.l3 {
        L3::V4 { src, dst } => put_sorted(&mut buf, &src, sp, &dst, dp),
        L3::V6 { src, dst } => put_sorted(&mut buf, &src, sp, &dst, dp),
    };
    Some(SYMMETRIC_KEY.hash(&buf[..len]))
}

/// Writes `lo address, hi address, lo port, hi port` into `buf` with the endpoints in
/// ascending (address, port) order; returns the length used.
fn put_sorted(buf: &mut [u8; 36], a: &[u8], ap: [u8; 2], b: &[u8], bp: [u8; 2]) -> usize {
    let ((lo, lop), (hi, hip)) = if (a, ap) <= (b, bp) {
        ((a, ap), (b, bp))
    } else {
        ((b, bp), (a, ap))
    };
    let n = lo.len();
    buf[..n].copy_from_slice(lo);
    buf[n..2 * n].copy_from_slice(hi);
    buf[2 * n..2 * n + 2].copy_from_slice(&lop);
    buf[2 * n + 2..2 * n + 4].copy_from_slice(&hip);
    2 * n + 4
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The key of Microsoft's RSS verification suite ("Verifying the RSS Hash
    /// Calculation"), the same in Intel's 82599 datasheet (7.1.2.8.3).
    pub const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    /// (source, destination, source port, destination port, address hash, TCP hash).
    pub type Vector<const N: usize> = ([u8; N], [u8; N], u16, u16, u32, u32);

    /// (source, destination, source port, destination port, IPv4 hash, IPv4+TCP hash):
    /// the published IPv4 table (the same values are in DPDK's test_thash.c and Knot's
    /// toeplitz test, which cite the same suite).
    pub const V4_VECTORS: [Vector<4>; 5] = [
        (
            [66, 9, 149, 187],
            [161, 142, 100, 80],
            2794,
            1766,
            0x323e8fc2,
            0x51ccc178,
        ),
        (
            [199, 92, 111, 2],
            [65, 69, 140, 83],
            14230,
            4739,
            0xd718262a,
            0xc626b0ea,
        ),
        (
            [24, 19, 198, 95],
            [12, 22, 207, 184],
            12898,
            38024,
            0xd2d0a5de,
            0x5c2b394a,
        ),
        (
            [38, 27, 205, 30],
            [209, 142, 163, 6],
            48228,
            2217,
            0x82989176,
            0xafc7327f,
        ),
        (
            [153, 39, 163, 191],
            [202, 188, 127, 2],
            44251,
            1303,
            0x5d1809c5,
            0x10e828a2,
        ),
    ];

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    /// The published IPv6 table: (source, destination, ports, IPv6 hash, IPv6+TCP hash).
    pub fn v6_vectors() -> [Vector<16>; 3] {
        [
            (
                v6("3ffe:2501:200:1fff::7"),
                v6("3ffe:2501:200:3::1"),
                2794,
                1766,
                0x2cc18cd5,
                0x40207d3d,
            ),
            (
                v6("3ffe:501:8::260:97ff:fe40:efab"),
                v6("ff02::1"),
                14230,
                4739,
                0x0f0c461c,
                0xdde51bbf,
            ),
            (
                v6("3ffe:1900:4545:3:200:f8ff:fe21:67cf"),
                v6("fe80::200:f8ff:fe21:67cf"),
                44251,
                38024,
                0x4b61e985,
                0x02d1feef,
            ),
        ]
    }

    fn eth(vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(v) = vlan {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// Ethernet + IPv4 (`opts` bytes of options) + an L4 header of `proto` with the ports.
    #[allow(clippy::too_many_arguments)]
    pub fn v4_frame(
        vlan: Option<u16>,
        proto: u8,
        src: [u8; 4],
        dst: [u8; 4],
        sp: u16,
        dp: u16,
        frag_off: u16,
        opts: usize,
    ) -> Vec<u8> {
        let mut f = eth(vlan, ETHERTYPE_IPV4);
        let ihl = (20 + opts) / 4;
        let tot = (20 + opts + 20) as u16;
        f.extend_from_slice(&[0x40 | ihl as u8, 0]);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&frag_off.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.resize(f.len() + opts, 1);
        f.extend_from_slice(&sp.to_be_bytes());
        f.extend_from_slice(&dp.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    /// Ethernet + IPv6 + extension headers `(type, bytes)` + an L4 header of `proto`.
    pub fn v6_frame(
        vlan: Option<u16>,
        proto: u8,
        src: [u8; 16],
        dst: [u8; 16],
        sp: u16,
        dp: u16,
        ext: &[(u8, usize)],
    ) -> Vec<u8> {
        let mut f = eth(vlan, ETHERTYPE_IPV6);
        let ext_len: usize = ext.iter().map(|e| e.1).sum();
        let first = ext.first().map(|e| e.0).unwrap_or(proto);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext_len + 20) as u16).to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        for (i, (_, len)) in ext.iter().enumerate() {
            let mut h = vec![0u8; *len];
            h[0] = ext.get(i + 1).map(|e| e.0).unwrap_or(proto);
            h[1] = (len / 8 - 1) as u8;
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(&sp.to_be_bytes());
        f.extend_from_slice(&dp.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    const UDP: u8 = IPPROTO_UDP;
    const TCP: u8 = IPPROTO_TCP;

    #[test]
    fn microsoft_rss_vectors_ipv4() {
        for (src, dst, sp, dp, l3, l4) in V4_VECTORS {
            let mut input = Vec::new();
            input.extend_from_slice(&src);
            input.extend_from_slice(&dst);
            assert_eq!(toeplitz(&MS_KEY, &input), l3, "{src:?} -> {dst:?}");
            input.extend_from_slice(&sp.to_be_bytes());
            input.extend_from_slice(&dp.to_be_bytes());
            assert_eq!(
                toeplitz(&MS_KEY, &input),
                l4,
                "{src:?}:{sp} -> {dst:?}:{dp}"
            );
        }
    }

    #[test]
    fn microsoft_rss_vectors_ipv6() {
        for (src, dst, sp, dp, l3, l4) in v6_vectors() {
            let mut input = Vec::new();
            input.extend_from_slice(&src);
            input.extend_from_slice(&dst);
            assert_eq!(toeplitz(&MS_KEY, &input), l3);
            input.extend_from_slice(&sp.to_be_bytes());
            input.extend_from_slice(&dp.to_be_bytes());
            assert_eq!(toeplitz(&MS_KEY, &input), l4);
        }
    }

    #[test]
    fn vectors_through_frames_untagged_and_tagged() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let all = HashFlags::ALL;
        let l3_only =
            HashFlags::from_bits(XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV6)
                .unwrap();
        for vlan in [None, Some(100)] {
            for (src, dst, sp, dp, l3, l4) in V4_VECTORS {
                let f = v4_frame(vlan, TCP, src, dst, sp, dp, 0, 0);
                let h = hash_frame(&key, all, &f).unwrap();
                assert_eq!((h.value, h.ty), (l4, HashType::Ipv4Tcp));
                // TCP falls back to the address type when only that is enabled.
                let h = hash_frame(&key, l3_only, &f).unwrap();
                assert_eq!((h.value, h.ty), (l3, HashType::Ipv4));
                // UDP: address type with every flag set.
                let u = v4_frame(vlan, UDP, src, dst, sp, dp, 0, 0);
                let h = hash_frame(&key, all, &u).unwrap();
                assert_eq!((h.value, h.ty), (l3, HashType::Ipv4));
            }
            for (src, dst, sp, dp, l3, l4) in v6_vectors() {
                let f = v6_frame(vlan, TCP, src, dst, sp, dp, &[]);
                let h = hash_frame(&key, all, &f).unwrap();
                assert_eq!((h.value, h.ty), (l4, HashType::Ipv6Tcp));
                let h = hash_frame(&key, l3_only, &f).unwrap();
                assert_eq!((h.value, h.ty), (l3, HashType::Ipv6));
            }
        }
        // 802.1ad outer tag is skipped too.
        let (src, dst, sp, dp, _, l4) = V4_VECTORS[0];
        let mut f = v4_frame(Some(7), TCP, src, dst, sp, dp, 0, 0);
        f[12..14].copy_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
        assert_eq!(hash_frame(&key, all, &f).unwrap().value, l4);
    }

    #[test]
    fn no_hash_without_a_matching_type() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let (src, dst, sp, dp, ..) = V4_VECTORS[1];
        let tcp4 = v4_frame(None, TCP, src, dst, sp, dp, 0, 0);
        let udp4 = v4_frame(None, UDP, src, dst, sp, dp, 0, 0);
        let (s6, d6, ..) = v6_vectors()[0];
        let tcp6 = v6_frame(None, TCP, s6, d6, sp, dp, &[]);
        let only = |b| HashFlags::from_bits(b).unwrap();
        // Nothing enabled.
        assert_eq!(hash_frame(&key, HashFlags::NONE, &tcp4), None);
        // IPv6 types only: no IPv4 hash, and the reverse.
        let v6_all = only(XEN_NETIF_CTRL_HASH_TYPE_IPV6 | XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP);
        assert_eq!(hash_frame(&key, v6_all, &tcp4), None);
        let v4_all = only(XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
        assert_eq!(hash_frame(&key, v4_all, &tcp6), None);
        // Only the TCP type: UDP gets nothing.
        assert_eq!(
            hash_frame(&key, only(XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP), &udp4),
            None
        );
        // Non-IP (ARP) gets nothing.
        let mut arp = eth(None, 0x0806);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(hash_frame(&key, HashFlags::ALL, &arp), None);
        assert_eq!(flow_keys(&arp), None);
        // A tag around a non-IP frame, and QinQ (only one tag is skipped).
        let mut tagged_arp = eth(Some(5), 0x0806);
        tagged_arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(hash_frame(&key, HashFlags::ALL, &tagged_arp), None);
        let mut qinq = eth(Some(5), ETHERTYPE_VLAN);
        qinq.extend_from_slice(&tcp4[12..]);
        assert_eq!(hash_frame(&key, HashFlags::ALL, &qinq), None);
    }

    #[test]
    fn fragments_hash_addresses_only() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let (src, dst, sp, dp, l3, _) = V4_VECTORS[2];
        // First fragment (MF), later fragment (offset), both: address type.
        for frag in [0x2000u16, 0x0010, 0x2010] {
            let f = v4_frame(None, TCP, src, dst, sp, dp, frag, 0);
            let h = hash_frame(&key, HashFlags::ALL, &f).unwrap();
            assert_eq!((h.value, h.ty), (l3, HashType::Ipv4), "frag_off {frag:#x}");
        }
        // DF alone is not a fragment.
        let f = v4_frame(None, TCP, src, dst, sp, dp, 0x4000, 0);
        assert_eq!(
            hash_frame(&key, HashFlags::ALL, &f).unwrap().ty,
            HashType::Ipv4Tcp
        );
        // An IPv6 fragment header (first fragment or not).
        let (s6, d6, sp6, dp6, l3_6, _) = v6_vectors()[1];
        let f = v6_frame(None, TCP, s6, d6, sp6, dp6, &[(IPV6_FRAGMENT, 8)]);
        let h = hash_frame(&key, HashFlags::ALL, &f).unwrap();
        assert_eq!((h.value, h.ty), (l3_6, HashType::Ipv6));
    }

    #[test]
    fn options_and_extension_headers_are_skipped() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let (src, dst, sp, dp, _, l4) = V4_VECTORS[3];
        let f = v4_frame(None, TCP, src, dst, sp, dp, 0, 12);
        assert_eq!(hash_frame(&key, HashFlags::ALL, &f).unwrap().value, l4);
        let (s6, d6, sp6, dp6, _, l4_6) = v6_vectors()[2];
        let ext = [(IPV6_HOPOPTS, 8), (IPV6_ROUTING, 24), (IPV6_DSTOPTS, 16)];
        let f = v6_frame(Some(9), TCP, s6, d6, sp6, dp6, &ext);
        let h = hash_frame(&key, HashFlags::ALL, &f).unwrap();
        assert_eq!((h.value, h.ty), (l4_6, HashType::Ipv6Tcp));
        // 16 extension headers are walked; a 17th leaves an extension as the protocol.
        let ext16 = [(IPV6_DSTOPTS, 8); 16];
        let f = v6_frame(None, TCP, s6, d6, sp6, dp6, &ext16);
        assert_eq!(
            hash_frame(&key, HashFlags::ALL, &f).unwrap().ty,
            HashType::Ipv6Tcp
        );
        let ext17 = [(IPV6_DSTOPTS, 8); 17];
        let f = v6_frame(None, TCP, s6, d6, sp6, dp6, &ext17);
        assert_eq!(
            hash_frame(&key, HashFlags::ALL, &f).unwrap().ty,
            HashType::Ipv6
        );
    }

    #[test]
    fn truncation_follows_linux() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let (src, dst, sp, dp, ..) = V4_VECTORS[4];
        let f = v4_frame(None, TCP, src, dst, sp, dp, 0, 0);
        // Cut inside the IPv4 header: no hash. Cut inside the ports: zero ports, L4 type.
        assert_eq!(hash_frame(&key, HashFlags::ALL, &f[..14 + 19]), None);
        let mut zero_ports = src.to_vec();
        zero_ports.extend_from_slice(&dst);
        zero_ports.extend_from_slice(&[0; 4]);
        for cut in 14 + 20..14 + 24 {
            let h = hash_frame(&key, HashFlags::ALL, &f[..cut]).unwrap();
            assert_eq!(
                (h.value, h.ty),
                (toeplitz(&MS_KEY, &zero_ports), HashType::Ipv4Tcp)
            );
        }
        // IHL below 5 is rejected.
        let mut bad = f.clone();
        bad[14] = 0x44;
        assert_eq!(hash_frame(&key, HashFlags::ALL, &bad), None);
        // A truncated IPv6 extension header is rejected.
        let (s6, d6, ..) = v6_vectors()[0];
        let f6 = v6_frame(None, TCP, s6, d6, 1, 2, &[(IPV6_HOPOPTS, 8)]);
        assert_eq!(hash_frame(&key, HashFlags::ALL, &f6[..14 + 41]), None);
        assert!(hash_frame(&key, HashFlags::ALL, &f6[..14 + 42]).is_some());
    }

    /// The definition read literally: for input bit i set, XOR key bits [i, i + 32).
    fn naive(key: &[u8], input: &[u8]) -> u32 {
        let key_bit = |i: usize| key.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
        let mut h = 0u32;
        for i in 0..input.len() * 8 {
            if input[i / 8] & (0x80 >> (i % 8)) != 0 {
                h ^= (0..32).fold(0u32, |w, j| (w << 1) | u32::from(key_bit(i + j)));
            }
        }
        h
    }

    #[test]
    fn equals_the_definition() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as u8
        };
        for n in 0..300 {
            let key: Vec<u8> = (0..n % 41).map(|_| next()).collect();
            let input: Vec<u8> = (0..n % 40).map(|_| next()).collect();
            assert_eq!(
                toeplitz(&key, &input),
                naive(&key, &input),
                "key {key:?} input {input:?}"
            );
        }
    }

    #[test]
    fn short_keys_are_zero_padded() {
        let input = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let short = &MS_KEY[..10];
        let padded = ToeplitzKey::from_slice(short).unwrap();
        assert_eq!(toeplitz(short, &input), padded.hash(&input));
        assert_eq!(ToeplitzKey::ZERO.hash(&input), 0);
        assert_eq!(ToeplitzKey::from_slice(&[0u8; 41]), None);
        assert_eq!(toeplitz(&[], &input), 0);
    }

    #[test]
    fn hash_types_and_extra() {
        assert_eq!(HashType::Ipv4.flag(), XEN_NETIF_CTRL_HASH_TYPE_IPV4);
        assert_eq!(HashType::Ipv4Tcp.flag(), XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
        assert_eq!(HashType::Ipv6.flag(), XEN_NETIF_CTRL_HASH_TYPE_IPV6);
        assert_eq!(HashType::Ipv6Tcp.flag(), XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP);
        assert_eq!(HashFlags::ALL.bits(), 0xF);
        assert_eq!(HashFlags::from_bits(0x10), None);
        let e = FrameHash {
            value: 0x51ccc178,
            ty: HashType::Ipv4Tcp,
        }
        .to_extra();
        assert_eq!(e.to_bytes(), [4, 0, 1, 1, 0x78, 0xc1, 0xcc, 0x51]);
        let h = e.as_hash();
        assert_eq!((h.hash_type, h.algorithm), (1, 1));
        assert_eq!(u32::from_le_bytes(h.value), 0x51ccc178);
    }

    #[test]
    fn symmetric_hash_is_direction_independent() {
        for (src, dst, sp, dp, ..) in V4_VECTORS {
            for proto in [TCP, UDP, 1] {
                let a = v4_frame(None, proto, src, dst, sp, dp, 0, 0);
                let b = v4_frame(Some(3), proto, dst, src, dp, sp, 0, 0);
                assert_eq!(symmetric_hash(&a), symmetric_hash(&b));
                assert!(symmetric_hash(&a).is_some());
            }
        }
        for (src, dst, sp, dp, ..) in v6_vectors() {
            let a = v6_frame(None, TCP, src, dst, sp, dp, &[]);
            let b = v6_frame(None, TCP, dst, src, dp, sp, &[]);
            assert_eq!(symmetric_hash(&a), symmetric_hash(&b));
        }
        // Ports matter: two connections between the same hosts usually differ.
        let (src, dst, ..) = V4_VECTORS[0];
        let distinct: std::collections::HashSet<_> = (0..64u16)
            .map(|p| symmetric_hash(&v4_frame(None, TCP, src, dst, 1000 + p, 80, 0, 0)))
            .collect();
        assert!(distinct.len() > 60);
        assert_eq!(symmetric_hash(&eth(None, 0x0806)), None);
    }

    #[test]
    fn never_panics_on_garbage() {
        let key = ToeplitzKey::from_slice(&MS_KEY).unwrap();
        let (src, dst, sp, dp, ..) = V4_VECTORS[0];
        let (s6, d6, ..) = v6_vectors()[0];
        let seeds = [
            v4_frame(Some(1), TCP, src, dst, sp, dp, 0, 8),
            v6_frame(None, TCP, s6, d6, sp, dp, &[(0, 8), (44, 8)]),
            v6_frame(Some(2), UDP, s6, d6, sp, dp, &[(60, 16)]),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for i in 0..60_000 {
            let mut f = seeds[i % seeds.len()].clone();
            for b in f.iter_mut() {
                if next() % 16 == 0 {
                    *b = next() as u8;
                }
            }
            let len = next() as usize % (f.len() + 1);
            f.truncate(len);
            let flags = HashFlags::from_bits(next() as u32 & 0xF).unwrap();
            let _ = hash_frame(&key, flags, &f);
            let _ = symmetric_hash(&f);
        }
    }
}
