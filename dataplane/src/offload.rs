//! Checksum and segmentation offload between Xen's metadata and DPDK mbufs.
//!
//! Guest -> wire: a guest packet may leave its L4 checksum to the backend (`csum_blank`) or
//! be a TSO super-frame (a GSO extra with the MSS). Toward a port that can do it, the mbuf
//! gets DPDK's TX offload flags and lengths; toward one that cannot, netbackd finishes the
//! work in software with DPDK's own helpers (`rte_gso_segment`, `rte_ipv4/6_udptcp_cksum_mbuf`),
//! never with hand-written checksum loops.
//!
//! Either way the L4 checksum field is first rewritten with the pseudo-header sum DPDK wants
//! (`rte_ipv4/6_phdr_cksum`: with the length for checksum offload, without it for TSO), so
//! whatever a guest left in that field does not matter. A GSO packet without `csum_blank`
//! (a buggy frontend) is treated as `csum_blank` and counted, as Linux does
//! (`rx_gso_checksum_fixup`).
//!
//! Wire -> guest: a port that validated the L4 checksum lets the guest skip it
//! (`NETRXF_data_validated`).
use crate::netif::{NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED};
use crate::txparse::Gso;
use crate::wire::{self, Headers, WireError, L3, L4};
use pmd::sys;
use pmd::{Mbuf, Mempool, PmdError, PortInfo};
use thiserror::Error;

/// Why a packet could not be prepared (counted per reason; the packet is dropped).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    #[error("headers: {0}")]
    Headers(#[from] WireError),
    #[error("checksum offload asked for a non-TCP/UDP packet (protocol {0})")]
    NotTcpUdp(u8),
    #[error("GSO type does not match the packet (TCPv4/TCPv6 vs IP version or non-TCP)")]
    GsoMismatch,
    #[error("software segmentation failed (mbuf pools exhausted or bad packet): {0}")]
    Segmentation(i32),
}

/// Drivers whose advertised TSO netbackd does not use. net_tap (22.11) segments with
/// librte_gso (TCP over IPv4 only) and refuses any TSO packet whose *frame* segment
/// (headers + MSS, L2 included) exceeds the *L3* MTU: every full-size segment of a Linux
/// guest (MSS 1448 + 66 bytes of headers) would be dropped. Software GSO serves it instead.
const TSO_UNUSABLE_DRIVERS: &[&str] = &["net_tap"];

/// What the port can finish itself (its capabilities as configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxCaps {
    pub ipv4_cksum: bool,
    pub tcp_cksum: bool,
    pub udp_cksum: bool,
    /// TSO for TCP over IPv4.
    pub tso: bool,
    /// TSO for TCP over IPv6 (one DPDK capability bit covers both; kept apart so a port
    /// that manages only one can be described).
    pub tso6: bool,
}

impl TxCaps {
    /// The offloads of `info` that netbackd uses.
    pub fn from_port(info: &PortInfo) -> TxCaps {
        let tso =
            info.has_tx(sys::NBD_TX_OFFLOAD_TCP_TSO) && info.has_tx(sys::NBD_TX_OFFLOAD_MULTI_SEGS);
        TxCaps {
            ipv4_cksum: info.has_tx(sys::NBD_TX_OFFLOAD_IPV4_CKSUM),
            tcp_cksum: info.has_tx(sys::NBD_TX_OFFLOAD_TCP_CKSUM),
            udp_cksum: info.has_tx(sys::NBD_TX_OFFLOAD_UDP_CKSUM),
            tso: tso && !TSO_UNUSABLE_DRIVERS.contains(&info.driver.as_str()),
            tso6: tso && !TSO_UNUSABLE_DRIVERS.contains(&info.driver.as_str()),
        }
    }

    /// The `txmode.offloads` bits to enable on a port for these capabilities.
    pub fn port_offloads(&self) -> u64 {
        let mut v = 0u64;
        for (on, bit) in [
            (self.ipv4_cksum, sys::NBD_TX_OFFLOAD_IPV4_CKSUM),
            (self.tcp_cksum, sys::NBD_TX_OFFLOAD_TCP_CKSUM),
            (self.udp_cksum, sys::NBD_TX_OFFLOAD_UDP_CKSUM),
            (self.tso || self.tso6, sys::NBD_TX_OFFLOAD_TCP_TSO),
            (self.tso || self.tso6, sys::NBD_TX_OFFLOAD_MULTI_SEGS),
        ] {
            if on {
                v |= u64::from(bit);
            }
        }
        v
    }
}

/// Counters of the offload stage (plain fields: owned by one lcore, flushed by it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    /// GSO packets that came without `csum_blank` and were fixed up.
    pub gso_checksum_fixup: u64,
    /// Packets segmented in software.
    pub sw_gso_packets: u64,
    /// Segments produced by software segmentation.
    pub sw_gso_segments: u64,
    /// Checksums completed in software.
    pub sw_checksums: u64,
    /// Packets handed to the port with hardware offload flags.
    pub hw_offloaded: u64,
}

/// Pools for software segmentation: direct mbufs carry each segment's header copy,
/// indirect ones (no data room) point into the original payload.
pub struct SoftGso {
    direct: Mempool,
    indirect: Mempool,
}

impl SoftGso {
    pub fn new(name: &str, n: u32, socket: i32) -> Result<SoftGso, PmdError> {
        Ok(SoftGso {
            direct: Mempool::new(&format!("{name}_gso_d"), n, 64, 256, socket)?,
            indirect: Mempool::new(&format!("{name}_gso_i"), n, 64, 0, socket)?,
        })
    }

    /// Mbufs of both pools in use (0 when idle: nothing leaked).
    pub fn in_use(&self) -> u32 {
        self.direct.in_use() + self.indirect.in_use()
    }
}

/// Most segments one 64 KiB TSO frame can become (MSS >= 536 in practice; 128 covers MSS
/// down to 512 with headers).
const MAX_SEGMENTS: usize = 128;

/// Pointer to the IP header in the first segment (which `wire` checked holds all headers).
fn l3_ptr(m: &mut Mbuf, h: &Headers) -> *mut u8 {
    m.data_mut()[usize::from(h.l2_len)..].as_mut_ptr()
}

/// Writes `v` (as returned by DPDK: already in header byte order) at `at` in the first segment.
fn put_csum(m: &mut Mbuf, at: usize, v: u16) {
    m.data_mut()[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

/// DPDK's pseudo-header checksum for the packet, honouring TSO (length excluded) or not.
fn phdr_cksum(m: &mut Mbuf, h: &Headers, ol_flags: u64) -> u16 {
    let p = l3_ptr(m, h);
    // SAFETY: `p` points at a complete IPv4 or IPv6 header inside the first segment (wire
    // parsed it from these bytes); the DPDK header structs are packed (alignment 1).
    unsafe {
        match h.l3 {
            L3::V4 { .. } => sys::nbd_ipv4_phdr_cksum(p as *const sys::rte_ipv4_hdr, ol_flags),
            L3::V6 { .. } => sys::nbd_ipv6_phdr_cksum(p as *const sys::rte_ipv6_hdr, ol_flags),
        }
    }
}

/// Computes the full L4 checksum of the (possibly chained) packet in software and stores
/// it; the field must hold zero before. Also refreshes the IPv4 header checksum.
fn sw_l4_checksum(m: &mut Mbuf, h: &Headers) {
    let at = h.csum_field().expect("TCP/UDP checked by caller");
    put_csum(m, at, 0);
    let l4_off = h.l4_offset() as u16;
    let p = l3_ptr(m, h);
    // SAFETY: `p` is the packet's IP header in the first segment of `m`; the _mbuf variants
    // read the L4 data across all segments of the chain, which we own.
    let mut c = unsafe {
        match h.l3 {
            L3::V4 { .. } => {
                sys::nbd_ipv4_udptcp_cksum_mbuf(m.as_ptr(), p as *const sys::rte_ipv4_hdr, l4_off)
            }
            L3::V6 { .. } => {
                sys::nbd_ipv6_udptcp_cksum_mbuf(m.as_ptr(), p as *const sys::rte_ipv6_hdr, l4_off)
            }
        }
    };
    if c == 0 && h.l4 == L4::Udp {
        c = 0xFFFF; // a computed UDP zero is sent as all ones (RFC 768)
    }
    put_csum(m, at, c);
    if let L3::V4 { .. } = h.l3 {
        let ip = usize::from(h.l2_len);
        put_csum(m, ip + 10, 0);
        let p = l3_ptr(m, h);
        // SAFETY: as above, a complete IPv4 header.
        let ipc = unsafe { sys::nbd_ipv4_cksum(p as *const sys::rte_ipv4_hdr) };
        put_csum(m, ip + 10, ipc);
    }
}

/// Whether a guest packet needs `prepare_guest_tx` at all: one without a blank checksum
/// or GSO goes to the port as it is (the engine skips the call for those). `#[inline]`:
/// the generic engine is compiled in the calling crate and asks this per packet.
#[inline]
pub fn needs_finishing(csum_blank: bool, gso: Option<Gso>) -> bool {
    csum_blank || gso.is_some()
}

/// Prepares one guest packet for a port. On success the packet (or its segments) is
/// appended to `out`; on error it is freed and the reason returned for counting.
pub fn prepare_guest_tx(
    mut m: Mbuf,
    csum_blank: bool,
    gso: Option<Gso>,
    caps: &TxCaps,
    soft: &SoftGso,
    out: &mut Vec<Mbuf>,
    ctr: &mut OffloadCounters,
) -> Result<(), OffloadError> {
    if !needs_finishing(csum_blank, gso) {
        out.push(m);
        return Ok(());
    }
    let h = wire::parse(m.data())?;
    let proto = match h.l4 {
        L4::Tcp | L4::Udp => h.l4,
        L4::Other(p) => return Err(OffloadError::NotTcpUdp(p)),
    };
    if gso.is_some() && !csum_blank {
        ctr.gso_checksum_fixup += 1;
    }
    let v4 = matches!(h.l3, L3::V4 { .. });
    let mut ol = if v4 {
        sys::RTE_MBUF_F_TX_IPV4
    } else {
        sys::RTE_MBUF_F_TX_IPV6
    };
    let mss = match gso {
        Some(Gso::TcpV4 { mss }) if v4 && proto == L4::Tcp => Some(mss),
        Some(Gso::TcpV6 { mss }) if !v4 && proto == L4::Tcp => Some(mss),
        Some(_) => return Err(OffloadError::GsoMismatch),
        None => None,
    };
    // A "GSO" packet that already fits one segment needs only its checksum.
    let payload = m.pkt_len() as usize - h.header_len();
    let mss = mss.filter(|mss| payload > usize::from(*mss));
    m.set_tx_offload(h.l2_len, h.l3_len, h.l4_len, mss.unwrap_or(0));
    let at = h.csum_field().expect("TCP/UDP");

    if let Some(mss) = mss {
        ol |= sys::RTE_MBUF_F_TX_TCP_SEG | sys::RTE_MBUF_F_TX_TCP_CKSUM;
        if v4 {
            ol |= sys::RTE_MBUF_F_TX_IP_CKSUM;
        }
        m.set_ol_flags(ol);
        if (v4 && caps.tso) || (!v4 && caps.tso6) {
            let c = phdr_cksum(&mut m, &h, ol);
            put_csum(&mut m, at, c);
            ctr.hw_offloaded += 1;
            out.push(m);
            return Ok(());
        }
        return match h.l3 {
            L3::V4 { .. } => sw_segment(m, &h, mss, soft, out, ctr),
            // DPDK 22.11's librte_gso has no TCP/IPv6 (only TCP/UDP over IPv4 and tunnels).
            L3::V6 { .. } => sw_segment_tcp6(m, &h, mss, out, ctr),
        };
    }

    let (flag, hw) = match proto {
        L4::Tcp => (sys::RTE_MBUF_F_TX_TCP_CKSUM, caps.tcp_cksum),
        _ => (sys::RTE_MBUF_F_TX_UDP_CKSUM, caps.udp_cksum),
    };
    if hw {
        ol |= flag;
        m.set_ol_flags(ol);
        let c = phdr_cksum(&mut m, &h, ol);
        put_csum(&mut m, at, c);
        ctr.hw_offloaded += 1;
    } else {
        m.set_ol_flags(0);
        sw_l4_checksum(&mut m, &h);
        ctr.sw_checksums += 1;
    }
    out.push(m);
    Ok(())
}

fn sw_segment(
    m: Mbuf,
    h: &Headers,
    mss: u16,
    soft: &SoftGso,
    out: &mut Vec<Mbuf>,
    ctr: &mut OffloadCounters,
) -> Result<(), OffloadError> {
    let ctx = sys::rte_gso_ctx {
        direct_pool: soft.direct.as_ptr(),
        indirect_pool: soft.indirect.as_ptr(),
        flag: 0,
        gso_types: sys::NBD_TX_OFFLOAD_TCP_TSO,
        gso_size: (h.header_len() + usize::from(mss)).min(usize::from(u16::MAX)) as u16,
    };
    let mut segs: [*mut sys::rte_mbuf; MAX_SEGMENTS] = [std::ptr::null_mut(); MAX_SEGMENTS];
    // SAFETY: `m` is a valid owned packet with TX_TCP_SEG/IPV4|IPV6 flags and lengths set as
    // rte_gso requires; `segs` has MAX_SEGMENTS slots. rte_gso never frees the input.
    let n =
        unsafe { sys::rte_gso_segment(m.as_ptr(), &ctx, segs.as_mut_ptr(), MAX_SEGMENTS as u16) };
    if n <= 0 {
        // The input is still ours: dropping `m` frees it.
        return Err(OffloadError::Segmentation(n));
    }
    ctr.sw_gso_packets += 1;
    for p in &segs[..n as usize] {
        // SAFETY: rte_gso returned n valid segments that the caller owns.
        let mut s = unsafe { Mbuf::from_raw(std::ptr::NonNull::new(*p).expect("rte_gso output")) };
        s.set_ol_flags(0);
        // Each segment's headers are a copy in its first (direct) mbuf.
        sw_l4_checksum(&mut s, h);
        ctr.sw_gso_segments += 1;
        ctr.sw_checksums += 1;
        out.push(s);
    }
    // The segments hold references to the input's payload (indirect mbufs); dropping our
    // reference now lets the data go when the last segment is freed.
    drop(m);
    Ok(())
}

/// Finishes in software whatever offload a packet still carries (TSO -> segments with
/// their checksums; pending L4 checksum -> computed), for a destination that can't take
/// it, e.g. a frontend that did not negotiate that GSO type. Appends the result to `out`.
pub fn finish_in_software(
    mut m: Mbuf,
    soft: &SoftGso,
    out: &mut Vec<Mbuf>,
    ctr: &mut OffloadCounters,
) -> Result<(), OffloadError> {
    let ol = m.ol_flags();
    let pending =
        sys::RTE_MBUF_F_TX_TCP_SEG | sys::RTE_MBUF_F_TX_TCP_CKSUM | sys::RTE_MBUF_F_TX_UDP_CKSUM;
    if ol & pending == 0 {
        out.push(m);
        return Ok(());
    }
    let h = wire::parse(m.data())?;
    if ol & sys::RTE_MBUF_F_TX_TCP_SEG != 0 {
        let mss = ((m.tx_offload() >> 24) & 0xffff) as u16;
        if mss == 0 || h.l4 != L4::Tcp {
            return Err(OffloadError::GsoMismatch);
        }
        return match h.l3 {
            L3::V4 { .. } => sw_segment(m, &h, mss, soft, out, ctr),
            L3::V6 { .. } => sw_segment_tcp6(m, &h, mss, out, ctr),
        };
    }
    if matches!(h.l4, L4::Other(_)) {
        return Err(OffloadError::NotTcpUdp(0));
    }
    m.set_ol_flags(0);
    sw_l4_checksum(&mut m, &h);
    ctr.sw_checksums += 1;
    out.push(m);
    Ok(())
}

/// TCP/IPv6 segmentation for ports without TSO, since DPDK 22.11 cannot: each segment is
/// the headers plus the next `mss` payload bytes (plain copies), with the IPv6 payload
/// length, TCP sequence number and flags adjusted (FIN/PSH only on the last segment, CWR
/// only on the first), then its checksum computed by DPDK.
fn sw_segment_tcp6(
    m: Mbuf,
    h: &Headers,
    mss: u16,
    out: &mut Vec<Mbuf>,
    ctr: &mut OffloadCounters,
) -> Result<(), OffloadError> {
    let hlen = h.header_len();
    let total = m.pkt_len() as usize;
    let mut hdr = m.data()[..hlen].to_vec();
    let l3 = usize::from(h.l2_len);
    let l4 = h.l4_offset();
    let seq0 = u32::from_be_bytes([hdr[l4 + 4], hdr[l4 + 5], hdr[l4 + 6], hdr[l4 + 7]]);
    let flags0 = hdr[l4 + 13];
    let ext_len = usize::from(h.l3_len) - 40; // extension headers count in payload length
    let mut chunk = vec![0u8; usize::from(mss)];
    let first_out = out.len();
    let mut off = hlen;
    while off < total {
        let len = usize::from(mss).min(total - off);
        let last = off + len == total;
        let plen = (ext_len + usize::from(h.l4_len) + len) as u16;
        hdr[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        let seq = seq0.wrapping_add((off - hlen) as u32);
        hdr[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags0;
        if !last {
            fl &= !(0x01 | 0x08); // FIN, PSH
        }
        if off != hlen {
            fl &= !0x80; // CWR
        }
        hdr[l4 + 13] = fl;
        let built = (|| {
            let mut s = m
                .alloc_like()
                .map_err(|_| OffloadError::Segmentation(-12))?;
            s.extend_from_slice(&hdr)
                .map_err(|_| OffloadError::Segmentation(-12))?;
            if !m.read_at(off, &mut chunk[..len]) {
                return Err(OffloadError::Segmentation(-22));
            }
            s.extend_from_slice(&chunk[..len])
                .map_err(|_| OffloadError::Segmentation(-12))?;
            Ok(s)
        })();
        match built {
            Ok(mut s) => {
                sw_l4_checksum(&mut s, h);
                out.push(s);
            }
            Err(e) => {
                // All or nothing: free the segments made so far.
                out.truncate(first_out);
                return Err(e);
            }
        }
        off += len;
    }
    let n = (out.len() - first_out) as u64;
    ctr.sw_gso_packets += 1;
    ctr.sw_gso_segments += n;
    ctr.sw_checksums += n;
    Ok(())
}

/// `NETRXF_*` checksum flags for a packet from a port: validated by the NIC, or still
/// carrying a pending checksum (from another vif's csum_blank packet).
pub fn guest_rx_csum_flags(ol_flags: u64) -> u16 {
    let tx_pending = sys::RTE_MBUF_F_TX_TCP_CKSUM | sys::RTE_MBUF_F_TX_UDP_CKSUM;
    if ol_flags & tx_pending != 0 {
        return NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
    }
    let l4 = ol_flags & u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_MASK);
    if l4 == u64::from(sys::RTE_MBUF_F_RX_L4_CKSUM_GOOD) {
        NETRXF_DATA_VALIDATED
    } else {
        0
    }
}
