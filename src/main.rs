//! netbackd: a userspace, poll-mode Xen network backend for dom0, on DPDK.
//!
//! `netbackd --version` reports the DPDK it runs with; `netbackd sim` runs the simulated
//! Xen host the tests and the demo use. The daemon (`netbackd run`) and the demo arrive
//! with the control-plane issue.
use anyhow::Context;

mod config;
mod demo;
mod ledger;
mod metrics;
mod run;
use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Userspace poll-mode Xen network backend for dom0, on DPDK.
#[derive(Parser, Debug)]
#[command(name = "netbackd", disable_version_flag = true)]
struct Cli {
    /// Print netbackd's version and the version of the DPDK library it is linked with.
    #[arg(short = 'V', long)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the backend: serve the vifs of this domain's backend directory with DPDK ports
    /// and busy-polling groups, until SIGINT/SIGTERM (vifs are left connectable).
    Run {
        /// TOML configuration file (see the README's configuration reference).
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// Override sim.root from the configuration.
        #[arg(long, value_name = "DIR")]
        sim_root: Option<String>,
        /// Override metrics.listen ("" disables the endpoint).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<String>,
        /// Override engine.groups.
        #[arg(long, value_name = "N")]
        groups: Option<u32>,
        /// Override eal.file_prefix.
        #[arg(long, value_name = "PREFIX")]
        file_prefix: Option<String>,
        /// Only load and validate the configuration, print it, and exit.
        #[arg(long)]
        check: bool,
    },
    /// The demo: a simulated Xen host, the daemon (`netbackd run`) serving two or more
    /// simulated guests, and a DPDK uplink (net_tap in a network namespace when root, else
    /// net_ring). The guests ping and stream TCP; a live per-vif table shows the traffic.
    /// Ctrl-C or --duration stops it; it removes everything it created.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Number of simulated guests (2..=8).
        #[arg(long, default_value_t = 2)]
        guests: u16,
        /// The daemon's uplink port.
        #[arg(long, value_enum, default_value_t = demo::Uplink::Auto)]
        uplink: demo::Uplink,
        /// The daemon's metrics address (default 127.0.0.1:9750, or a free port if taken).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<String>,
    },
    /// Run a simulated Xen host (real xenstored, shared-memory guest RAM, grant tables and
    /// event channels) that netbackd and simulated guests attach to. Runs until Ctrl-C,
    /// SIGTERM or --duration, then removes everything it created.
    Sim {
        /// Parent directory of the sim root (default /dev/shm).
        #[arg(long)]
        parent: Option<std::path::PathBuf>,
        /// Guest domains to create, as DOMID or DOMID:NAME (repeatable).
        #[arg(long = "guest", value_name = "DOMID[:NAME]")]
        guests: Vec<String>,
        /// vifs to attach like `xl network-attach`, as DOMID:DEVID:MAC (repeatable).
        #[arg(long = "vif", value_name = "DOMID:DEVID:MAC")]
        vifs: Vec<String>,
        /// Guest RAM per domain in MiB.
        #[arg(long, default_value_t = 64)]
        guest_mem_mb: u32,
        /// Stop after this many seconds (default: run until a signal).
        #[arg(long)]
        duration: Option<u64>,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn version_line() -> String {
    format!(
        "netbackd {} ({})",
        env!("CARGO_PKG_VERSION"),
        // Asked of the DPDK actually loaded (rte_version()), not the headers built against.
        pmd::version()
    )
}

fn sim(
    parent: Option<std::path::PathBuf>,
    guests: Vec<String>,
    vifs: Vec<String>,
    guest_mem_mb: u32,
    duration: Option<u64>,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut opts = xen::sim::SimOptions::default();
    if let Some(p) = parent {
        opts.parent = p;
    }
    let host = xen::sim::SimHost::start(opts).context("starting the simulated host")?;
    for g in &guests {
        let (id, name) = g.split_once(':').unwrap_or((g, ""));
        let domid: u16 = id
            .parse()
            .with_context(|| format!("--guest {g}: DOMID must be a number"))?;
        let name = if name.is_empty() {
            format!("guest{domid}")
        } else {
            name.to_string()
        };
        let frames = guest_mem_mb.saturating_mul(256);
        host.add_domain(domid, &name, frames, 8192)
            .with_context(|| format!("--guest {g}"))?;
    }
    for v in &vifs {
        let parts: Vec<&str> = v.splitn(3, ':').collect();
        anyhow::ensure!(parts.len() == 3, "--vif {v}: expected DOMID:DEVID:MAC");
        let domid: u16 = parts[0]
            .parse()
            .with_context(|| format!("--vif {v}: DOMID"))?;
        let devid: u32 = parts[1]
            .parse()
            .with_context(|| format!("--vif {v}: DEVID"))?;
        xen::sim::toolstack::add_vif(host.store(), 0, domid, devid, parts[2], &Default::default())
            .with_context(|| format!("--vif {v}"))?;
    }
    println!("sim root: {}", host.root().display());
    println!("xenstore: XENSTORED_PATH={}", host.xenstore_path());
    println!(
        "started in {:.1} ms with {} guest(s), {} vif(s)",
        t0.elapsed().as_secs_f64() * 1e3,
        guests.len(),
        vifs.len()
    );
    install_signal_handlers();
    let until = duration.map(|d| Instant::now() + Duration::from_secs(d));
    while !STOP.load(Ordering::SeqCst) && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(50));
    }
    host.stop().context("stopping the simulated host")?;
    println!("sim stopped, nothing left behind");
    Ok(())
}

/// Logs to stderr through `tracing`. Under systemd (JOURNAL_STREAM set) without colours or
/// timestamps, which journald adds itself. Filter: NETBACKD_LOG or RUST_LOG
/// (`info` by default; e.g. `debug`, `warn,control=debug`).
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::{filter::Targets, fmt, prelude::*};
    let spec = std::env::var("NETBACKD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("netbackd: log filter {spec:?} ignored ({e}); using info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::stderr().is_terminal();
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    if journald {
        registry.with(layer.without_time()).init();
    } else {
        registry.with(layer).init();
    }
}

fn main() {
    init_logging();
    if let Err(e) = real_main() {
        // One line an operator can read (and journald can index), causes chained.
        eprintln!("netbackd: error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.version {
        println!("{}", version_line());
        return Ok(());
    }
    match cli.cmd {
        Some(Cmd::Run {
            config,
            sim_root,
            metrics_listen,
            groups,
            file_prefix,
            check,
        }) => {
            let overrides = config::Overrides {
                sim_root,
                metrics_listen,
                groups,
                file_prefix,
            };
            let cfg = config::Config::load_with(&config, &overrides)?;
            if check {
                println!("{}: valid\n{cfg:#?}", config.display());
                return Ok(());
            }
            install_signal_handlers();
            run::run(cfg, &STOP)
        }
        Some(Cmd::Demo {
            duration,
            guests,
            uplink,
            metrics_listen,
        }) => {
            install_signal_handlers();
            demo::demo(
                demo::DemoOptions {
                    duration,
                    guests,
                    uplink,
                    metrics_listen,
                },
                &STOP,
            )
        }
        Some(Cmd::Sim {
            parent,
            guests,
            vifs,
            guest_mem_mb,
            duration,
        }) => sim(parent, guests, vifs, guest_mem_mb, duration),
        None => {
            // No daemon yet: say so instead of pretending to run one.
            use clap::CommandFactory;
            Cli::command().print_help()?;
            anyhow::bail!("no command given (`netbackd demo` is not implemented yet)");
        }
    }
}
