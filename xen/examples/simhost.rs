//! Runs a simulated Xen host until SIGINT/SIGTERM, for attaching frontends by hand:
//!
//! ```text
//! cargo run -p xen --example simhost -- [--root DIR] [DOMID[:FRAMES] ...]
//! ```
//!
//! Prints the sim root and the xenstore socket (export it as `XENSTORED_PATH` for the
//! `xenstore-*` tools), creates the given guests, and on a signal stops xenstored and
//! removes the root.
use std::process::ExitCode;
use xen::sim::{SimHost, SimOptions};

fn main() -> ExitCode {
    // Block the stop signals before any thread exists, so all threads inherit the mask and
    // sigwait below receives them.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset_t pointer; SIGINT/SIGTERM are valid signal numbers; the mask
    // change affects only this (so far single) thread.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut opts = SimOptions::default();
    let mut doms = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--root" {
            match args.next() {
                Some(r) => opts.root = Some(r.into()),
                None => return usage("--root needs a directory"),
            }
            continue;
        }
        let (d, f) = a.split_once(':').unwrap_or((&a, "4096"));
        match (d.parse::<u16>(), f.parse::<u32>()) {
            (Ok(d), Ok(f)) => doms.push((d, f)),
            _ => return usage(&format!("bad domain spec {a:?}")),
        }
    }
    let host = match SimHost::start(opts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("simhost: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (d, f) in doms {
        if let Err(e) = host.add_domain(d, &format!("guest{d}"), f, 8192) {
            eprintln!("simhost: dom{d}: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("root {}", host.root().display());
    println!("XENSTORED_PATH={}", host.xenstore_path());
    println!("domains {:?}", host.domains());
    let mut sig = 0;
    // SAFETY: `set` is initialised above and `sig` is a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    eprintln!("simhost: signal {sig}, stopping");
    match host.stop() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simhost: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("simhost: {msg}\nusage: simhost [--root DIR] [DOMID[:FRAMES] ...]");
    ExitCode::from(2)
}
