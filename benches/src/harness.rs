//! netbackd's side of the `pktgen` harness: one measured point = one engine group polled on
//! the calling (main) lcore, V simulated guests on EAL worker lcore 1 (one loop serving
//! them all round-robin, each vif its own domain) generating with `Netfront::send_burst`
//! and sinking with `Netfront::sink_rx`, and a wire port. Only the engine's public API is
//! used (`Group::new`, `add_queue`, `poll`, the counters).
use dataplane::engine::{EngineConfig, Group, GroupCounters, GroupIo, QueueCounters};
use dataplane::netif::XEN_NETIF_GSO_TYPE_TCPV4;
use dataplane::offload::{SoftGso, TxCaps};
use dataplane::switch::SwitchConfig;
use guest::TxMeta;
use pmd::{Mempool, Port};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xen::sim::SimHost;
use xen::EventChannel;

/// The MAC the wire side is known by (the destination of guest TX frames).
pub const WIRE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// Set by the SIGINT handler: every loop stops and the run unwinds through its clean-up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Payload length of the GSO point's TCP frame: the frame is 65535 bytes, the most a
/// netif TX request describes.
pub const GSO_FRAME: usize = 0xFFFF;
pub const GSO_MSS: u16 = 1448;

/// Traffic direction of a point, from the guests' point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Guest -> port.
    Tx,
    /// Port -> guest.
    Rx,
    /// Vif 2k -> vif 2k+1 in the one group.
    G2g,
    /// Tx and Rx at once on every vif.
    Bidir,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
            Direction::G2g => "g2g",
            Direction::Bidir => "bidir",
        }
    }
    pub fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "tx" => Direction::Tx,
            "rx" => Direction::Rx,
            "g2g" => Direction::G2g,
            "bidir" => Direction::Bidir,
            _ => return None,
        })
    }
}

/// Frame size of a point: bytes without FCS (as testpmd's `--txpkts`), a 64 KiB TCPv4
/// frame with the GSO extra, or a TCP stream of full-size (1514-byte) segments with
/// advancing sequence numbers and correct checksums (what GRO coalesces; g2g only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameSize {
    Bytes(usize),
    Gso,
    Tcp,
}

impl FrameSize {
    /// Frame bytes.
    pub fn bytes(self) -> usize {
        match self {
            FrameSize::Bytes(n) => n,
            FrameSize::Gso => GSO_FRAME,
            FrameSize::Tcp => TCP_SEGMENT,
        }
    }
    pub fn label(self) -> String {
        match self {
            FrameSize::Bytes(n) => n.to_string(),
            FrameSize::Gso => "gso64k".into(),
            FrameSize::Tcp => "tcp1514".into(),
        }
    }
    pub fn parse(s: &str) -> Option<FrameSize> {
        match s {
            "gso" | "gso64k" => Some(FrameSize::Gso),
            "tcp" | "tcp1514" => Some(FrameSize::Tcp),
            n => n
                .parse()
                .ok()
                .filter(|n| (60..=9000).contains(n))
                .map(FrameSize::Bytes),
        }
    }
}

/// Point definition.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PointSpec {
    pub dir: Direction,
    pub size: FrameSize,
    pub vifs: usize,
    /// Groups sharing one L2 domain (`connect_groups`), all polled by the one group
    /// thread in turn: the cost of the work, not parallel speed-up (2 CPUs here).
    pub groups: usize,
    /// g2g: percent of the vif pairs whose two vifs are in different groups.
    pub cross: u8,
    /// `EngineConfig::gro` of the groups.
    pub gro: bool,
}

/// Timing of one measurement.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub interval: Duration,
    pub intervals: usize,
}

/// Ethernet + IPv4 + UDP frame of `len` bytes (IPv4 header checksum set, UDP checksum 0).
pub fn udp_frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let len = len.max(60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14).min(0xFFFF) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let c = guest::pktgen::csum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&9u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// Frame bytes of a [`FrameSize::Tcp`] segment: Ethernet, IPv4, TCP without options and
/// 1460 bytes of payload.
pub const TCP_SEGMENT: usize = 1514;
const TCP_MSS: u32 = 1460;

/// The first segment of a TCP stream (ACK, DF, checksums set).
pub fn tcp_segment(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = tcp_frame(dst, src, TCP_SEGMENT);
    f[47] = 0x10; // ACK only
    let c = tcp_checksum(&f);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

/// The TCP checksum of an untagged IPv4 frame with a 20-byte IP header.
fn tcp_checksum(f: &[u8]) -> u16 {
    let mut l4 = f[34..].to_vec();
    l4[16] = 0;
    l4[17] = 0;
    let mut pseudo = 0u32;
    for w in f[26..34].chunks(2) {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += 6 + l4.len() as u32;
    guest::pktgen::csum(&l4, pseudo)
}

/// RFC 1624: a checksum `c` after one 16-bit word changed from `old` to `new`.
fn csum_replace(c: u16, old: u16, new: u16) -> u16 {
    let mut s = u32::from(!c) + u32::from(!old) + u32::from(new);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Turns a stream segment into the next one: sequence number + MSS, IP id + 1, both
/// checksums updated incrementally (the sender's cost stays small: it is the instrument).
pub fn next_segment(f: &mut [u8]) {
    let rd = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
    let nseq = seq.wrapping_add(TCP_MSS);
    let mut tc = rd(f, 50);
    tc = csum_replace(tc, (seq >> 16) as u16, (nseq >> 16) as u16);
    tc = csum_replace(tc, seq as u16, nseq as u16);
    f[38..42].copy_from_slice(&nseq.to_be_bytes());
    f[50..52].copy_from_slice(&tc.to_be_bytes());
    let id = rd(f, 18);
    let ic = csum_replace(rd(f, 24), id, id.wrapping_add(1));
    f[18..20].copy_from_slice(&id.wrapping_add(1).to_be_bytes());
    f[24..26].copy_from_slice(&ic.to_be_bytes());
}

/// Ethernet + IPv4 + TCP frame of `len` bytes for GSO (checksums left to the backend:
/// sent with csum_blank).
pub fn tcp_frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[20] = 0x40; // DF
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    let c = guest::pktgen::csum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..54].copy_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    f
}

fn vif_mac(domid: u16) -> [u8; 6] {
    [0x00, 0x16, 0x3e, 0x7f, (domid >> 8) as u8, domid as u8]
}

/// A pcap file holding one frame (used to teach the switch the wire's MAC: a `net_pcap`
/// port replays it once, and drops what it is sent when it has no TX side).
pub fn write_teach_pcap(path: &std::path::Path) -> std::io::Result<()> {
    write_pcap(path, &[udp_frame([0xff; 6], WIRE_MAC, 60)])
}

/// Segments in the wire's TCP stream file: 1.5 MB of one flow, replayed in a loop by
/// `net_pcap`'s `infinite_rx` (at each wrap the sequence number jumps back: GRO starts a
/// new frame there, as it would after a gap).
pub const TCP_STREAM_SEGMENTS: usize = 1024;

/// Writes the wire's TCP stream for guest-RX `tcp` points: [`TCP_STREAM_SEGMENTS`]
/// consecutive full-size segments from the wire's MAC to an unknown one (flooded to the
/// vif, as the null wire's frames are).
pub fn write_tcp_stream_pcap(path: &std::path::Path) -> std::io::Result<()> {
    let mut f = tcp_segment([0x02, 0, 0, 0, 0, 0x77], WIRE_MAC);
    let frames: Vec<Vec<u8>> = (0..TCP_STREAM_SEGMENTS)
        .map(|_| {
            let v = f.clone();
            next_segment(&mut f);
            v
        })
        .collect();
    write_pcap(path, &frames)
}

/// A classic pcap file (microsecond timestamps, Ethernet) of `frames`.
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&65535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for frame in frames {
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        b.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        b.extend_from_slice(frame);
    }
    std::fs::write(path, b)
}

/// Counter sums at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub at: Option<Instant>,
    pub tsc: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub notifications: u64,
    pub drops: BTreeMap<&'static str, u64>,
    pub iterations: u64,
    pub busy_iterations: u64,
    pub grant_copy_calls: u64,
    pub grant_copy_ops: u64,
    pub batched_packets: u64,
    pub port_tx_full: u64,
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub handoffs: u64,
    pub handoff_ring_full: u64,
    /// Each queue's guest-TX and guest-RX packets.
    pub queue_packets: Vec<(u64, u64)>,
}

fn snapshot(qs: &[Arc<QueueCounters>], gs: &[Arc<GroupCounters>]) -> Snapshot {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut s = Snapshot {
        at: Some(Instant::now()),
        tsc: pmd::tsc::cycles(),
        ..Default::default()
    };
    for g in gs {
        s.iterations += l(&g.iterations);
        s.busy_iterations += l(&g.busy_iterations);
        s.grant_copy_calls += l(&g.grant_copy_calls);
        s.grant_copy_ops += l(&g.grant_copy_ops);
        s.batched_packets += l(&g.batched_packets);
        s.port_tx_full += l(&g.port_tx_full);
        s.busy_cycles += l(&g.busy_cycles);
        s.idle_cycles += l(&g.idle_cycles);
        s.handoffs += l(&g.handoffs);
        s.handoff_ring_full += l(&g.handoff_ring_full);
    }
    for q in qs {
        s.queue_packets.push((l(&q.tx_packets), l(&q.rx_packets)));
        s.tx_packets += l(&q.tx_packets);
        s.tx_bytes += l(&q.tx_bytes);
        s.rx_packets += l(&q.rx_packets);
        s.rx_bytes += l(&q.rx_bytes);
        s.notifications += l(&q.notifications);
        for (name, c) in [
            ("tx_drop_runt", &q.tx_drop_runt),
            ("tx_drop_too_many_slots", &q.tx_drop_too_many_slots),
            ("tx_drop_frag_overflow", &q.tx_drop_frag_overflow),
            ("tx_drop_copy_error", &q.tx_drop_copy_error),
            ("tx_drop_no_mbuf", &q.tx_drop_no_mbuf),
            ("tx_drop_offload", &q.tx_drop_offload),
            ("tx_drop_switch", &q.tx_drop_switch),
            ("rx_drop_backlog_full", &q.rx_drop_backlog_full),
            ("rx_drop_stalled", &q.rx_drop_stalled),
            ("rx_drop_copy_error", &q.rx_drop_copy_error),
            ("rx_drop_too_big", &q.rx_drop_too_big),
            ("rogue", &q.rogue),
        ] {
            *s.drops.entry(name).or_default() += l(c);
        }
    }
    s
}

impl Snapshot {
    /// Packets and bytes that count for `dir`.
    fn counted(&self, dir: Direction) -> (u64, u64) {
        match dir {
            Direction::Tx => (self.tx_packets, self.tx_bytes),
            Direction::Rx | Direction::G2g => (self.rx_packets, self.rx_bytes),
            Direction::Bidir => (
                self.tx_packets + self.rx_packets,
                self.tx_bytes + self.rx_bytes,
            ),
        }
    }
}

/// What the guests counted themselves (summed over vifs).
#[derive(Debug, Default)]
pub struct GuestTotals {
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_errors: AtomicU64,
}

/// The result of one netbackd measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Packets per second of each measured interval.
    pub pps: Vec<f64>,
    /// Bits per second (frame bytes, no FCS) of each interval.
    pub bps: Vec<f64>,
    pub packets: u64,
    pub bytes: u64,
    pub cycles_per_packet: f64,
    /// TSC cycles of the group's busy iterations per packet: the engine's own cost per
    /// packet, whatever the guests offered.
    pub busy_cycles_per_packet: f64,
    pub tsc_hz: f64,
    /// Idle iterations / iterations.
    pub idle_share: f64,
    /// Cycles in idle iterations / cycles in iterations: the time the group waited.
    pub idle_time_share: f64,
    pub copy_ops_per_call: f64,
    pub mean_batch: f64,
    pub notifications_per_packet: f64,
    /// Drops by reason over the measured intervals (engine queue counters, port_tx_full).
    pub drops: BTreeMap<String, u64>,
    /// Whole run (warm-up included, after the drain): what netbackd counted.
    pub total_tx_packets: u64,
    pub total_rx_packets: u64,
    pub total_tx_dropped: u64,
    pub total_rx_dropped: u64,
    /// Queues the engine disabled as rogue over the whole run (should be 0).
    pub total_rogue: u64,
    /// What the guests counted over the whole run.
    pub guest_tx_packets: u64,
    pub guest_rx_packets: u64,
    pub guest_rx_errors: u64,
    /// Frames handed between groups in the measured intervals (when there are several).
    pub handoffs: u64,
    /// Each group's packets per second over the measured intervals, counted as the point
    /// counts them (guest TX, guest RX, or both) on the queues the group runs.
    pub group_pps: Vec<f64>,
}

/// Host, pool and domain numbering shared by all points of a run.
pub struct Bench {
    pub host: SimHost,
    pub pool: Arc<Mempool>,
    next_domid: u16,
    groups: u32,
}

impl Bench {
    pub fn new(host: SimHost, pool: Arc<Mempool>) -> Bench {
        Bench {
            host,
            pool,
            next_domid: 100,
            groups: 0,
        }
    }

    /// Ends the bench, returning the host (to stop it after the ports and pool are gone).
    pub fn into_host(self) -> SimHost {
        self.host
    }

    /// Runs one point against `port` (already started). `progress` gets the fraction done.
    pub fn run_point(
        &mut self,
        spec: PointSpec,
        port: &Arc<Port>,
        timing: Timing,
        progress: &mut dyn FnMut(f64),
    ) -> anyhow::Result<Measured> {
        let vifs = match spec.dir {
            Direction::G2g => spec.vifs.max(2) & !1,
            _ => spec.vifs.max(1),
        };
        let h = &self.host;
        let mut domids = Vec::new();
        for _ in 0..vifs {
            let d = self.next_domid;
            self.next_domid += 1;
            h.add_domain(d, &format!("pktgen{d}"), 1024, 1024)?;
            domids.push(d);
        }
        let result = self.run_point_on(spec, port, timing, progress, &domids);
        for d in domids {
            let _ = self.host.remove_domain(d);
        }
        result
    }

    fn run_point_on(
        &mut self,
        spec: PointSpec,
        port: &Arc<Port>,
        timing: Timing,
        progress: &mut dyn FnMut(f64),
        domids: &[u16],
    ) -> anyhow::Result<Measured> {
        let h = &self.host;
        let ng = spec.groups.max(1);
        let mut gs = Vec::new();
        for _ in 0..ng {
            self.groups += 1;
            // Every group on port queue 0: one thread polls them all in turn.
            let io = GroupIo {
                pool: self.pool.clone(),
                port: port.clone(),
                port_queue: 0,
                caps: TxCaps::default(),
                soft: SoftGso::new(&format!("pg{}", self.groups), 2047, -1)?,
            };
            gs.push(Group::new(
                EngineConfig {
                    gro: spec.gro,
                    ..Default::default()
                },
                h.grants(0),
                h.evtchn(0)?,
                io,
                SwitchConfig::default(),
            ));
        }
        let handles = dataplane::engine::connect_groups(&mut gs, dataplane::engine::HANDOFF_RING)?;
        let gc: Vec<_> = gs.iter().map(|g| g.counters.clone()).collect();
        // g2g pair k (vifs 2k, 2k+1) is split over two groups when k < cross_pairs;
        // otherwise both its vifs are in group k % ng. Other directions: vif i in i % ng.
        let pairs = domids.len() / 2;
        let cross_pairs = (pairs * usize::from(spec.cross)).div_ceil(100);
        let group_of = |i: usize| match spec.dir {
            Direction::G2g if ng > 1 && i % 2 == 1 && i / 2 < cross_pairs => (i / 2 + 1) % ng,
            Direction::G2g => (i / 2) % ng,
            _ => i % ng,
        };
        let mut guests = Vec::new();
        let mut qcs = Vec::new();
        // dom0's event-channel ports of this point, released after it (a long run attaches
        // more vifs than dom0 has ports).
        let mut ports = Vec::new();
        for (i, &d) in domids.iter().enumerate() {
            let (nf, setup, ctr) = guest::harness::attach(h, d, 0, vif_mac(d));
            ports.extend([setup.evtchn_tx, setup.evtchn_rx]);
            handles[group_of(i)].add_queue(setup);
            qcs.push(ctr);
            let len = spec.size.bytes();
            let tx = match spec.dir {
                Direction::Tx | Direction::Bidir => Some(WIRE_MAC),
                Direction::G2g if i % 2 == 0 => Some(vif_mac(domids[i + 1])),
                _ => None,
            }
            .map(|dst| match spec.size {
                FrameSize::Bytes(_) => (udp_frame(dst, vif_mac(d), len), TxMeta::default(), false),
                FrameSize::Gso => (
                    tcp_frame(dst, vif_mac(d), len),
                    TxMeta {
                        csum_blank: true,
                        gso: Some((GSO_MSS, XEN_NETIF_GSO_TYPE_TCPV4)),
                        slot_size: 4096,
                        ..Default::default()
                    },
                    false,
                ),
                FrameSize::Tcp => (
                    tcp_segment(dst, vif_mac(d)),
                    TxMeta {
                        slot_size: 4096,
                        ..Default::default()
                    },
                    true,
                ),
            });
            guests.push((nf, tx));
        }
        for g in gs.iter_mut() {
            g.poll(); // applies the placements
        }
        let s0 = snapshot(&qcs, &gc);
        let totals = Arc::new(GuestTotals::default());
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(None::<String>));
        let worker = *pmd::lcore::workers()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no EAL worker lcore (use -l 0,1)"))?;
        {
            let (stop, totals, errors) = (stop.clone(), totals.clone(), errors.clone());
            pmd::lcore::launch(worker, move || {
                guest_loop(guests, &stop, &totals, &errors);
                0
            })?;
        }
        // The guests are running: from here on every exit path stops and joins them.
        let queue_group: Vec<usize> = (0..domids.len()).map(group_of).collect();
        let res = measure(&mut gs, &qcs, &queue_group, &gc, spec.dir, timing, progress);
        stop.store(true, Ordering::Relaxed);
        // Drain: keep polling so that what is in flight completes and is counted.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            poll_all(&mut gs);
        }
        pmd::lcore::wait(worker);
        // The guests are gone: poll until everything they queued is done (idle for a
        // while), bounded.
        let (t, mut idle) = (Instant::now(), 0);
        while idle < 1000 && t.elapsed() < Duration::from_secs(2) {
            idle = if poll_all(&mut gs) == 0 { idle + 1 } else { 0 };
        }
        if let Some(e) = errors.lock().expect("not poisoned").take() {
            anyhow::bail!("guest: {e}");
        }
        let (mut m, s_end) = (res?, snapshot(&qcs, &gc));
        let tx_dropped: u64 = s_end
            .drops
            .iter()
            .filter(|(k, _)| k.starts_with("tx_"))
            .map(|(k, v)| v - s0.drops[k])
            .sum::<u64>()
            + (s_end.port_tx_full - s0.port_tx_full);
        let rx_dropped: u64 = s_end
            .drops
            .iter()
            .filter(|(k, _)| k.starts_with("rx_"))
            .map(|(k, v)| v - s0.drops[k])
            .sum();
        m.total_tx_packets = s_end.tx_packets - s0.tx_packets;
        m.total_rx_packets = s_end.rx_packets - s0.rx_packets;
        m.total_tx_dropped = tx_dropped;
        m.total_rx_dropped = rx_dropped;
        m.total_rogue = s_end.drops["rogue"] - s0.drops["rogue"];
        m.guest_tx_packets = totals.tx_packets.load(Ordering::Relaxed);
        m.guest_rx_packets = totals.rx_packets.load(Ordering::Relaxed);
        m.guest_rx_errors = totals.rx_errors.load(Ordering::Relaxed);
        drop(gs);
        let mut ev = h.evtchn(0)?;
        for p in ports {
            ev.unbind(p)?;
        }
        Ok(m)
    }
}

/// Each guest, with what it sends: a frame, its metadata, and whether it is the template
/// of a TCP stream (each packet the next segment) rather than sent as it is.
type GuestSet = Vec<(guest::Netfront, Option<(Vec<u8>, TxMeta, bool)>)>;

/// The guests' loop on the worker lcore: each vif in turn fills its TX ring with its frame
/// (if it sends) and sinks its RX ring (every vif, so none stalls on flooded frames).
fn guest_loop(
    mut guests: GuestSet,
    stop: &AtomicBool,
    totals: &GuestTotals,
    errors: &Mutex<Option<String>>,
) {
    let (mut tx, mut rx, mut rxb, mut rxe) = (0u64, 0u64, 0u64, 0u64);
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        for (nf, frame) in guests.iter_mut() {
            if let Some((f, meta, stream)) = frame {
                let sent = if *stream {
                    nf.send_stream(0, f, *meta, usize::MAX, next_segment)
                } else {
                    nf.send_burst(0, f, *meta, usize::MAX)
                };
                match sent {
                    Ok(k) => tx += k as u64,
                    Err(e) => {
                        *errors.lock().expect("not poisoned") = Some(e.to_string());
                        return;
                    }
                }
            }
            match nf.sink_rx(0) {
                Ok((p, b, e)) => {
                    rx += p;
                    rxb += b;
                    rxe += e;
                }
                Err(e) => {
                    *errors.lock().expect("not poisoned") = Some(e.to_string());
                    return;
                }
            }
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) {
            totals.tx_packets.store(tx, Ordering::Relaxed);
            totals.rx_packets.store(rx, Ordering::Relaxed);
        }
    }
    // Last responses and packets (the group drains for a while after `stop`).
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(20) {
        for (nf, _) in guests.iter_mut() {
            let _ = nf.reap_tx_count(0);
            if let Ok((p, b, e)) = nf.sink_rx(0) {
                rx += p;
                rxb += b;
                rxe += e;
            }
        }
    }
    totals.tx_packets.store(tx, Ordering::Relaxed);
    totals.rx_packets.store(rx, Ordering::Relaxed);
    totals.rx_bytes.store(rxb, Ordering::Relaxed);
    totals.rx_errors.store(rxe, Ordering::Relaxed);
}

/// One iteration of every group; the work they did.
fn poll_all(gs: &mut [Group<xen::sim::SimGrant, xen::sim::SimEvtchn>]) -> usize {
    gs.iter_mut().map(|g| g.poll()).sum()
}

/// Polls the groups through warm-up and the measured intervals (TSC and counters sampled
/// at each boundary).
fn measure(
    gs: &mut [Group<xen::sim::SimGrant, xen::sim::SimEvtchn>],
    qcs: &[Arc<QueueCounters>],
    queue_group: &[usize],
    gc: &[Arc<GroupCounters>],
    dir: Direction,
    timing: Timing,
    progress: &mut dyn FnMut(f64),
) -> anyhow::Result<Measured> {
    let total = timing.warmup + timing.interval * timing.intervals as u32;
    let t0 = Instant::now();
    let mut run_until = |until: Instant| -> anyhow::Result<()> {
        loop {
            for _ in 0..32 {
                poll_all(gs);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                anyhow::bail!("interrupted");
            }
        }
    };
    run_until(t0 + timing.warmup)?;
    progress(timing.warmup.as_secs_f64() / total.as_secs_f64());
    let mut snaps = vec![snapshot(qcs, gc)];
    for i in 1..=timing.intervals {
        run_until(t0 + timing.warmup + timing.interval * i as u32)?;
        snaps.push(snapshot(qcs, gc));
        progress((timing.warmup + timing.interval * i as u32).as_secs_f64() / total.as_secs_f64());
    }
    let (first, last) = (&snaps[0], &snaps[snaps.len() - 1]);
    let mut pps = Vec::new();
    let mut bps = Vec::new();
    for w in snaps.windows(2) {
        let dt = (w[1].at.expect("set") - w[0].at.expect("set")).as_secs_f64();
        let (p0, b0) = w[0].counted(dir);
        let (p1, b1) = w[1].counted(dir);
        pps.push((p1 - p0) as f64 / dt);
        bps.push((b1 - b0) as f64 * 8.0 / dt);
    }
    let (p0, b0) = first.counted(dir);
    let (p1, b1) = last.counted(dir);
    let packets = p1 - p0;
    let dt = (last.at.expect("set") - first.at.expect("set")).as_secs_f64();
    let cycles = last.tsc - first.tsc;
    let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut drops: BTreeMap<String, u64> = last
        .drops
        .iter()
        .map(|(k, v)| (k.to_string(), v - first.drops[k]))
        .collect();
    drops.insert(
        "port_tx_full".into(),
        last.port_tx_full - first.port_tx_full,
    );
    drops.insert(
        "handoff_ring_full".into(),
        last.handoff_ring_full - first.handoff_ring_full,
    );
    let iters = last.iterations - first.iterations;
    let busy = last.busy_iterations - first.busy_iterations;
    Ok(Measured {
        pps,
        bps,
        packets,
        bytes: b1 - b0,
        cycles_per_packet: per(cycles, packets),
        busy_cycles_per_packet: per(last.busy_cycles - first.busy_cycles, packets),
        tsc_hz: cycles as f64 / dt,
        idle_share: 1.0 - per(busy, iters),
        idle_time_share: per(
            last.idle_cycles - first.idle_cycles,
            (last.idle_cycles - first.idle_cycles) + (last.busy_cycles - first.busy_cycles),
        ),
        copy_ops_per_call: per(
            last.grant_copy_ops - first.grant_copy_ops,
            last.grant_copy_calls - first.grant_copy_calls,
        ),
        mean_batch: per(last.batched_packets - first.batched_packets, busy),
        notifications_per_packet: per(last.notifications - first.notifications, packets),
        drops,
        total_tx_packets: 0,
        total_rx_packets: 0,
        total_tx_dropped: 0,
        total_rx_dropped: 0,
        total_rogue: 0,
        guest_tx_packets: 0,
        guest_rx_packets: 0,
        guest_rx_errors: 0,
        handoffs: last.handoffs - first.handoffs,
        group_pps: {
            let mut per = vec![0u64; gc.len()];
            for ((l, f), &g) in last
                .queue_packets
                .iter()
                .zip(&first.queue_packets)
                .zip(queue_group)
            {
                let (tx, rx) = (l.0 - f.0, l.1 - f.1);
                per[g.min(gc.len() - 1)] += match dir {
                    Direction::Tx => tx,
                    Direction::Rx | Direction::G2g => rx,
                    Direction::Bidir => tx + rx,
                };
            }
            per.iter().map(|&n| n as f64 / dt).collect()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_segments_keep_correct_checksums() {
        let mut f = tcp_segment([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.len(), TCP_SEGMENT);
        for k in 0..70_000u32 {
            if k % 9973 == 0 {
                let ip = guest::pktgen::csum(&f[14..34], 0);
                assert_eq!(ip, 0, "IP header checksum at segment {k}");
                let want = tcp_checksum(&f);
                assert_eq!(u16::from_be_bytes([f[50], f[51]]), want, "segment {k}");
                let seq = u32::from_be_bytes([f[38], f[39], f[40], f[41]]);
                assert_eq!(seq, 1u32.wrapping_add(k.wrapping_mul(TCP_MSS)));
            }
            next_segment(&mut f);
        }
    }
}
