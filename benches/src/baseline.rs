//! Baselines for the throughput harness: DPDK's own vhost-user path (two `dpdk-testpmd`s, one
//! with `net_vhost`, one with `net_virtio_user`), one core's memcpy over the same buffer
//! footprint, and a `dpdk-testpmd` memif client as the wire-side generator/sink.
//!
//! **Frame length convention**: `frame_len` is the length of the Ethernet frame in the mbuf,
//! without FCS (virtual devices carry none): "64 B" is `--txpkts=64`, "1518 B" is
//! `--txpkts=1518`. netbackd's harness uses the same byte counts.
//!
//! **Memory**: every testpmd runs with `--no-huge -m 256 --single-file-segments` (plus
//! `--no-pci --no-shconf`, a unique `--file-prefix nbd-bl-<pid>-<tag>-...` and
//! `--total-num-mbufs=8192`). Under `--no-huge`, `--single-file-segments` makes EAL back its
//! heap with one memfd, which is what `net_virtio_user` passes to the vhost-user server
//! (without it virtio_user cannot share its memory and vhost sees nothing); memif creates its
//! own memfd regions. No hugepages, no hugetlbfs files; the runtime directory
//! `/var/run/dpdk/<prefix>` EAL leaves behind is removed after each run. With
//! [`Memory::Huge`] the vhost-user pair runs on 2 MiB hugepages instead (`--in-memory
//! --single-file-segments -m 256`: memfd-backed hugepage segments, no hugetlbfs mount, the
//! memory an HVM/PVH dom0's DPDK runs on); memif testpmds stay on `--no-huge`.
//!
//! testpmd runs non-interactively with `--stats-period=1` and is stopped with SIGINT; rates are
//! the `Rx-pps:`/`Tx-pps:` lines it prints every stats period, totals its final "Accumulated
//! forward statistics" block. testpmd computes each rate over the time since its previous
//! report (clock_gettime), so it is exact for that interval, but the interval is only nominally
//! 1 s: the main lcore shares its CPU with the busy-polling forwarding lcore, and on a loaded
//! machine reports were seen 2 s and more apart. A "second" below means one such report.
//!
//! Clean-up: every testpmd is stopped (SIGINT, SIGKILL after 10 s) and its runtime directory
//! and socket file removed when its handle drops, also on error. The two vhost-user testpmds
//! also get SIGINT if the calling thread dies (PR_SET_PDEATHSIG); a [`MemifPeer`] does not (it
//! may be stopped from another thread), so a harness killed by a signal leaves it running.
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::testpmd_rx_pps;

/// Direction from the guest's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Dir {
    /// Guest transmits: vhost dequeue.
    GuestTx,
    /// Guest receives: vhost enqueue.
    GuestRx,
}

/// The memory DPDK processes and the memcpy baseline run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Memory {
    /// 4 KiB pages (`--no-huge -m N` for EAL): works anywhere, as a PV dom0 (which has no
    /// hugepages) and the tests run DPDK.
    #[default]
    NoHuge,
    /// 2 MiB hugepages (`--in-memory -m N` for EAL, `MAP_HUGETLB` for memcpy): what DPDK runs
    /// on in an HVM/PVH dom0. They must be reserved first (`vm.nr_hugepages`).
    Huge,
}

/// 2 MiB hugepage size.
pub const HUGEPAGE: usize = 2 << 20;

impl Memory {
    /// What a report calls it.
    pub fn label(self) -> &'static str {
        match self {
            Memory::NoHuge => "4 KiB pages (--no-huge)",
            Memory::Huge => "2 MiB hugepages",
        }
    }

    /// EAL's memory arguments for `mb` megabytes.
    pub fn eal_args(self, mb: u32) -> Vec<String> {
        let m = mb.to_string();
        match self {
            Memory::NoHuge => vec!["--no-huge".into(), "-m".into(), m],
            Memory::Huge => vec!["--in-memory".into(), "-m".into(), m],
        }
    }
}

/// Free 2 MiB hugepages (`HugePages_Free` of /proc/meminfo; 0 when it cannot be read).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Fails with what to do unless `mb` megabytes of 2 MiB hugepages are free.
pub fn ensure_hugepages(mb: u64) -> anyhow::Result<()> {
    let need = mb.div_ceil((HUGEPAGE >> 20) as u64);
    let free = free_hugepages();
    anyhow::ensure!(
        free >= need,
        "hugepage memory needs {need} free 2 MiB hugepages, {free} are free: reserve them \
         (echo {need} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, or more if \
         others use some) or run without it"
    );
    Ok(())
}

/// CPU ids the two testpmds are pinned to.
#[derive(Clone, Copy, Debug)]
pub struct TestpmdCpus {
    /// The `net_vhost` (host side) testpmd.
    pub host: usize,
    /// The `net_virtio_user` (guest side) testpmd.
    pub guest: usize,
}

/// Result of one vhost-user baseline run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BaselineRun {
    /// Per-second packet rates at the receiving side, after warm-up.
    pub pps: Vec<f64>,
    /// Per-second packet rates the sending side reported over the whole run (including
    /// start-up and warm-up; for information).
    pub tx_pps: Vec<f64>,
    /// Packets the sending testpmd transmitted in total (its final TX-packets).
    pub tx_packets: u64,
    /// Packets the receiving testpmd received in total (its final RX-packets).
    pub rx_packets: u64,
    /// Packets the sender's tx_burst did not take (ring full), in total.
    pub tx_dropped: u64,
}

/// Port totals of one testpmd, from its final "Accumulated forward statistics" block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestpmdTotals {
    /// RX-packets.
    pub rx_packets: u64,
    /// RX-dropped (missed by the device).
    pub rx_dropped: u64,
    /// TX-packets.
    pub tx_packets: u64,
    /// TX-dropped (not taken by tx_burst).
    pub tx_dropped: u64,
}

/// Parses the last "Accumulated forward statistics" block testpmd prints when it stops.
pub fn testpmd_totals(output: &str) -> Option<TestpmdTotals> {
    let start = output.rfind("Accumulated forward statistics")?;
    let mut t = TestpmdTotals::default();
    let (mut rx, mut tx) = (false, false);
    for l in output[start..].lines().skip(1).take(4) {
        if let Some(p) = field(l, "RX-packets:") {
            t.rx_packets = p;
            t.rx_dropped = field(l, "RX-dropped:")?;
            rx = true;
        } else if let Some(p) = field(l, "TX-packets:") {
            t.tx_packets = p;
            t.tx_dropped = field(l, "TX-dropped:")?;
            tx = true;
        }
    }
    (rx && tx).then_some(t)
}

/// Extracts the `Tx-pps:` values testpmd prints with `--stats-period`.
pub fn testpmd_tx_pps(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|l| field(l, "Tx-pps:").map(|v| v as f64))
        .collect()
}

/// The largest `RX-packets:`/`TX-packets:` counters in testpmd's per-second "NIC statistics"
/// blocks (rx, tx). memif zeroes its counters when the peer disconnects, so the side that
/// stays up prints 0 in its final totals; this still has what it counted before.
pub fn testpmd_nic_max(output: &str) -> (u64, u64) {
    testpmd_nic_series(output)
        .into_iter()
        .fold((0, 0), |(a, b), (r, t)| (a.max(r), b.max(t)))
}

/// The (`RX-packets:`, `TX-packets:`) counters of each per-second "NIC statistics" block, in
/// order.
pub fn testpmd_nic_series(output: &str) -> Vec<(u64, u64)> {
    let mut in_nic = false;
    let mut v = Vec::new();
    for l in output.lines() {
        if l.contains("NIC statistics for port") {
            in_nic = true;
            v.push((0, 0));
        } else if l.contains("############################") {
            in_nic = false;
        } else if in_nic {
            let last = v.last_mut().expect("pushed at block start");
            if let Some(x) = field(l, "RX-packets:") {
                last.0 = x;
            }
            if let Some(x) = field(l, "TX-packets:") {
                last.1 = x;
            }
        }
    }
    v
}

/// The number after `key` on `line`, if any.
fn field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)?;
    line[i + key.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples from the first non-zero one on, the first (partial second) dropped.
fn from_traffic(samples: &[f64]) -> &[f64] {
    match samples.iter().position(|&v| v > 0.0) {
        Some(i) => &samples[i + 1..],
        None => &[],
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name part: pid, tag (sanitised), sequence number.
fn unique(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    format!(
        "{}-{tag}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The EAL runtime directory of a file prefix.
fn runtime_dir(prefix: &str) -> PathBuf {
    Path::new("/var/run/dpdk").join(prefix)
}

/// Lines a child printed (stdout and stderr interleaved as they arrived).
type Lines = Arc<Mutex<Vec<String>>>;

/// One running `dpdk-testpmd`. Dropping it stops it (SIGINT, then SIGKILL) and removes its
/// runtime directory and socket file.
struct Testpmd {
    child: Option<Child>,
    prefix: String,
    socket: Option<PathBuf>,
    lines: Lines,
    readers: Vec<JoinHandle<()>>,
}

fn reader(src: impl Read + Send + 'static, lines: Lines) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for l in BufReader::new(src).lines() {
            let Ok(l) = l else { break };
            lines.lock().expect("reader").push(l);
        }
    })
}

/// Sends `sig` to a child we own.
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (the Child is
    // still held), so the pid cannot have been reused.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// A testpmd's EAL file prefix: unique per process and call (`nbd-bl-<pid>-<tag>-<n>-<name>`).
fn prefix(name: &str, tag: &str) -> String {
    format!("nbd-bl-{}-{name}", unique(tag))
}

impl Testpmd {
    /// Starts testpmd on CPU `cpu` (main and forwarding lcore both there) with one vdev, EAL
    /// file prefix `prefix` (see [`prefix`]).
    /// `socket` is the vdev's socket file: removed before start and after stop.
    /// `die_with_thread`: PR_SET_PDEATHSIG (SIGINT) tied to the calling thread; only for
    /// children reaped by the same thread.
    fn spawn(
        die_with_thread: bool,
        prefix: String,
        cpu: usize,
        vdev: &str,
        socket: Option<&Path>,
        app: &[String],
        mem: Memory,
    ) -> anyhow::Result<Testpmd> {
        if let Some(s) = socket {
            let _ = std::fs::remove_file(s);
        }
        let mut cmd = Command::new("dpdk-testpmd");
        cmd.args(eal_args(cpu, &prefix, vdev, mem))
            .arg("--")
            .args(app)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The vhost-user client writes to the socket after the server went away: with SIGPIPE
        // at its default (which Rust restores for children) that kills it before it prints
        // its totals.
        // With `die_with_thread`, it gets SIGINT when the spawning thread dies (the harness
        // killed without running Drop).
        // SAFETY: the closure runs in the forked child before exec and only calls signal(2) and
        // prctl(2), which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                if die_with_thread {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                }
                Ok(())
            })
        };
        let mut child = cmd
            .spawn()
            .context("starting dpdk-testpmd (Debian package dpdk)")?;
        let lines: Lines = Arc::default();
        let readers = vec![
            reader(child.stdout.take().expect("piped"), lines.clone()),
            reader(child.stderr.take().expect("piped"), lines.clone()),
        ];
        Ok(Testpmd {
            child: Some(child),
            prefix,
            socket: socket.map(Path::to_path_buf),
            lines,
            readers,
        })
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    fn tail(&self) -> String {
        let l = self.lines.lock().expect("lines");
        l[l.len().saturating_sub(15)..].join("\n")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits until a line containing `what` was printed (or `cond` holds), failing if testpmd
    /// exits first or `timeout` passes.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn() -> bool,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + timeout;
        loop {
            if cond()
                || self
                    .lines
                    .lock()
                    .expect("lines")
                    .iter()
                    .any(|l| l.contains(what))
            {
                return Ok(());
            }
            if let Some(st) = self.exited() {
                bail!(
                    "testpmd {} exited ({st}) before '{what}':\n{}",
                    self.prefix,
                    self.tail()
                );
            }
            if Instant::now() > end {
                bail!(
                    "testpmd {} did not print '{what}' within {timeout:?}:\n{}",
                    self.prefix,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT, wait (SIGKILL after 10 s), clean up; returns everything it printed.
    fn stop(mut self) -> anyhow::Result<String> {
        let st = self.halt();
        let out = self.output();
        match st {
            Some(st) if st.success() => Ok(out),
            Some(st) => bail!("testpmd {} exited with {st}:\n{}", self.prefix, self.tail()),
            None => bail!("testpmd {} could not be waited for", self.prefix),
        }
    }

    fn halt(&mut self) -> Option<ExitStatus> {
        let mut st = None;
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                signal(&child, libc::SIGINT);
                // In case it was stopped (SIGSTOP) to let its peer drain.
                signal(&child, libc::SIGCONT);
            }
            let end = Instant::now() + Duration::from_secs(10);
            st = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                    Err(_) => break None,
                }
            };
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let _ = std::fs::remove_dir_all(runtime_dir(&self.prefix));
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        st
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.halt();
    }
}

/// testpmd's EAL arguments (see the module documentation).
fn eal_args(cpu: usize, prefix: &str, vdev: &str, mem: Memory) -> Vec<String> {
    let mut v = mem.eal_args(TESTPMD_MB);
    v.extend(
        [
            "--lcores",
            &format!("0@{cpu},1@{cpu}"),
            "--no-pci",
            "--single-file-segments",
            "--no-shconf",
            "--file-prefix",
            prefix,
            "--log-level",
            "*:notice",
            "--vdev",
            vdev,
        ]
        .map(String::from),
    );
    v
}

/// EAL memory of each testpmd, in megabytes.
pub const TESTPMD_MB: u32 = 256;

/// Ring size (descriptors) of every testpmd port and the vhost/virtio/memif rings.
pub const RING: u32 = 1024;

/// testpmd's application arguments: one forwarding core, `mode`, 1 s stats.
fn app_args(mode: &str, frame_len: usize, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--nb-cores=1".to_string(),
        format!("--forward-mode={mode}"),
        "--stats-period=1".into(),
        format!("--txd={RING}"),
        format!("--rxd={RING}"),
        "--burst=32".into(),
        "--total-num-mbufs=8192".into(),
    ]
    .to_vec();
    if mode == "txonly" {
        v.push(format!("--txpkts={frame_len}"));
    }
    v.extend_from_slice(extra);
    v
}

/// The line testpmd prints when forwarding has started.
const STARTED: &str = "start packet forwarding";

fn check_frame_len(frame_len: usize) -> anyhow::Result<()> {
    // testpmd's default mbuf data room is 2048 - 128 headroom.
    anyhow::ensure!(
        (60..=1920).contains(&frame_len),
        "frame length {frame_len} outside 60..=1920"
    );
    Ok(())
}

/// DPDK's vhost-user path: one dpdk-testpmd with `net_vhost` (host side, vhost-user server
/// socket) and one with `net_virtio_user` (guest side, client), each with ONE forwarding lcore
/// (`--lcores 0@N,1@N`: main and forwarding lcore on the same CPU N).
/// GuestRx = vhost enqueue: the vhost testpmd runs `--forward-mode=txonly`, the virtio_user one
/// `rxonly`. GuestTx = vhost dequeue: virtio_user txonly, vhost rxonly.
///
/// Runs until the receiving side has reported `warmup_secs + secs` seconds with traffic (plus
/// the first, partial, second, which is always dropped) and returns its per-second packet
/// rates after warm-up, plus both sides' totals (the sender is stopped first).
pub fn vhost_user(
    dir: Dir,
    frame_len: usize,
    warmup_secs: u64,
    secs: u64,
    cpus: &TestpmdCpus,
    tag: &str,
    mem: Memory,
) -> anyhow::Result<BaselineRun> {
    check_frame_len(frame_len)?;
    let sock = std::env::temp_dir().join(format!("nbd-bl-{}.vhost.sock", unique(tag)));
    let (host_mode, guest_mode) = match dir {
        Dir::GuestRx => ("txonly", "rxonly"),
        Dir::GuestTx => ("rxonly", "txonly"),
    };
    let mut host = Testpmd::spawn(
        true,
        prefix("vhost", tag),
        cpus.host,
        &format!("net_vhost0,iface={},queues=1,client=0", sock.display()),
        Some(&sock),
        &app_args(host_mode, frame_len, &[]),
        mem,
    )?;
    // The vhost-user server's socket exists once its port is probed.
    host.wait_for(STARTED, Duration::from_secs(60), || sock.exists())?;
    let mut guest = Testpmd::spawn(
        true,
        prefix("virtio", tag),
        cpus.guest,
        &format!(
            "net_virtio_user0,path={},queues=1,queue_size={RING}",
            sock.display()
        ),
        None,
        &app_args(guest_mode, frame_len, &[]),
        mem,
    )?;
    guest.wait_for(STARTED, Duration::from_secs(60), || false)?;

    let want = (warmup_secs + secs) as usize;
    let end = Instant::now() + Duration::from_secs(30 + 2 * (warmup_secs + secs));
    let (recv, send) = match dir {
        Dir::GuestTx => (&mut host, &mut guest),
        Dir::GuestRx => (&mut guest, &mut host),
    };
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if from_traffic(&testpmd_rx_pps(&recv.output())).len() >= want {
            break;
        }
        for t in [&mut *recv, &mut *send] {
            if let Some(st) = t.exited() {
                bail!("testpmd {} exited early ({st}):\n{}", t.prefix, t.tail());
            }
        }
        if Instant::now() > end {
            bail!(
                "no {want} s of traffic at the receiver in time; receiver:\n{}\nsender:\n{}",
                recv.tail(),
                send.tail()
            );
        }
    }
    let (recv, send) = match dir {
        Dir::GuestTx => (host, guest),
        Dir::GuestRx => (guest, host),
    };
    // Sender first, so the receiver has counted what crossed.
    let send_out = send.stop()?;
    std::thread::sleep(Duration::from_millis(100));
    let recv_out = recv.stop()?;
    let s = testpmd_totals(&send_out).context("sender printed no totals")?;
    let r = testpmd_totals(&recv_out).context("receiver printed no totals")?;
    let rx = testpmd_rx_pps(&recv_out);
    let rx = from_traffic(&rx);
    Ok(BaselineRun {
        pps: rx[warmup_secs as usize..want].to_vec(),
        tx_pps: testpmd_tx_pps(&send_out),
        tx_packets: s.tx_packets,
        rx_packets: r.rx_packets,
        tx_dropped: s.tx_dropped,
    })
}

/// An anonymous private mapping on 4 KiB pages or 2 MiB hugepages, unmapped on drop.
struct Area {
    ptr: *mut u8,
    len: usize,
}

impl Area {
    /// `len` bytes (rounded up to the page size), zeroed by the kernel.
    fn new(len: usize, mem: Memory) -> anyhow::Result<Area> {
        let (len, huge) = match mem {
            Memory::NoHuge => (len.next_multiple_of(4096), 0),
            Memory::Huge => (len.next_multiple_of(HUGEPAGE), libc::MAP_HUGETLB),
        };
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | huge,
                -1,
                0,
            )
        };
        anyhow::ensure!(
            p != libc::MAP_FAILED,
            "mapping {len} bytes for memcpy ({mem:?}): {}",
            std::io::Error::last_os_error()
        );
        Ok(Area { ptr: p.cast(), len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and lives as long as
        // self; &mut self makes the slice the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One core's memcpy for the same buffer footprint: copies `frame_len`-byte packets from a
/// source area of `footprint` bytes to a destination area of `footprint` bytes, walking through
/// both like a ring of buffers: slot `i` of each area starts at `i * stride`, where `stride` is
/// `frame_len` rounded up to 2 KiB (2 KiB-aligned slots, as mbuf data rooms are), on the
/// calling thread. Returns per-interval packet rates (`intervals` intervals of `interval` each).
/// Both areas are on `mem`'s pages (page-aligned) and touched before timing starts; fails
/// only when they cannot be mapped (no free hugepages).
pub fn memcpy_pps(
    frame_len: usize,
    footprint: usize,
    interval: Duration,
    intervals: usize,
    mem: Memory,
) -> anyhow::Result<Vec<f64>> {
    const SLOT: usize = 2048;
    let stride = frame_len.div_ceil(SLOT).max(1) * SLOT;
    let slots = (footprint / stride).max(1);
    let size = slots * stride;
    let mut src_area = Area::new(size, mem)?;
    let mut dst_area = Area::new(size, mem)?;
    let src = &mut src_area.bytes()[..size];
    for (i, b) in src.iter_mut().enumerate() {
        *b = i as u8;
    }
    let dst = &mut dst_area.bytes()[..size];
    dst.fill(1);
    const BATCH: usize = 32;
    let mut out = Vec::with_capacity(intervals);
    let mut i = 0usize;
    for _ in 0..intervals {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < interval {
            for _ in 0..BATCH {
                let off = i * stride;
                let s = &src[off..off + frame_len];
                let d = &mut dst[off..off + frame_len];
                d.copy_from_slice(s);
                std::hint::black_box(&mut *d);
                i += 1;
                if i == slots {
                    i = 0;
                }
            }
            n += BATCH as u64;
        }
        out.push(n as f64 / start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    Ok(out)
}

/// What a [`MemifPeer`] testpmd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemifMode {
    /// Generate `frame_len` frames (`--forward-mode=txonly`).
    Txonly,
    /// Count what arrives (`--forward-mode=rxonly`).
    Rxonly,
}

/// memif options shared by client and server: a regular (not abstract) socket file,
/// 2^10 = [`RING`] descriptors per ring, 2 KiB buffers.
fn memif_opts(socket: &Path) -> String {
    format!(
        "socket={},socket-abstract=no,rsize=10,bsize=2048",
        socket.display()
    )
}

/// The devargs netbackd's own process should use for the matching memif server port:
/// `net_memif<id>,role=server,socket=PATH,socket-abstract=no,rsize=10,bsize=2048`. `id` is the
/// vdev's number (the memif interface id stays 0, the client's default). The server creates
/// `socket` (a file, not an abstract socket) when its port is probed and removes it on close.
pub fn memif_server_devargs(socket: &Path, id: u32) -> String {
    format!("net_memif{id},role=server,{}", memif_opts(socket))
}

/// A real traffic generator/sink on the wire side: `dpdk-testpmd` in its own process as a
/// `net_memif` client connecting to the memif server port netbackd's process opened on
/// `socket` (see [`memif_server_devargs`]).
pub struct MemifPeer {
    tpmd: Testpmd,
    mode: MemifMode,
}

/// A [`MemifPeer`]'s port totals as testpmd printed them at exit, and the per-second rates it
/// reported.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PeerTotals {
    /// RX-packets.
    pub rx_packets: u64,
    /// TX-packets.
    pub tx_packets: u64,
    /// RX-dropped (missed).
    pub rx_dropped: u64,
    /// TX-dropped (ring full: tx_burst did not take them).
    pub tx_dropped: u64,
    /// Rx-pps (Rxonly) or Tx-pps (Txonly) per second, from the first second with traffic on,
    /// that partial first second dropped.
    pub pps: Vec<f64>,
    /// The largest RX-/TX-packets in the per-second NIC statistics (see [`testpmd_nic_max`]).
    pub nic_max: (u64, u64),
}

impl MemifPeer {
    /// Starts the client; returns once testpmd forwards. The server's socket must appear within
    /// 10 s (the memif client does not retry a failed connect).
    /// Txonly: `--forward-mode=txonly --txpkts=LEN --eth-peer=0,MAC` (txonly's default IPs).
    pub fn start(
        mode: MemifMode,
        socket: &Path,
        frame_len: usize,
        dst_mac: [u8; 6],
        cpu: usize,
        tag: &str,
    ) -> anyhow::Result<MemifPeer> {
        check_frame_len(frame_len)?;
        let end = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            anyhow::ensure!(
                Instant::now() < end,
                "memif server socket {} did not appear",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let m = dst_mac.map(|b| format!("{b:02x}")).join(":");
        let (fwd, extra) = match mode {
            MemifMode::Txonly => ("txonly", vec![format!("--eth-peer=0,{m}")]),
            MemifMode::Rxonly => ("rxonly", vec![]),
        };
        let mut tpmd = Testpmd::spawn(
            false,
            prefix("memif", tag),
            cpu,
            &format!("net_memif0,role=client,{}", memif_opts(socket)),
            None,
            &app_args(fwd, frame_len, &extra),
            Memory::NoHuge,
        )?;
        tpmd.wait_for(STARTED, Duration::from_secs(60), || false)?;
        Ok(MemifPeer { tpmd, mode })
    }

    /// The largest (RX-packets, TX-packets) in its per-second NIC statistics so far.
    pub fn nic_so_far(&self) -> (u64, u64) {
        testpmd_nic_max(&self.tpmd.output())
    }

    /// The testpmd's pid (e.g. to SIGSTOP a generator so the sink can drain).
    pub fn pid(&self) -> u32 {
        self.tpmd.child.as_ref().map_or(0, Child::id)
    }

    /// Stops testpmd (SIGINT so it cleans up), waits, and returns its port totals as it
    /// printed them at exit and the per-second rates it reported. Stop the peer before the
    /// server port goes away: memif zeroes a port's counters when its peer disconnects.
    pub fn stop(self) -> anyhow::Result<PeerTotals> {
        let out = self.tpmd.stop()?;
        let t = testpmd_totals(&out).context("memif testpmd printed no totals")?;
        let pps = match self.mode {
            MemifMode::Txonly => testpmd_tx_pps(&out),
            MemifMode::Rxonly => testpmd_rx_pps(&out),
        };
        Ok(PeerTotals {
            rx_packets: t.rx_packets,
            tx_packets: t.tx_packets,
            rx_dropped: t.rx_dropped,
            tx_dropped: t.tx_dropped,
            pps: from_traffic(&pps).to_vec(),
            nic_max: testpmd_nic_max(&out),
        })
    }
}

/// A testpmd memif *server* in rxonly, standing in for netbackd's port to check [`MemifPeer`]
/// without netbackd.
pub struct MemifSink {
    tpmd: Testpmd,
}

impl MemifSink {
    /// Starts `dpdk-testpmd` with [`memif_server_devargs`]`(socket, 0)` in rxonly on `cpu`;
    /// returns once the socket exists and it forwards.
    pub fn start(socket: &Path, cpu: usize, tag: &str) -> anyhow::Result<MemifSink> {
        let mut tpmd = Testpmd::spawn(
            false,
            prefix("memifsrv", tag),
            cpu,
            &memif_server_devargs(socket, 0),
            Some(socket),
            &app_args("rxonly", 64, &[]),
            Memory::NoHuge,
        )?;
        tpmd.wait_for(STARTED, Duration::from_secs(60), || false)?;
        let end = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            anyhow::ensure!(Instant::now() < end, "memif server made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(MemifSink { tpmd })
    }

    /// RX-packets in the latest per-second NIC statistics so far.
    pub fn rx_so_far(&self) -> u64 {
        testpmd_nic_max(&self.tpmd.output()).0
    }

    /// Once traffic has stopped (e.g. the generator SIGSTOPped): waits for two new reports
    /// with the same RX-packets (reports can be seconds apart on a loaded machine) and returns
    /// that count, or an error after `timeout`.
    pub fn wait_drained(&self, timeout: Duration) -> anyhow::Result<u64> {
        let n0 = testpmd_nic_series(&self.tpmd.output()).len();
        let end = Instant::now() + timeout;
        loop {
            let v = testpmd_nic_series(&self.tpmd.output());
            if v.len() >= n0 + 2 && v[v.len() - 1].0 == v[v.len() - 2].0 {
                return Ok(v[v.len() - 1].0);
            }
            anyhow::ensure!(Instant::now() < end, "memif server count not stable");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it; returns its totals (with `nic_max`: its final totals are zero if the client
    /// disconnected first).
    pub fn stop(self) -> anyhow::Result<PeerTotals> {
        let out = self.tpmd.stop()?;
        let t = testpmd_totals(&out).context("memif server printed no totals")?;
        Ok(PeerTotals {
            rx_packets: t.rx_packets,
            tx_packets: t.tx_packets,
            rx_dropped: t.rx_dropped,
            tx_dropped: t.tx_dropped,
            pps: from_traffic(&testpmd_rx_pps(&out)).to_vec(),
            nic_max: testpmd_nic_max(&out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real `dpdk-testpmd` (22.11) rxonly run on net_vhost, `--stats-period=1`.
    const VHOST_RX: &str = include_str!("../testdata/testpmd-vhost-rxonly.txt");
    /// The end of the matching virtio_user txonly run.
    const VIRTIO_TX: &str = include_str!("../testdata/testpmd-virtio-txonly.txt");
    /// A memif server (rxonly) whose client disconnected first.
    const MEMIF_SRV: &str = include_str!("../testdata/testpmd-memif-server.txt");
    /// Its client, txonly, stopped first.
    const MEMIF_CLI: &str = include_str!("../testdata/testpmd-memif-client.txt");

    #[test]
    fn parses_totals() {
        assert_eq!(
            testpmd_totals(VHOST_RX),
            Some(TestpmdTotals {
                rx_packets: 2859520,
                rx_dropped: 0,
                tx_packets: 0,
                tx_dropped: 0
            })
        );
        assert_eq!(
            testpmd_totals(VIRTIO_TX),
            Some(TestpmdTotals {
                rx_packets: 0,
                rx_dropped: 0,
                tx_packets: 2859520,
                tx_dropped: 36698272
            })
        );
        assert_eq!(
            testpmd_totals(MEMIF_CLI).map(|t| (t.tx_packets, t.tx_dropped)),
            Some((11084800, 49449056))
        );
        assert_eq!(testpmd_totals("RX-packets: 1 RX-dropped: 0"), None);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(
            testpmd_rx_pps(VHOST_RX),
            vec![0.0, 0.0, 0.0, 492932.0, 680672.0, 621974.0, 774466.0]
        );
        assert_eq!(
            from_traffic(&testpmd_rx_pps(VHOST_RX)),
            &[680672.0, 621974.0, 774466.0]
        );
        assert_eq!(testpmd_tx_pps(VHOST_RX), vec![0.0; 7]);
        assert_eq!(testpmd_tx_pps(VIRTIO_TX), vec![0.0, 687087.0, 567379.0]);
        assert_eq!(
            from_traffic(&testpmd_tx_pps(MEMIF_CLI)),
            &[2659352.0, 3000536.0]
        );
        assert_eq!(from_traffic(&[0.0, 0.0]), &[] as &[f64]);
    }

    #[test]
    fn memif_counters_survive_reset() {
        // The client disconnected first: the server's counters went to 0 below the snapshot
        // testpmd took at start, and its final totals wrapped.
        let t = testpmd_totals(MEMIF_SRV).expect("totals");
        assert_eq!(t.rx_packets, u64::MAX - 2047);
        assert_eq!(testpmd_nic_max(MEMIF_SRV), (11084800, 0));
        assert_eq!(testpmd_nic_max(MEMIF_CLI), (0, 8466112));
        assert_eq!(
            testpmd_nic_series(MEMIF_SRV),
            vec![(3072, 0), (2897568, 0), (5527232, 0), (11084800, 0), (0, 0)]
        );
    }

    #[test]
    fn devargs() {
        assert_eq!(
            memif_server_devargs(Path::new("/tmp/x.sock"), 1),
            "net_memif1,role=server,socket=/tmp/x.sock,socket-abstract=no,rsize=10,bsize=2048"
        );
    }

    #[test]
    fn memory_modes() {
        assert_eq!(Memory::NoHuge.eal_args(256), ["--no-huge", "-m", "256"]);
        assert_eq!(Memory::Huge.eal_args(1024), ["--in-memory", "-m", "1024"]);
        let a = eal_args(3, "p", "net_null0", Memory::Huge);
        assert!(a.windows(2).any(|w| w == ["--lcores", "0@3,1@3"]));
        assert!(!a.iter().any(|x| x == "--no-huge"));
        // More than any machine has: a clear error naming the knob, not a DPDK failure later.
        let e = ensure_hugepages(1 << 40).unwrap_err().to_string();
        assert!(e.contains("nr_hugepages"), "{e}");
    }

    #[test]
    fn memcpy_runs() {
        let v = memcpy_pps(64, 1 << 20, Duration::from_millis(5), 2, Memory::NoHuge).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|&r| r > 0.0));
    }

    /// Puts `nr_hugepages` back as it was when dropped.
    struct Reserve(u64);
    const NR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    impl Drop for Reserve {
        fn drop(&mut self) {
            let _ = std::fs::write(NR, self.0.to_string());
        }
    }

    /// memcpy on hugepages: runs with two reserved for it, fails (not panics) without.
    /// Reserving needs root (CI runs as root); without it the test says so and checks only
    /// the failure path.
    #[test]
    fn memcpy_on_hugepages() {
        let run = || memcpy_pps(1518, 1 << 20, Duration::from_millis(5), 2, Memory::Huge);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("memcpy_on_hugepages: not root, cannot reserve hugepages");
            if free_hugepages() == 0 {
                assert!(run().is_err());
            }
            return;
        }
        let before: u64 = std::fs::read_to_string(NR)
            .expect("hugepage sysfs")
            .trim()
            .parse()
            .expect("nr_hugepages");
        {
            let _restore = Reserve(before);
            // Two areas of 1 MiB, each rounded up to one 2 MiB page.
            std::fs::write(NR, (before + 2).to_string()).expect("reserving 2 hugepages");
            assert!(
                free_hugepages() >= 2,
                "the kernel gave fewer than 2 hugepages"
            );
            let v = run().expect("memcpy on 2 reserved hugepages");
            assert_eq!(v.len(), 2);
            assert!(v.iter().all(|&r| r > 0.0));
            assert!(free_hugepages() >= 2, "memcpy's areas were not unmapped");
        }
        if free_hugepages() == 0 {
            let e = run().unwrap_err().to_string();
            assert!(e.contains("Huge"), "{e}");
        }
    }
}
