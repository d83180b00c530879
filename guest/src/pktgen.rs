//! Packet generator and sink for benchmarks: fixed-size Ethernet/IPv4/UDP frames carrying a
//! 64-bit sequence number, sent as fast as the link takes them, and a sink that checks and
//! counts them (bad checksums, gaps, reordering).
use crate::stack::FrameLink;
use std::time::{Duration, Instant};

/// Smallest and largest frames (without FCS): up to a jumbo frame of MTU 9000.
pub const MIN_FRAME: usize = 60;
pub const MAX_FRAME: usize = 9014;
const HDR: usize = 14 + 20 + 8;

/// RFC 1071 one's-complement sum (the guest's own stack work, not the backend's).
pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Completes the L4 checksum of a frame received with `NETRXF_csum_blank`: its field
/// holds the pseudo-header sum (Linux's CHECKSUM_PARTIAL), so the checksum over the L4
/// bytes as they are is the final one. Frames that are not TCP or UDP over IPv4/IPv6
/// (without extension headers) are left as they are.
pub fn complete_partial_checksum(f: &mut [u8]) {
    let mut l3 = 14;
    if f.len() >= 18 && f[12..14] == [0x81, 0x00] {
        l3 = 18;
    }
    if f.len() < l3 + 40 {
        return;
    }
    let (l4, proto) = match f[l3 - 2..l3] {
        [0x08, 0x00] => (l3 + usize::from(f[l3] & 15) * 4, f[l3 + 9]),
        [0x86, 0xdd] => (l3 + 40, f[l3 + 6]),
        _ => return,
    };
    let at = match proto {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => return,
    };
    if f.len() < at + 2 {
        return;
    }
    let mut c = csum(&f[l4..], 0);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Builds the frames.
#[derive(Clone, Debug)]
pub struct PktGen {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub frame_len: usize,
    pub seq: u64,
}

impl PktGen {
    /// Writes the next frame into `f` (resized to `frame_len`).
    pub fn next_frame(&mut self, f: &mut Vec<u8>) {
        let len = self.frame_len.clamp(MIN_FRAME, MAX_FRAME);
        f.clear();
        f.resize(len, 0);
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (len - 14) as u16;
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[4..6].copy_from_slice(&(self.seq as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src_ip);
        ip[16..20].copy_from_slice(&self.dst_ip);
        let c = csum(ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp_len = ip_len - 20;
        f[34..36].copy_from_slice(&self.sport.to_be_bytes());
        f[36..38].copy_from_slice(&self.dport.to_be_bytes());
        f[38..40].copy_from_slice(&udp_len.to_be_bytes());
        let seq = self.seq;
        f[HDR..HDR + 8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in f[HDR + 8..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(i as u8);
        }
        let c = udp_csum(f);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        self.seq += 1;
    }
}

fn udp_csum(f: &[u8]) -> u16 {
    let udp = &f[34..];
    let mut pseudo = 0u32;
    for c in f[26..34].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    pseudo += 17 + udp.len() as u32;
    let mut zeroed = udp.to_vec();
    zeroed[6] = 0;
    zeroed[7] = 0;
    match csum(&zeroed, pseudo) {
        0 => 0xffff,
        c => c,
    }
}

/// Counters of a sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub packets: u64,
    pub bytes: u64,
    pub bad: u64,
    pub lost: u64,
    pub reordered: u64,
}

/// Checks and counts generated frames.
#[derive(Clone, Debug, Default)]
pub struct Sink {
    pub stats: SinkStats,
    next: u64,
}

impl Sink {
    /// Accounts one received frame; false if it is not a valid generated frame.
    pub fn accept(&mut self, f: &[u8]) -> bool {
        let ok = f.len() >= MIN_FRAME
            && f[12..14] == [0x08, 0x00]
            && f[23] == 17
            && csum(&f[14..34], 0) == 0
            && usize::from(u16::from_be_bytes([f[16], f[17]])) + 14 == f.len()
            && udp_csum(f) == u16::from_be_bytes([f[40], f[41]]);
        if !ok {
            self.stats.bad += 1;
            return false;
        }
        let seq = u64::from_be_bytes(f[HDR..HDR + 8].try_into().expect("8 bytes"));
        if f[HDR + 8..]
            .iter()
            .enumerate()
            .any(|(i, b)| *b != (seq as u8).wrapping_add(i as u8))
        {
            self.stats.bad += 1;
            return false;
        }
        if seq >= self.next {
            self.stats.lost += seq - self.next;
            self.next = seq + 1;
        } else {
            self.stats.reordered += 1;
            self.stats.lost = self.stats.lost.saturating_sub(1);
        }
        self.stats.packets += 1;
        self.stats.bytes += f.len() as u64;
        true
    }
}

/// Sends frames as fast as `link` takes them for `dur` (or `count` frames); returns
/// (sent, back-pressure retries).
pub fn run_gen(link: &mut impl FrameLink, g: &mut PktGen, dur: Duration, count: u64) -> (u64, u64) {
    let t = Instant::now();
    let mut f = Vec::with_capacity(MAX_FRAME);
    let (mut sent, mut full) = (0u64, 0u64);
    g.next_frame(&mut f);
    while sent < count && t.elapsed() < dur {
        if link.send(&f) {
            sent += 1;
            g.next_frame(&mut f);
        } else {
            full += 1;
            let _ = link.recv(); // lets a netfront reap its TX responses
        }
    }
    (sent, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(len: usize) -> PktGen {
        PktGen {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            sport: 9,
            dport: 9,
            frame_len: len,
            seq: 0,
        }
    }

    #[test]
    fn frames_check_out_and_sink_counts() {
        for len in [60, 61, 1514] {
            let mut g = gen(len);
            let mut s = Sink::default();
            let mut f = Vec::new();
            let frames: Vec<Vec<u8>> = (0..5)
                .map(|_| {
                    g.next_frame(&mut f);
                    f.clone()
                })
                .collect();
            assert!(frames.iter().all(|f| f.len() == len));
            // Checksums verify independently: a header with its checksum sums to 0.
            assert_eq!(csum(&frames[0][14..34], 0), 0);
            assert!(s.accept(&frames[0]));
            assert!(s.accept(&frames[2])); // frame 1 missing
            assert_eq!(s.stats.lost, 1);
            assert!(s.accept(&frames[1])); // late
            assert_eq!((s.stats.reordered, s.stats.lost), (1, 0));
            let mut bad = frames[3].clone();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            assert!(!s.accept(&bad));
            assert_eq!(s.stats.bad, 1);
            assert!(s.accept(&frames[3]) && s.accept(&frames[4]));
            assert_eq!(s.stats.packets, 5);
        }
    }
}
