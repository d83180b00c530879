//! `netbackd sim` as a user runs it: starts the simulated host with a guest and a vif that
//! the real xenstore tools can see, stops on SIGTERM, and leaves nothing behind.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sim_runs_and_cleans_up() {
    let parent = std::env::temp_dir().join(format!("nbd-simcli-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netbackd"))
        .args([
            "sim",
            "--guest",
            "9:web",
            "--vif",
            "9:0:00:16:3e:00:00:09",
            "--parent",
        ])
        .arg(&parent)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let root = lines.next().unwrap().unwrap();
    let root = root
        .strip_prefix("sim root: ")
        .expect("first line names the root")
        .to_string();
    let xs_line = lines.next().unwrap().unwrap();
    let sock = xs_line
        .strip_prefix("xenstore: XENSTORED_PATH=")
        .unwrap()
        .to_string();
    assert!(lines.next().unwrap().unwrap().starts_with("started in "));
    let out = Command::new("xenstore-read")
        .args([
            "/local/domain/0/backend/vif/9/0/mac",
            "/local/domain/9/name",
        ])
        .env("XENSTORED_PATH", &sock)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "00:16:3e:00:00:09\nweb\n"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success());
    assert!(!std::path::Path::new(&root).exists(), "sim root removed");
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
    std::fs::remove_dir(&parent).unwrap();
}
