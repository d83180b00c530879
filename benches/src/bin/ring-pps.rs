//! Packets per second of a `net_ring` loop through netbackd's `Mbuf`/`Port` layer, against
//! DPDK's own `dpdk-testpmd` io forwarding on the same vdev, alternated in one run.
//!
//! Both keep one burst of 64-byte packets circulating on net_ring0 (its TX feeds its RX):
//! receive a burst, send it back. Both forward on EAL worker lcore 1, with the main lcore
//! sampling once a second. Prints medians of per-second rates and the ratio.
//!
//!   cargo run --release -p netbackd-benches --bin ring-pps -- [seconds] [rounds]
use netbackd_benches::{median, rates, testpmd_rx_pps};
use pmd::{Eal, Mbuf, Mempool, Port, PortConfig};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BURST: usize = 32;

fn ours(port: &Arc<Port>, pool: &Mempool, secs: u64, worker: u32) -> anyhow::Result<Vec<f64>> {
    let mut seed = Vec::new();
    Mbuf::alloc_bulk(pool, &mut seed, BURST)?;
    for m in seed.iter_mut() {
        m.append(60).expect("room").fill(0xab);
    }
    let sent = port.tx_burst(0, &mut seed);
    anyhow::ensure!(sent == BURST, "net_ring refused the seed burst");
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s, p) = (count.clone(), stop.clone(), port.clone());
    pmd::lcore::launch(worker, move || {
        let mut pkts = Vec::with_capacity(BURST);
        let mut local = 0u64;
        while !s.load(Ordering::Relaxed) {
            let n = p.rx_burst(0, &mut pkts, BURST as u16);
            if n > 0 {
                local += n as u64;
                p.tx_burst(0, &mut pkts);
                pmd::free_bulk(&mut pkts); // refused ones (none expected)
                                           // Publish every burst: a relaxed store is cheap next to the burst itself.
                c.store(local, Ordering::Relaxed);
            }
        }
        0
    })?;
    let t0 = Instant::now();
    let mut samples = vec![(Duration::ZERO, 0)];
    for i in 1..=secs + 1 {
        std::thread::sleep((t0 + Duration::from_secs(i)).saturating_duration_since(Instant::now()));
        samples.push((t0.elapsed(), count.load(Ordering::Relaxed)));
    }
    stop.store(true, Ordering::Relaxed);
    pmd::lcore::wait(worker);
    // Drain what is still circulating so the pool is whole again.
    let mut rest = Vec::new();
    for _ in 0..100 {
        port.rx_burst(0, &mut rest, 64);
    }
    pmd::free_bulk(&mut rest);
    Ok(rates(&samples, 1))
}

fn testpmd(secs: u64, round: usize) -> anyhow::Result<Vec<f64>> {
    let prefix = format!("nbd-bench-tpmd-{}-{round}", std::process::id());
    let child = Command::new("dpdk-testpmd")
        .args([
            "-l",
            "0,1",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--file-prefix",
            &prefix,
        ])
        .args(["--vdev", "net_ring0", "--log-level", "*:error", "--"])
        .args([
            "--forward-mode=io",
            "--port-topology=loop",
            "--tx-first",
            "--nb-cores=1",
        ])
        .args([
            "--burst=32",
            "--txpkts=64",
            "--stats-period=1",
            "--total-num-mbufs=8191",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("dpdk-testpmd (package dpdk): {e}"))?;
    std::thread::sleep(Duration::from_secs(secs + 2));
    // SIGINT lets testpmd stop its ports and clean up.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output()?;
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    let v = testpmd_rx_pps(&String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(v.len() > 2, "testpmd printed no stats");
    // The first report covers start-up.
    Ok(v[2..].iter().copied().filter(|x| *x > 0.0).collect())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let rounds: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let prefix = format!("nbd-bench-{}", std::process::id());
    let eal = Eal::init(&[
        "-l",
        "0,1",
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-shconf",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_ring0",
        "--log-level",
        "*:error",
    ])?;
    let worker = *pmd::lcore::workers()
        .first()
        .ok_or_else(|| anyhow::anyhow!("needs 2 cores"))?;
    let mut our_all = Vec::new();
    let mut tpmd_all = Vec::new();
    {
        let pool = Mempool::new("bench", 8191, 256, 2176, -1)?;
        let mut port = Port::by_name("net_ring0")?;
        port.configure_and_start(&PortConfig::default(), &pool)?;
        let port = Arc::new(port);
        for r in 0..rounds {
            let o = ours(&port, &pool, secs, worker)?;
            let t = testpmd(secs, r)?;
            println!(
                "round {}: netbackd pmd {:.2} Mpps, dpdk-testpmd io {:.2} Mpps",
                r + 1,
                median(&o) / 1e6,
                median(&t) / 1e6
            );
            our_all.extend(o);
            tpmd_all.extend(t);
        }
        drop(port);
        anyhow::ensure!(pool.in_use() == 0, "mbufs leaked");
    }
    drop(eal);
    let (o, t) = (median(&our_all), median(&tpmd_all));
    println!(
        "net_ring round trip, 64 B, burst {BURST}, {rounds} x {secs} s, medians of 1 s rates:"
    );
    println!("  netbackd Mbuf/Port layer : {:>8.2} Mpps", o / 1e6);
    println!("  dpdk-testpmd io forward  : {:>8.2} Mpps", t / 1e6);
    println!("  ratio (netbackd/testpmd) : {:>8.3}", o / t);
    Ok(())
}
