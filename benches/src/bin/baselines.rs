//! Runs the harness's baselines and prints them: DPDK's vhost-user path (two `dpdk-testpmd`s,
//! `net_vhost` and `net_virtio_user`, one forwarding lcore each) in both directions, one core's
//! memcpy over the same footprint, at 64 and 1518 B; then a memif check (a `MemifPeer` txonly
//! client into a testpmd memif server in rxonly).
//!
//! `baselines [--secs N] [--warmup N] [--host-cpu N] [--guest-cpu N] [--footprint-mib N]
//! [--sizes 64,1518] [--no-vhost] [--no-memif] [--huge]` (`--huge`: the vhost-user testpmds
//! and memcpy on 2 MiB hugepages, which must be reserved).
use std::time::Duration;

use netbackd_benches::baseline::{
    memcpy_pps, vhost_user, Dir, MemifMode, MemifPeer, MemifSink, Memory, TestpmdCpus,
};
use netbackd_benches::median;

fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)))
}

fn main() -> anyhow::Result<()> {
    let mut secs = 5u64;
    let mut warmup = 2u64;
    let mut cpus = TestpmdCpus { host: 0, guest: 1 };
    let mut footprint_mib = 16usize;
    let mut sizes = vec![64usize, 1518];
    let (mut vhost, mut memif) = (true, true);
    let mut mem = Memory::NoHuge;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--secs" => secs = val()?.parse()?,
            "--warmup" => warmup = val()?.parse()?,
            "--host-cpu" => cpus.host = val()?.parse()?,
            "--guest-cpu" => cpus.guest = val()?.parse()?,
            "--footprint-mib" => footprint_mib = val()?.parse()?,
            "--sizes" => {
                sizes = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--no-vhost" => vhost = false,
            "--no-memif" => memif = false,
            "--huge" => mem = Memory::Huge,
            _ => anyhow::bail!("unknown argument {a}"),
        }
    }
    let footprint = footprint_mib << 20;
    println!(
        "baselines: {secs} s (+{warmup} s warm-up), vhost testpmd on CPU {}, virtio_user on CPU {}, memcpy footprint {footprint_mib} MiB",
        cpus.host, cpus.guest
    );
    for &len in &sizes {
        for dir in [Dir::GuestTx, Dir::GuestRx].into_iter().filter(|_| vhost) {
            let r = vhost_user(dir, len, warmup, secs, &cpus, &format!("{len}{dir:?}"), mem)?;
            let (lo, hi) = minmax(&r.pps);
            println!(
                "{len:>5} B {dir:?}: vhost-user {:>6.2} Mpps (min {:.2}, max {:.2}; {} s)  tx {} rx {} tx-dropped {}",
                median(&r.pps) / 1e6,
                lo / 1e6,
                hi / 1e6,
                r.pps.len(),
                r.tx_packets,
                r.rx_packets,
                r.tx_dropped
            );
        }
        let m = memcpy_pps(len, footprint, Duration::from_secs(1), secs as usize, mem)?;
        let (lo, hi) = minmax(&m);
        println!(
            "{len:>5} B memcpy (1 core): {:>6.2} Mpps (min {:.2}, max {:.2})",
            median(&m) / 1e6,
            lo / 1e6,
            hi / 1e6
        );
    }

    if !memif {
        return Ok(());
    }
    // memif: a testpmd server in rxonly stands in for netbackd's port.
    let sock = std::env::temp_dir().join(format!("nbd-bl-{}-memif.sock", std::process::id()));
    let sink = MemifSink::start(&sock, cpus.host, "memifchk")?;
    let peer = MemifPeer::start(
        MemifMode::Txonly,
        &sock,
        64,
        [0x02, 0, 0, 0, 0, 0x02],
        cpus.guest,
        "memifchk",
    )?;
    std::thread::sleep(Duration::from_secs(secs + 1));
    // Pause the generator so the sink drains and prints its final count while still
    // connected (memif zeroes counters on disconnect).
    let pid = peer.pid() as libc::pid_t;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Every packet the client had reported sent before the pause must have arrived.
    let tx_before = peer.nic_so_far().1;
    let rx = sink.wait_drained(Duration::from_secs(30))?;
    let p = peer.stop()?;
    // DPDK 22.11's memif server can crash (SIGSEGV in its rx burst) when the client disconnects
    // while it polls; its count was taken above.
    let s_pps = match sink.stop() {
        Ok(s) => median(&s.pps) / 1e6,
        Err(e) => {
            println!(
                "warning: memif server: {}",
                e.to_string().lines().next().unwrap_or("")
            );
            f64::NAN
        }
    };
    // After SIGCONT the client sends on until it handles SIGINT (on a loaded machine that can
    // be a while), so its final count is only an upper bound.
    let ok = tx_before > 0 && tx_before <= rx && rx <= p.tx_packets;
    println!(
        "memif 64 B txonly client -> rxonly server: client tx {tx_before} (last report before pause) .. {} (at exit; {:.2} Mpps median, tx-dropped {}), server rx {} after drain ({:.2} Mpps median): {}",
        p.tx_packets,
        median(&p.pps) / 1e6,
        p.tx_dropped,
        rx,
        s_pps,
        if ok { "agree" } else { "DISAGREE" }
    );
    anyhow::ensure!(ok, "memif counters disagree");
    Ok(())
}
