//! netbackd: a userspace, poll-mode Xen network backend for dom0, on DPDK.
//!
//! `netbackd run` is the daemon; `netbackd ctl` and `netbackd top` ask a running one
//! through its control socket; `netbackd demo` shows it at work on a simulated Xen host
//! (`netbackd sim`, which the tests use too); `netbackd --version` reports the DPDK it
//! runs with.
use anyhow::Context;

use netbackd::config;
mod ctl;
mod ctlcli;
mod demo;
mod ledger;
mod metrics;
mod run;
mod sdnotify;
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
    /// and busy-polling groups, until SIGINT/SIGTERM.
    ///
    /// Restarts keep the guests attached: a stop delivers what the daemon took in and
    /// leaves the vifs Connected; the next start resumes every vif Connected on both ends
    /// where it is (rings, channels and ring indices), also after a kill -9 (then only
    /// frames in flight are lost). To really detach the guests at a stop, set
    /// backend.on_stop = "close" (SIGHUP applies it) before stopping, or detach single vifs
    /// with `netbackd ctl detach`.
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
    /// Ask the running daemon, through its control socket (root only): `show vifs`,
    /// `show groups [--clear]`, `show ports`, `show switch`, `set rate`, `clear rate`,
    /// `detach`, `log level`, `move`.
    Ctl {
        /// The daemon's control socket (default: $NETBACKD_CTL_SOCKET, else
        /// /run/netbackd/ctl.sock).
        #[arg(long, value_name = "PATH", global = true)]
        socket: Option<std::path::PathBuf>,
        /// Print the daemon's answer as JSON (for scripts) instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
    /// A live per-vif table (packets, rates, drops, backlog) of the running daemon, redrawn
    /// every --interval seconds, until Ctrl-C.
    Top {
        /// The daemon's control socket (as for `ctl`).
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
        /// Seconds between two samples.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many samples.
        #[arg(long)]
        count: Option<u64>,
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

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Show vifs, groups, ports or the switch.
    Show {
        #[command(subcommand)]
        what: ShowCmd,
    },
    /// Set a vif's rate.
    Set {
        #[command(subcommand)]
        what: SetCmd,
    },
    /// Remove what `set` set.
    Clear {
        #[command(subcommand)]
        what: ClearCmd,
    },
    /// Close a vif the way the toolstack does (online = 0, state Closing), and wait until
    /// the backend is Closed.
    Detach {
        /// DOMID.DEVID
        vif: String,
    },
    /// Logging.
    Log {
        #[command(subcommand)]
        what: LogCmd,
    },
    /// Move queue QUEUE of a vif to group GROUP while traffic flows (nothing lost or
    /// reordered: the other groups hold the queue's frames for the moment it takes).
    Move {
        /// DOMID.DEVID
        vif: String,
        queue: u16,
        group: usize,
    },
    /// Fault injection for tests (refused unless the daemon runs with
    /// NETBACKD_FAULT_INJECTION=1).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        what: DebugCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ShowCmd {
    /// Vifs: guest, state, queues and their groups, ring indices, backlog, credit, drops.
    Vifs {
        /// DOMID or DOMID.DEVID (default: every vif).
        vif: Option<String>,
    },
    /// Groups: lcore, queues, busy/idle cycles, cycles per packet, batches, grant copies,
    /// notifications and handoffs, since the last --clear.
    Groups {
        /// Start a new interval after this answer (as pmd-stats-clear).
        #[arg(long)]
        clear: bool,
    },
    /// The port: link, speed, queues, offloads, stats and xstats.
    Ports,
    /// The MAC table: static and learned entries, their age and VLAN.
    Switch,
}

#[derive(Subcommand, Debug)]
enum SetCmd {
    /// Limit a vif's guest TX to BYTES per USECS microseconds (wins over xenstore's rate).
    Rate {
        /// DOMID.DEVID
        vif: String,
        bytes: u64,
        usecs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum ClearCmd {
    /// Remove the operator's rate of a vif (the toolstack's `rate` key applies again).
    Rate {
        /// DOMID.DEVID
        vif: String,
    },
}

#[derive(Subcommand, Debug)]
enum LogCmd {
    /// Replace the log filter (e.g. `debug`, `warn,control=debug`).
    Level { filter: String },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Make group GROUP sleep MS milliseconds between two iterations.
    Stall { group: usize, ms: u64 },
}

impl CtlCmd {
    fn request(self) -> ctl::Request {
        use ctl::Request as R;
        match self {
            CtlCmd::Show { what } => match what {
                ShowCmd::Vifs { vif } => R::ShowVifs { vif },
                ShowCmd::Groups { clear } => R::ShowGroups { clear },
                ShowCmd::Ports => R::ShowPorts {},
                ShowCmd::Switch => R::ShowSwitch {},
            },
            CtlCmd::Set {
                what: SetCmd::Rate { vif, bytes, usecs },
            } => R::SetRate { vif, bytes, usecs },
            CtlCmd::Clear {
                what: ClearCmd::Rate { vif },
            } => R::ClearRate { vif },
            CtlCmd::Detach { vif } => R::Detach { vif },
            CtlCmd::Move { vif, queue, group } => R::MoveQueue { vif, queue, group },
            CtlCmd::Log {
                what: LogCmd::Level { filter },
            } => R::LogLevel { filter },
            CtlCmd::Debug {
                what: DebugCmd::Stall { group, ms },
            } => R::DebugStall { group, ms },
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP: the daemon re-reads its configuration.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn install_reload_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGHUP, on_hup as *const () as libc::sighandler_t) };
}

type LogHandle = tracing_subscriber::reload::Handle<
    tracing_subscriber::filter::Targets,
    tracing_subscriber::Registry,
>;
/// The log filter's reload handle (`ctl log level`, SIGHUP).
static LOG: std::sync::OnceLock<LogHandle> = std::sync::OnceLock::new();
/// Whether NETBACKD_LOG or RUST_LOG chose the filter at start (then it wins over
/// log.filter of the configuration at start).
static LOG_FROM_ENV: AtomicBool = AtomicBool::new(false);

/// Replaces the log filter live.
pub fn set_log_filter(spec: &str) -> Result<(), String> {
    let t: tracing_subscriber::filter::Targets = spec
        .parse()
        .map_err(|e| format!("log filter {spec:?}: {e}"))?;
    LOG.get()
        .ok_or("logging is not reloadable")?
        .reload(t)
        .map_err(|e| format!("log filter {spec:?}: {e}"))?;
    tracing::info!("log filter now {spec:?}");
    Ok(())
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
    say(format_args!("sim root: {}", host.root().display()));
    say(format_args!(
        "xenstore: XENSTORED_PATH={}",
        host.xenstore_path()
    ));
    say(format_args!(
        "started in {:.1} ms with {} guest(s), {} vif(s)",
        t0.elapsed().as_secs_f64() * 1e3,
        guests.len(),
        vifs.len()
    ));
    install_signal_handlers();
    let until = duration.map(|d| Instant::now() + Duration::from_secs(d));
    while !STOP.load(Ordering::SeqCst) && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(50));
    }
    host.stop().context("stopping the simulated host")?;
    say(format_args!("sim stopped, nothing left behind"));
    Ok(())
}

/// One line to stdout for whoever reads it. A reader that went away (a test that stopped
/// reading, `| head`) is not the sim's failure: the line is dropped, not a panic.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// Logs to stderr through `tracing`. Under systemd (JOURNAL_STREAM set) without colours or
/// timestamps, which journald adds itself. Filter: NETBACKD_LOG or RUST_LOG
/// (`info` by default; e.g. `debug`, `warn,control=debug`).
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::{filter::Targets, fmt, prelude::*};
    let env = std::env::var("NETBACKD_LOG").or_else(|_| std::env::var("RUST_LOG"));
    LOG_FROM_ENV.store(env.is_ok(), Ordering::Relaxed);
    let spec = env.unwrap_or_else(|_| "info".into());
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
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG.set(handle);
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
            if let (Some(f), false) = (&cfg.log.filter, LOG_FROM_ENV.load(Ordering::Relaxed)) {
                set_log_filter(f).map_err(anyhow::Error::msg)?;
            }
            install_signal_handlers();
            install_reload_handler();
            run::run(
                cfg,
                run::Reload {
                    path: config,
                    overrides,
                    flag: &RELOAD,
                },
                &STOP,
            )
        }
        Some(Cmd::Ctl { socket, json, cmd }) => {
            ctlcli::ctl(&ctlcli::socket_path(socket), json, cmd.request())
        }
        Some(Cmd::Top {
            socket,
            interval,
            count,
        }) => {
            anyhow::ensure!(
                interval.is_finite() && (0.05..=3600.0).contains(&interval),
                "--interval: {interval} is not in 0.05..=3600 seconds"
            );
            install_signal_handlers();
            ctlcli::top(
                &ctlcli::socket_path(socket),
                Duration::from_secs_f64(interval),
                count,
                &STOP,
            )
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
            use clap::CommandFactory;
            Cli::command().print_help()?;
            anyhow::bail!("no command given");
        }
    }
}
