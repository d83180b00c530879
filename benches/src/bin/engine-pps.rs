//! Packets per second of one group with one vif, each direction, 64 and 1500 bytes, on the
//! simulated host: the guest's netfront on EAL worker lcore 1, the group's poll loop on the
//! main lcore. The sim's grant copy is a checked memcpy, so these are upper bounds for the
//! engine itself, not figures for a real hypervisor (where each batch is one hypercall).
//! `NBD_BENCH_DEBUG=1` also prints iterations and packets per iteration.
//! Guest TX goes to a `net_null` port (which discards); guest RX comes from a `net_null`
//! port (which generates frames as fast as asked). Prints medians of 1-second rates.
//!
//! `--fast-guest` uses the netfront's generator/sink fast path (`send_burst`, `sink_rx`:
//! one ring push per burst, no per-packet allocation or copy-out) instead of `send` and
//! `poll_rx`, so the guest is not what limits the rate.
//!
//!   cargo run --release -p netbackd-benches --bin engine-pps -- [seconds] [--fast-guest]
use dataplane::engine::{EngineConfig, Features, Group, GroupIo, QueueCounters};
use dataplane::offload::{SoftGso, TxCaps};
use dataplane::switch::SwitchConfig;
use guest::pktgen::PktGen;
use guest::TxMeta;
use netbackd_benches::{median, rates};
use pmd::{Eal, Mempool, Port, PortConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::{SimHost, SimOptions};

/// Runs one direction for `secs`; returns medians of per-second rates (packets).
#[allow(clippy::too_many_arguments)]
fn run(
    h: &SimHost,
    domid: u16,
    port: &Arc<Port>,
    pool: &Arc<Mempool>,
    tx: bool,
    len: usize,
    secs: u64,
    fast: bool,
) -> f64 {
    h.add_domain(domid, "bench", 4096, 8192).expect("domain");
    let features = Features {
        sg: true,
        ..Default::default()
    };
    let (mut nf, setup, ctr) =
        guest::harness::attach_with(h, domid, 0, [0x00, 0x16, 0x3e, 0, 0, 1], features);
    let io = GroupIo {
        pool: pool.clone(),
        port: port.clone(),
        port_queue: 0,
        caps: TxCaps::default(),
        soft: SoftGso::new(&format!("b{domid}"), 255, -1).unwrap(),
    };
    let mut g = Group::new(
        EngineConfig::default(),
        h.grants(0),
        h.evtchn(0).unwrap(),
        io,
        SwitchConfig::default(),
    );
    g.add_queue(setup);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    // The guest runs on EAL worker lcore 1: a thread spawned here would inherit the main
    // lcore's pinning to core 0 and time-share it with the group.
    let worker = pmd::lcore::workers()[0];
    pmd::lcore::launch(worker, move || {
        let mut gen = PktGen {
            src_mac: [0x00, 0x16, 0x3e, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            sport: 9,
            dport: 9,
            frame_len: len,
            seq: 0,
        };
        let mut f = Vec::new();
        gen.next_frame(&mut f);
        while !s2.load(Ordering::Relaxed) {
            if fast && tx {
                let _ = nf.send_burst(0, &f, TxMeta::default(), 256);
            } else if fast {
                let _ = nf.sink_rx(0);
            } else if tx {
                // Same frame every time: the guest's own cost is not what is measured.
                while nf.send(0, &f, TxMeta::default()).is_ok() {}
                let _ = nf.reap_tx(0);
            } else {
                let _ = nf.poll_rx(0);
            }
        }
        0
    })
    .expect("launch guest on a worker lcore");
    let t0 = Instant::now();
    let mut samples = vec![(Duration::ZERO, 0u64)];
    let mut next = t0 + Duration::from_secs(1);
    let counter = |c: &QueueCounters| {
        if tx {
            c.tx_packets.load(Ordering::Relaxed)
        } else {
            c.rx_packets.load(Ordering::Relaxed)
        }
    };
    let (mut polls, mut work, mut busy) = (0u64, 0u64, Duration::ZERO);
    while samples.len() < secs as usize + 2 {
        // The clock is read once per 64 polls: reading it per poll cost more than an
        // idle poll and would be charged to the engine.
        let tp = Instant::now();
        for _ in 0..64 {
            work += g.poll() as u64;
        }
        busy += tp.elapsed();
        polls += 64;
        if Instant::now() >= next {
            samples.push((t0.elapsed(), counter(&ctr)));
            next += Duration::from_secs(1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    pmd::lcore::wait(worker);
    if std::env::var_os("NBD_BENCH_DEBUG").is_some() {
        eprintln!(
            "  packets {work}, polls {polls}, packets/poll {:.1}, us/poll {:.2}",
            work as f64 / polls as f64,
            busy.as_secs_f64() * 1e6 / polls as f64,
        );
    }
    median(&rates(&samples, 1))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fast = args.iter().any(|a| a == "--fast-guest");
    let secs: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let prefix = format!("nbd-bench-eng-{}", std::process::id());
    let eal = Eal::init(&[
        "-l",
        "0,1",
        "--no-huge",
        "-m",
        "1024",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_null0,size=64",
        "--vdev",
        "net_null1,size=1500",
        "--vdev",
        "net_null2,no-rx=1",
        "--log-level",
        "*:error",
    ])?;
    let h = SimHost::start(SimOptions::default())?;
    {
        let pool = Arc::new(Mempool::new("bench", 32767, 256, 2176, -1)?);
        let mut ports = Vec::new();
        for n in ["net_null0", "net_null1", "net_null2"] {
            let mut p = Port::by_name(n)?;
            p.configure_and_start(&PortConfig::default(), &pool)?;
            ports.push(Arc::new(p));
        }
        println!(
            "one group, one vif, sim host, {secs} s per case, medians of 1 s rates, guest {}:",
            if fast { "fast path" } else { "send/poll_rx" }
        );
        let mut domid = 20;
        // NBD_BENCH_CASE=tx64|rx64|tx1500|rx1500 runs one case (for `perf stat`).
        let only = std::env::var("NBD_BENCH_CASE").ok();
        for (len, rx_port) in [(64usize, &ports[0]), (1500, &ports[1])] {
            for tx in [true, false] {
                domid += 1;
                let name = format!("{}{len}", if tx { "tx" } else { "rx" });
                if only.as_ref().is_some_and(|o| *o != name) {
                    continue;
                }
                // Guest TX goes to a port that generates nothing; guest RX comes from one
                // generating frames of the size measured.
                let port = if tx { &ports[2] } else { rx_port };
                let pps = run(&h, domid, port, &pool, tx, len, secs, fast);
                println!(
                    "  guest {} {len:>4} B: {:>6.3} Mpps  {:>7.2} Gbit/s",
                    if tx {
                        "TX (to net_null)  "
                    } else {
                        "RX (from net_null)"
                    },
                    pps / 1e6,
                    pps * len as f64 * 8.0 / 1e9
                );
            }
        }
    }
    h.stop()?;
    drop(eal);
    Ok(())
}
