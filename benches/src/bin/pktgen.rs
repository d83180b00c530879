//! pktgen: netbackd's throughput harness (issue 11). One engine group on the main lcore
//! (CPU 0), simulated guests as generators/sinks on EAL worker lcore 1 (CPU 1), a wire port
//! (`net_null` vdevs, or a `net_memif` server with `dpdk-testpmd` as the peer), and in the
//! same run the baselines: DPDK's vhost-user path (`dpdk-testpmd` with `net_vhost` +
//! `net_virtio_user`, host side on CPU 0, guest side on CPU 1) interleaved round by round
//! with netbackd, and memcpy at the mbuf pool's footprint.
//!
//!   cargo run --release -p netbackd-benches --bin pktgen -- [options]
//!   cargo run --release -p netbackd-benches --bin pktgen -- --quick
//!
//! Directions (guest's view): tx (guest -> port), rx (port -> guest), g2g (vif 2k -> vif
//! 2k+1 in the group), bidir (tx and rx at once). Sizes: frame bytes without FCS, or `gso`
//! (a 65535-byte TCPv4 frame with the GSO extra: tx (software segmentation) and g2g), or
//! `tcp` (a stream of 1514-byte TCP segments that GRO coalesces toward the receiving guest:
//! g2g from the other vif, or rx from the wire, where DPDK's pcap PMD replays a 1024-segment
//! stream in a loop; each round also runs with GRO off, and `gro_ab` lines compare the two).
//!
//! Null wire: guest RX comes from `net_null_rxN,size=N` (all-zero frames: unknown
//! destination, so with several vifs every frame is flooded to all of them: packets
//! counted are deliveries); guest TX goes to `net_null_tx,no-rx=1`, or with several vifs to
//! a `net_pcap` port that replays one frame from the wire's MAC (so the switch learns it
//! and guest frames are not flooded to the other vifs) and drops what it is sent.
use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netbackd_benches::baseline;
use netbackd_benches::harness::{
    self, Bench, Direction, FrameSize, Measured, PointSpec, Timing, INTERRUPTED, WIRE_MAC,
};
use netbackd_benches::median;
use netbackd_benches::report::{self, Row};
use pmd::{Eal, Mempool, Port, PortConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::{SimHost, SimOptions};

const MBUFS: u32 = 32767;
/// Bytes of an mbuf's data room as the pool is created (the memcpy footprint unit).
const MBUF_DATA: usize = 2176;

/// The buffers a copying backend touches per vif queue, as the memcpy ceiling's footprint:
/// the guest's 256 RX (or TX) buffer pages on one side, and on the other as many mbuf data
/// rooms as the pool's per-lcore cache keeps cycling (a busy group reuses its recently
/// freed mbufs, not the whole pool). Both areas of `memcpy_pps` get this size.
fn memcpy_footprint(vifs: usize) -> usize {
    vifs.max(1) * dataplane::netif::RX_RING_SIZE * 4096
}

#[derive(Parser, Debug)]
#[command(about = "netbackd throughput harness (sim host, one group)")]
struct Args {
    /// Wire side: null (net_null vdevs) or memif (net_memif server, testpmd peer).
    #[arg(long, default_value = "null")]
    wire: String,
    /// Frame sizes (bytes without FCS) and/or `gso`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64,128,256,512,1024,1518,gso"
    )]
    sizes: Vec<String>,
    /// Directions: tx, rx, g2g, bidir.
    #[arg(long, value_delimiter = ',', default_value = "tx,rx,g2g,bidir")]
    dirs: Vec<String>,
    /// Vif counts (one group).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    vifs: Vec<usize>,
    /// Groups sharing one L2 domain, polled in turn by the one group thread (the cost of
    /// the work, not parallel speed-up)
    #[arg(long, value_delimiter = ',', default_value = "1")]
    groups: Vec<usize>,
    /// g2g with several groups: percent of the vif pairs split over two groups
    #[arg(long, value_delimiter = ',', default_value = "0")]
    cross: Vec<u8>,
    /// Warm-up before measuring, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured intervals per round (>= 5 for a report).
    #[arg(long, default_value_t = 5)]
    intervals: usize,
    /// Length of a measured interval, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Rounds per point (netbackd and vhost-user alternating); medians over rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip the vhost-user and memcpy baselines.
    #[arg(long)]
    no_baseline: bool,
    /// Idle share of the group above which the generator is reported as the limit.
    #[arg(long, default_value_t = 0.05)]
    idle_limit: f64,
    /// Write every point (all fields) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write SVG and PNG charts into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Under a minute: 64 and 1518 bytes, tx and rx, one vif, null wire, vhost-user
    /// interleaved; the last line gives the ratios.
    #[arg(long)]
    quick: bool,
    /// Bytes of each mbuf's data room (headroom included) in the pool: 2176 gives 2 KiB
    /// segments (frames over that become chains, as with RX scatter); 9344 holds a 9000-byte
    /// MTU's frame in one mbuf (the larger-data-room alternative to scatter).
    #[arg(long, default_value_t = MBUF_DATA as u16, value_parser = clap::value_parser!(u16).range(1152..))]
    data_room: u16,
    /// Run on 2 MiB hugepages, as DPDK does in an HVM/PVH dom0: netbackd's mbuf pool, the
    /// vhost-user testpmds and the memcpy areas (the memif testpmd and the sim guests' RAM
    /// stay on 4 KiB pages). Needs about 800 free hugepages (vm.nr_hugepages). Default:
    /// 4 KiB pages (`--no-huge`), as a PV dom0 and the tests run.
    #[arg(long)]
    huge: bool,
}

/// netbackd's EAL memory in this harness, MB.
const EAL_MB: u32 = 1024;

/// Removes the run's scratch directory (pcap file, memif sockets) on every exit path.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("pktgen: error: {e:#}");
            std::process::exit(if INTERRUPTED.load(Ordering::Relaxed) {
                130
            } else {
                1
            });
        }
    }
}

struct Plan {
    points: Vec<PointSpec>,
    timing: Timing,
    vhost_warmup: u64,
    vhost_secs: u64,
    memcpy_interval: Duration,
}

fn plan(a: &mut Args) -> anyhow::Result<Plan> {
    if a.quick {
        a.sizes = vec!["64".into(), "1518".into()];
        a.dirs = vec!["rx".into(), "tx".into()];
        a.vifs = vec![1];
        a.wire = "null".into();
    }
    let mut sizes = Vec::new();
    for s in &a.sizes {
        sizes.push(FrameSize::parse(s).with_context(|| format!("bad size {s:?}"))?);
    }
    let mut dirs = Vec::new();
    for d in &a.dirs {
        dirs.push(Direction::parse(d).with_context(|| format!("bad direction {d:?}"))?);
    }
    if a.wire != "null" && a.wire != "memif" {
        bail!("--wire must be null or memif");
    }
    // The null wire's frames are one mbuf each, their length set without data (net_null
    // does not check it against the buffer): larger ones would be read past the mbuf.
    let room = usize::from(a.data_room) - pmd::sys::RTE_PKTMBUF_HEADROOM as usize;
    let guest_rx = a.wire == "null"
        && dirs
            .iter()
            .any(|d| matches!(d, Direction::Rx | Direction::Bidir));
    if let Some(big) = sizes
        .iter()
        .find(|s| matches!(s, FrameSize::Bytes(n) if *n > room))
        .filter(|_| guest_rx)
    {
        bail!(
            "--sizes {}: guest RX from the wire takes frames of at most {room} bytes (one mbuf)",
            big.label()
        );
    }
    if a.intervals == 0 || a.rounds == 0 {
        bail!("--intervals and --rounds must be > 0");
    }
    if a.groups.iter().any(|g| !(1..=16).contains(g)) {
        bail!("--groups must be 1..=16");
    }
    if a.cross.iter().any(|c| *c > 100) {
        bail!("--cross is a percentage (0..=100)");
    }
    if a.quick {
        a.groups = vec![1];
    }
    let mut points = Vec::new();
    for &dir in &dirs {
        for &size in &sizes {
            for &vifs in &a.vifs {
                let ok = match size {
                    FrameSize::Gso => matches!(dir, Direction::Tx | Direction::G2g),
                    FrameSize::Tcp => matches!(dir, Direction::G2g | Direction::Rx),
                    FrameSize::Bytes(_) => true,
                };
                for &groups in &a.groups {
                    // Cross-group shares only mean something for g2g across groups.
                    let crosses: Vec<u8> = if dir == Direction::G2g && groups > 1 {
                        a.cross.clone()
                    } else {
                        vec![0]
                    };
                    for cross in crosses {
                        if ok && vifs > 0 {
                            points.push(PointSpec {
                                dir,
                                size,
                                vifs,
                                groups,
                                cross,
                                gro: true,
                            });
                        }
                    }
                }
            }
        }
    }
    // Streams of multi-segment frames (GSO 64 KiB, TCP) run after every fixed-size point:
    // a GSO point keeps ~2000 mbufs in flight per iteration, far past the pool's per-lcore
    // cache, and leaves the mbufs that later points cycle through scattered over the pool
    // (4 KiB pages under --no-huge): a guest RX 64 B point measured after guest TX GSO ran
    // 20-35 % slower than alone. Otherwise the order is as given.
    points.sort_by_key(|p| !matches!(p.size, FrameSize::Bytes(_)));
    let timing = if a.quick {
        Timing {
            warmup: Duration::from_millis(500),
            interval: Duration::from_millis(300),
            intervals: 5,
        }
    } else {
        Timing {
            warmup: Duration::from_secs_f64(a.warmup),
            interval: Duration::from_millis(a.interval_ms),
            intervals: a.intervals,
        }
    };
    let total = timing.interval * timing.intervals as u32;
    Ok(Plan {
        points,
        timing,
        // testpmd's first (partial) stats second is always dropped: in --quick that is
        // the only warm-up.
        vhost_warmup: if a.quick {
            0
        } else {
            a.warmup.ceil().max(1.0) as u64
        },
        vhost_secs: if a.quick { 2 } else { total.as_secs().max(2) },
        memcpy_interval: if a.quick {
            Duration::from_millis(100)
        } else {
            timing.interval.min(Duration::from_millis(500))
        },
    })
}

/// TCP stream points run with GRO off too, round by round (A B A B): the baseline GRO is
/// measured against.
fn has_gro_baseline(p: &PointSpec) -> bool {
    p.size == FrameSize::Tcp
}

fn has_baseline(p: &PointSpec) -> bool {
    matches!(p.dir, Direction::Tx | Direction::Rx) && matches!(p.size, FrameSize::Bytes(_))
}

fn run() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let plan = plan(&mut args)?;
    // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let mem = if args.huge {
        baseline::Memory::Huge
    } else {
        baseline::Memory::NoHuge
    };
    if mem == baseline::Memory::Huge {
        // netbackd's EAL, then (one point at a time) the two testpmds and memcpy's two areas.
        let footprint = args
            .vifs
            .iter()
            .map(|&v| memcpy_footprint(v))
            .max()
            .unwrap_or(0);
        let mut mb = u64::from(EAL_MB);
        if !args.no_baseline {
            mb += 2 * u64::from(baseline::TESTPMD_MB)
                + 2 * (footprint.next_multiple_of(baseline::HUGEPAGE) >> 20) as u64;
        }
        baseline::ensure_hugepages(mb).context("--huge")?;
    }
    let pid = std::process::id();
    let scratch = Scratch(std::env::temp_dir().join(format!("nbd-pktgen-{pid}")));
    std::fs::create_dir_all(&scratch.0)?;
    let teach_pcap = scratch.0.join("teach.pcap");
    harness::write_teach_pcap(&teach_pcap)?;
    let tcp_pcap = scratch.0.join("tcp-stream.pcap");
    harness::write_tcp_stream_pcap(&tcp_pcap)?;

    // EAL: the group on lcore 0 (main), the guests on lcore 1.
    let prefix = format!("nbd-pktgen-{pid}");
    let mut eal_args: Vec<String> = [
        "-l",
        "0,1",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--log-level",
        "*:error",
        "--vdev",
        "net_null_tx,no-rx=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    eal_args.extend(mem.eal_args(EAL_MB));
    let mut rx_lens: Vec<usize> = plan
        .points
        .iter()
        .filter(|p| matches!(p.dir, Direction::Rx | Direction::Bidir))
        .filter(|p| matches!(p.size, FrameSize::Bytes(_)))
        .map(|p| p.size.bytes())
        .collect();
    rx_lens.sort();
    rx_lens.dedup();
    // Guest RX of a TCP stream: DPDK's pcap PMD replays the stream file in a loop.
    let tcp_wire = plan
        .points
        .iter()
        .any(|p| p.dir == Direction::Rx && p.size == FrameSize::Tcp);
    if tcp_wire {
        eal_args.push("--vdev".into());
        eal_args.push(format!(
            "net_pcap_tcp,rx_pcap={},infinite_rx=1",
            tcp_pcap.display()
        ));
    }
    for l in &rx_lens {
        eal_args.push("--vdev".into());
        eal_args.push(format!("net_null_rx{l},size={l}"));
    }
    let eal = Eal::init(&eal_args)?;
    let host = SimHost::start(SimOptions::default())?;
    let pool = Arc::new(Mempool::new("pktgen", MBUFS, 256, args.data_room, -1)?);
    let start = |p: Port| -> anyhow::Result<Arc<Port>> {
        let mut p = p;
        p.configure_and_start(&PortConfig::default(), &pool)?;
        Ok(Arc::new(p))
    };
    let null_tx = start(Port::by_name("net_null_tx")?)?;
    let mut null_rx = std::collections::HashMap::new();
    for l in &rx_lens {
        null_rx.insert(*l, start(Port::by_name(&format!("net_null_rx{l}"))?)?);
    }
    let tcp_rx = if tcp_wire {
        Some(start(Port::by_name("net_pcap_tcp")?)?)
    } else {
        None
    };
    let rx_port = |p: &PointSpec| match (p.size, &tcp_rx) {
        (FrameSize::Tcp, Some(t)) => t.clone(),
        _ => null_rx[&p.size.bytes()].clone(),
    };
    let mut bench = Bench::new(host, pool.clone());

    let per_round = plan.timing.warmup + plan.timing.interval * plan.timing.intervals as u32;
    let bar_len: u64 = plan
        .points
        .iter()
        .map(|p| {
            let nb = per_round.as_millis() as u64;
            let vh = if has_baseline(p) && !args.no_baseline {
                (plan.vhost_warmup + plan.vhost_secs + 2) * 1000
            } else {
                0
            };
            let nogro = if has_gro_baseline(p) && !args.no_baseline {
                nb
            } else {
                0
            };
            (nb + vh + nogro) * args.rounds as u64
        })
        .sum();
    let bar = ProgressBar::with_draw_target(Some(bar_len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    let mut n_dev = 0u32;
    let t_run = Instant::now();
    for p in &plan.points {
        let label = if p.groups > 1 {
            format!(
                "{} {} x{} {}g {}%",
                p.dir.name(),
                p.size.label(),
                p.vifs,
                p.groups,
                p.cross
            )
        } else {
            format!("{} {} x{}", p.dir.name(), p.size.label(), p.vifs)
        };
        let mut rounds: Vec<Measured> = Vec::new();
        let mut vhost_rounds: Vec<Vec<f64>> = Vec::new();
        let mut nogro_rounds: Vec<Measured> = Vec::new();
        let mut notes = Vec::new();
        let mut memif_checks = Vec::new();
        for r in 0..args.rounds {
            bar.set_message(format!("{label}: netbackd round {}", r + 1));
            let base = bar.position();
            let nb_ms = per_round.as_millis() as f64;
            let mut progress = |f: f64| bar.set_position(base + (f * nb_ms) as u64);
            let m = if args.wire == "memif" && matches!(p.dir, Direction::Tx | Direction::Rx) {
                n_dev += 1;
                let (m, check) = run_memif(
                    &mut bench,
                    p,
                    plan.timing,
                    &scratch.0,
                    n_dev,
                    &pool,
                    &mut progress,
                )?;
                memif_checks.push(check);
                m
            } else {
                let port = match p.dir {
                    Direction::Rx | Direction::Bidir => rx_port(p),
                    Direction::Tx if p.vifs > 1 => {
                        n_dev += 1;
                        let devargs =
                            format!("net_pcap_teach{n_dev},rx_pcap={}", teach_pcap.display());
                        start(Port::probe(&devargs)?)?
                    }
                    _ => null_tx.clone(),
                };
                bench.run_point(*p, &port, plan.timing, &mut progress)?
            };
            rounds.push(m);
            bar.set_position(base + nb_ms as u64);
            if has_gro_baseline(p) && !args.no_baseline {
                bar.set_message(format!("{label}: GRO off, round {}", r + 1));
                let base = bar.position();
                let mut progress = |f: f64| bar.set_position(base + (f * nb_ms) as u64);
                let off = PointSpec { gro: false, ..*p };
                let port = match p.dir {
                    Direction::Rx => rx_port(p),
                    _ => null_tx.clone(),
                };
                nogro_rounds.push(bench.run_point(off, &port, plan.timing, &mut progress)?);
                bar.set_position(base + nb_ms as u64);
            }
            // --quick runs vhost-user once, between its two netbackd rounds (A B A).
            let vhost_round = !args.quick || r == 0;
            if has_baseline(p) && !args.no_baseline && vhost_round {
                bar.set_message(format!("{label}: vhost-user round {}", r + 1));
                let dir = if p.dir == Direction::Tx {
                    baseline::Dir::GuestTx
                } else {
                    baseline::Dir::GuestRx
                };
                let cpus = baseline::TestpmdCpus { host: 0, guest: 1 };
                match baseline::vhost_user(
                    dir,
                    p.size.bytes(),
                    plan.vhost_warmup,
                    plan.vhost_secs,
                    &cpus,
                    &format!("pktgen{pid}-{n_dev}-{r}"),
                    mem,
                ) {
                    Ok(b) => vhost_rounds.push(b.pps),
                    Err(e) => {
                        let n = format!("vhost-user baseline failed: {e:#}");
                        if !notes.contains(&n) {
                            notes.push(n);
                        }
                    }
                }
                bar.inc((plan.vhost_warmup + plan.vhost_secs + 2) * 1000);
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        }
        let mut row = Row::from_rounds(p, &args.wire, rounds, args.idle_limit);
        if has_baseline(p) && !args.no_baseline {
            bar.set_message(format!("{label}: memcpy"));
            let mc = baseline::memcpy_pps(
                p.size.bytes(),
                memcpy_footprint(p.vifs),
                plan.memcpy_interval,
                5,
                mem,
            )?;
            row.set_baselines(vhost_rounds, (!mc.is_empty()).then(|| median(&mc)));
        }
        if p.dir == Direction::G2g && p.vifs % 2 == 1 {
            notes.push(format!("g2g runs {} vifs (pairs)", (p.vifs.max(2)) & !1));
        }
        if row.generator_limited {
            notes.push(format!(
                "group idle {:.1}% of its cycles > {:.0}%: the guests (generator/sink) limit this point",
                row.idle_time_share * 100.0,
                args.idle_limit * 100.0
            ));
        }
        let rogue: u64 = row.rounds.iter().map(|m| m.total_rogue).sum();
        if rogue > 0 {
            notes.push(format!(
                "INVALID: the engine disabled {rogue} queue(s) as rogue during the run (for \
                 multi-slot frames: the guest_tx race between `unconsumed()` and \
                 `copy_request(0)` judges a packet pushed in between as missing slots)"
            ));
        }
        if !memif_checks.is_empty() {
            row.memif_check = Some(memif_checks.join("; "));
        }
        row.notes = notes;
        rows.push(row);
        if !nogro_rounds.is_empty() {
            let off = PointSpec { gro: false, ..*p };
            let mut r = Row::from_rounds(&off, &args.wire, nogro_rounds, args.idle_limit);
            r.size = format!("{}-nogro", r.size);
            rows.push(r);
        }
    }
    bar.finish_and_clear();
    print!("{}", report::table(&rows));
    println!(
        "pid {pid}, wire {}, memory {}, {} round(s), warm-up {:?}, {} x {:?} measured per round; total {:.0} s",
        args.wire,
        mem.label(),
        args.rounds,
        plan.timing.warmup,
        plan.timing.intervals,
        plan.timing.interval,
        t_run.elapsed().as_secs_f64()
    );
    if let Some(j) = &args.json {
        std::fs::write(j, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", j.display()))?;
        println!("json: {}", j.display());
    }
    if let Some(d) = &args.plot {
        let files = report::plot(&rows, d)?;
        println!("plots: {} files in {}", files.len(), d.display());
    }
    // GRO against no GRO (same run, alternating rounds): what the group spends per byte
    // delivered, and how many frames carry it.
    for on in rows.iter().filter(|r| r.size == "tcp1514") {
        let Some(off) = rows.iter().find(|r| {
            r.size == "tcp1514-nogro"
                && r.dir == on.dir
                && r.vifs == on.vifs
                && r.groups == on.groups
                && r.cross == on.cross
        }) else {
            continue;
        };
        let per_byte = |r: &Row| {
            let bytes_per_frame = r.gbps * 1e9 / 8.0 / (r.mpps * 1e6);
            (r.busy_cycles_per_packet / bytes_per_frame, bytes_per_frame)
        };
        let ((c_on, b_on), (c_off, b_off)) = (per_byte(on), per_byte(off));
        println!(
            "gro_ab dir={} vifs={} gbps_gro={:.2} gbps_nogro={:.2} bytes_per_frame_gro={:.0} bytes_per_frame_nogro={:.0} busy_cycles_per_byte_gro={:.3} busy_cycles_per_byte_nogro={:.3} cycles_ratio_nogro_over_gro={:.2}",
            on.dir.name(), on.vifs, on.gbps, off.gbps, b_on, b_off, c_on, c_off, c_off / c_on
        );
    }
    if args.quick {
        let ratio = |dir: Direction, len: &str| {
            rows.iter()
                .find(|r| r.dir == dir && r.size == len && r.vifs == 1)
                .and_then(|r| r.ratio_vs_vhost_user)
                .unwrap_or(f64::NAN)
        };
        println!(
            "ratio_vs_vhost_user_64B_rx={:.3} ratio_vs_vhost_user_64B_tx={:.3} ratio_vs_vhost_user_1518B_rx={:.3} ratio_vs_vhost_user_1518B_tx={:.3}",
            ratio(Direction::Rx, "64"),
            ratio(Direction::Tx, "64"),
            ratio(Direction::Rx, "1518"),
            ratio(Direction::Tx, "1518"),
        );
    }
    // Order: ports and pool before the host, EAL last.
    drop(null_rx);
    drop(tcp_rx);
    drop(null_tx);
    let host = bench.into_host();
    drop(pool);
    host.stop()?;
    drop(eal);
    Ok(())
}

/// One memif round: netbackd's port is a `net_memif` server, testpmd the client
/// (txonly toward the first vif for guest RX, rxonly for guest TX). Returns the
/// measurement and the counter check.
fn run_memif(
    bench: &mut Bench,
    p: &PointSpec,
    timing: Timing,
    scratch: &Path,
    id: u32,
    pool: &Arc<Mempool>,
    progress: &mut dyn FnMut(f64),
) -> anyhow::Result<(Measured, String)> {
    let sock = scratch.join(format!("memif{id}.sock"));
    let devargs = baseline::memif_server_devargs(&sock, id);
    let mut port = Port::probe(&devargs).with_context(|| format!("probe {devargs}"))?;
    port.configure_and_start(&PortConfig::default(), pool)?;
    let port = Arc::new(port);
    let mode = if p.dir == Direction::Tx {
        baseline::MemifMode::Rxonly
    } else {
        baseline::MemifMode::Txonly
    };
    // Guest RX traffic goes to the first vif's MAC (the bench numbers domains from 100).
    let dst = [0x00, 0x16, 0x3e, 0x7f, 0, 100];
    let _ = WIRE_MAC;
    let peer = baseline::MemifPeer::start(mode, &sock, p.size.bytes(), dst, 1, &format!("m{id}"))?;
    let t = Instant::now();
    while !port.link()?.up {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = peer.stop();
            bail!("memif link never came up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = bench.run_point(*p, &port, timing, progress);
    // memif zeroes a port's counters when its peer disconnects: netbackd's side is read
    // while the peer is still attached.
    let check = if p.dir == Direction::Tx {
        // The guests have stopped and the group drained; let testpmd empty the ring.
        std::thread::sleep(Duration::from_millis(300));
        let ours = port.stats()?.opackets;
        let totals = peer.stop()?;
        let theirs = totals.rx_packets + totals.rx_dropped;
        format!(
            "netbackd port sent {ours}, testpmd received {} + dropped {}: {}",
            totals.rx_packets,
            totals.rx_dropped,
            if ours == theirs { "agree" } else { "MISMATCH" }
        )
    } else {
        // Pause the generator, take what is left in the ring, count; testpmd's totals at
        // exit may add at most one ring of frames it queued after being resumed (it stops
        // on SIGINT; the ring is not drained any more by then).
        // SAFETY: kill(2) on our own child's pid with SIGSTOP.
        unsafe { libc::kill(peer.pid() as libc::pid_t, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(100));
        let mut burst = Vec::new();
        let mut idle = 0;
        while idle < 10 {
            if port.rx_burst(0, &mut burst, 32) == 0 {
                idle += 1;
                std::thread::sleep(Duration::from_millis(10));
            } else {
                idle = 0;
            }
            pmd::free_bulk(&mut burst);
        }
        let st = port.stats()?;
        let ours = st.ipackets + st.imissed;
        // SAFETY: as above, SIGCONT so it can handle the SIGINT that stops it.
        unsafe { libc::kill(peer.pid() as libc::pid_t, libc::SIGCONT) };
        let totals = peer.stop()?;
        let theirs = totals.tx_packets;
        let ring = u64::from(baseline::RING);
        format!(
            "testpmd sent {theirs} (ring full: {}), netbackd port received {} + missed {}: {}",
            totals.tx_dropped,
            st.ipackets,
            st.imissed,
            if (ours..=ours + ring).contains(&theirs) {
                format!("agree (testpmd's count {} above ours, <= one ring of {ring} queued after the pause)", theirs - ours)
            } else {
                "MISMATCH".into()
            }
        )
    };
    let m = res?;
    Ok((m, check))
}
