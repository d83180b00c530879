//! netbackd: a userspace, poll-mode Xen network backend for dom0, on DPDK.
//!
//! The daemon (`netbackd run`) and the demo (`netbackd demo`) arrive with the control-plane
//! issue; this binary already reports its version and the DPDK it runs with.
use clap::Parser;

/// Userspace poll-mode Xen network backend for dom0, on DPDK.
#[derive(Parser, Debug)]
#[command(name = "netbackd", disable_version_flag = true)]
struct Cli {
    /// Print netbackd's version and the version of the DPDK library it is linked with.
    #[arg(short = 'V', long)]
    version: bool,
}

fn version_line() -> String {
    format!(
        "netbackd {} ({})",
        env!("CARGO_PKG_VERSION"),
        // Asked of the DPDK actually loaded (rte_version()), not the headers built against.
        pmd::version()
    )
}

fn main() {
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
    // No subcommand yet: say so instead of pretending to run a daemon.
    use clap::CommandFactory;
    Cli::command().print_help()?;
    anyhow::bail!("no command given; `netbackd run` and `netbackd demo` are not implemented yet");
}
