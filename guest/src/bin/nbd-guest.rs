//! A simulated guest as its own process: attaches to a sim root and runs a netfront on one
//! vif, then a job on top of it. Used by the demo, tests and benchmarks.
//!
//!   nbd-guest --root /dev/shm/netbackd-sim-.. --domid 5 connect --duration 10
//!   nbd-guest ... pktgen --len 64 --dst-mac 00:16:3e:00:00:06 --duration 5
//!   nbd-guest ... sink --duration 5
//!   nbd-guest ... ping --ip 10.0.0.5/24 --dst 10.0.0.6 --count 10
use clap::{Parser, Subcommand};
use guest::netfront::NetfrontLink;
use guest::pktgen::{run_gen, PktGen, Sink};
use guest::stack::{FrameLink, Stack};
use guest::{FrontConfig, Netfront};
use std::time::{Duration, Instant};
use xen::sim::SimLayout;
use xen::{Tx, XenStore};

#[derive(Parser)]
#[command(
    name = "nbd-guest",
    about = "A simulated Xen guest with a netfront, on a netbackd sim host"
)]
struct Cli {
    /// Sim root directory (printed by `netbackd sim`).
    #[arg(long)]
    root: String,
    #[arg(long)]
    domid: u16,
    #[arg(long, default_value_t = 0)]
    devid: u32,
    /// Queues to ask for.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// Seconds to wait for the backend to reach InitWait.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand)]
enum Job {
    /// Connect, then stay until the backend closes or the duration ends.
    Connect {
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Send fixed-size UDP frames as fast as the rings take them.
    Pktgen {
        #[arg(long, default_value_t = 64)]
        len: usize,
        #[arg(long)]
        dst_mac: String,
        #[arg(long, default_value_t = 5)]
        duration: u64,
    },
    /// Receive and check generated frames, print counters.
    Sink {
        #[arg(long, default_value_t = 5)]
        duration: u64,
    },
    /// Ping an address through the IP stack.
    Ping {
        #[arg(long)]
        ip: String,
        #[arg(long)]
        dst: String,
        #[arg(long, default_value_t = 5)]
        count: u16,
    },
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("mac {s}: {e}"))?;
    v.try_into().map_err(|_| format!("mac {s}: need 6 bytes"))
}

fn parse_ip(s: &str) -> Result<[u8; 4], String> {
    let v: Vec<u8> = s
        .split('.')
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("ip {s}: {e}"))?;
    v.try_into().map_err(|_| format!("ip {s}: need 4 bytes"))
}

fn run(cli: Cli) -> Result<(), String> {
    let layout = SimLayout::new(&cli.root);
    let xs = XenStore::open_at(&layout.xenstore_socket().to_string_lossy())
        .map_err(|e| e.to_string())?;
    let mac_s = xs
        .read(
            Tx::NONE,
            &format!("/local/domain/{}/device/vif/{}/mac", cli.domid, cli.devid),
        )
        .map_err(|e| e.to_string())?
        .ok_or("the vif has no mac key (was it attached?)")?;
    let mac = parse_mac(&mac_s)?;
    let mut nf = Netfront::new(
        &layout,
        xs,
        FrontConfig {
            domid: cli.domid,
            devid: cli.devid,
            queues: cli.queues,
            split_evtchn: true,
            ctrl_ring: false,
            sg: true,
            gso: true,
        },
    )
    .map_err(|e| e.to_string())?;
    nf.connect(Duration::from_secs(cli.connect_timeout))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "nbd-guest: dom{} vif{} connected, {} queue(s)",
        cli.domid,
        cli.devid,
        nf.queues.len()
    );
    match cli.job {
        Job::Connect { duration } => {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(duration) {
                if nf.backend_state().map_err(|e| e.to_string())? >= 5 {
                    break;
                }
                nf.wait_event(Duration::from_millis(20));
                let _ = nf.poll_rx(0);
                let _ = nf.reap_tx(0);
            }
            nf.close().map_err(|e| e.to_string())?;
            eprintln!("nbd-guest: closed");
        }
        Job::Pktgen {
            len,
            dst_mac,
            duration,
        } => {
            let mut g = PktGen {
                src_mac: mac,
                dst_mac: parse_mac(&dst_mac)?,
                src_ip: [10, 0, 0, cli.domid as u8],
                dst_ip: [10, 0, 0, 255],
                sport: 9,
                dport: 9,
                frame_len: len,
                seq: 0,
            };
            let mut link = NetfrontLink::new(nf, 0);
            let t = Instant::now();
            let (sent, full) = run_gen(&mut link, &mut g, Duration::from_secs(duration), u64::MAX);
            let s = t.elapsed().as_secs_f64();
            println!("pktgen: sent {sent} frames of {len} B in {s:.2} s ({:.3} Mpps), {full} back-pressure retries", sent as f64 / s / 1e6);
        }
        Job::Sink { duration } => {
            let mut link = NetfrontLink::new(nf, 0);
            let mut sink = Sink::default();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(duration) {
                match link.recv() {
                    Some(f) => {
                        sink.accept(&f);
                    }
                    None => link.nf.wait_event(Duration::from_millis(5)),
                }
            }
            println!("sink: {:?}", sink.stats);
        }
        Job::Ping { ip, dst, count } => {
            let (addr, prefix) = ip.split_once('/').ok_or("--ip wants A.B.C.D/N")?;
            let prefix: u8 = prefix.parse().map_err(|_| "bad prefix")?;
            let mut st = Stack::new(NetfrontLink::new(nf, 0), mac, parse_ip(addr)?, prefix);
            let got = st.ping(parse_ip(&dst)?, count, Duration::from_secs(2), |_| {});
            println!("ping: {count} transmitted, {got} received");
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("nbd-guest: error: {e}");
        std::process::exit(2);
    }
}
