//! `netbackd demo --duration 15`, as CI runs it: the real daemon, simulated guests, a
//! net_tap uplink in a namespace (root) — its summary line must show traffic, answered
//! pings and intact TCP streams, and it must leave nothing behind.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netbackd");

fn number_before(line: &str, word: &str) -> u64 {
    let i = line
        .find(word)
        .unwrap_or_else(|| panic!("{word:?} in {line}"));
    line[..i]
        .split_whitespace()
        .last()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("number before {word:?} in {line}"))
}

#[test]
fn demo_runs_and_cleans_up() {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--duration",
            "15",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "demo failed");
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("netbackd demo: OK"), "{last}");
    assert!(number_before(last, "packets (") > 10_000, "{last}");
    assert!(number_before(last, "intact") >= 2, "{last}");
    assert_eq!(number_before(last, "corrupt"), 0, "{last}");
    // pings A/B: at least 90% answered.
    let p = last
        .split("pings ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let (a, b) = p.split_once('/').unwrap();
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(b >= 20 && a * 10 >= b * 9, "{last}");
    // The live table was shown, with both guests Connected.
    assert!(stdout.contains("vif1.0    alpha    Connected"), "{stdout}");
    assert!(stdout.contains("vif2.0    bravo    Connected"), "{stdout}");
    // Nothing left: no namespace, temp dir, sim root or process of this demo.
    let pid = stdout
        .lines()
        .find_map(|l| l.split("netbackd-demo-").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .to_string();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("netbackd-demo-{pid}")));
    assert!(!std::path::Path::new(&format!("/tmp/netbackd-demo-{pid}")).exists());
    let root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo: simulated Xen host at "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert!(!std::path::Path::new(root).exists(), "{root} left behind");
}

/// Ctrl-C (SIGINT) stops the demo cleanly: summary line last, exit 0, nothing left behind.
#[test]
fn demo_stops_on_sigint() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--uplink",
            "ring",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(6));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("demo did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    eprintln!("{out}");
    assert!(status.success(), "{status:?}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("netbackd demo: OK"), "{last}");
    assert!(number_before(last, "packets (") > 0, "{last}");
    let root = out
        .lines()
        .find_map(|l| l.strip_prefix("demo: simulated Xen host at "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    assert!(!std::path::Path::new(root).exists(), "{root} left behind");
}
