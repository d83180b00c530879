//! Runs tiny `pktgen` points (64 bytes; guest TX and RX with one vif, and g2g across two
//! groups; no baselines) as a subprocess and checks their JSON: packets, fields, no loss.
use std::process::Command;

#[test]
fn pktgen_tiny_point_json() {
    let (stdout, rows) = run_pktgen("test", &["--sizes", "64", "--dirs", "tx,rx", "--vifs", "1"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (r, dir) in rows.iter().zip(["tx", "rx"]) {
        assert_eq!(r["dir"], dir);
        assert_eq!(r["frame_len"], 64);
        for f in [
            "mpps",
            "mpps_min",
            "mpps_max",
            "gbps",
            "cycles_per_packet",
            "idle_share",
            "copy_ops_per_call",
            "mean_batch",
            "notifications_per_packet",
            "drops",
            "drops_total",
            "overload_drops",
            "generator_limited",
            "rounds",
        ] {
            assert!(r.get(f).is_some(), "{dir}: field {f} missing");
        }
        assert!(r["mpps"].as_f64().unwrap() > 0.0, "{dir}: no rate");
        let m = &r["rounds"][0];
        assert!(m["packets"].as_u64().unwrap() > 0, "{dir}: no packets");
        assert_eq!(m["pps"].as_array().unwrap().len(), 2);
        assert!(r["cycles_per_packet"].as_f64().unwrap() > 0.0);
        assert_eq!(r["drops_total"], 0, "{dir}: loss: {}", r["drops"]);
        // What the guests counted matches the engine over the whole run.
        if dir == "tx" {
            assert_eq!(m["guest_tx_packets"], m["total_tx_packets"]);
        } else {
            // The wire keeps offering after the guest stops: up to one RX ring of
            // packets is delivered that the guest never reads.
            let (g, e) = (
                m["guest_rx_packets"].as_u64().unwrap(),
                m["total_rx_packets"].as_u64().unwrap(),
            );
            assert!(g <= e && e - g <= 256, "guest {g}, engine {e}");
            assert_eq!(m["guest_rx_errors"], 0);
        }
    }
    // Its scratch directory and DPDK runtime directory are gone.
    let pid = out_pid(&stdout);
    assert!(!std::env::temp_dir()
        .join(format!("nbd-pktgen-{pid}"))
        .exists());
    assert!(!std::path::Path::new(&format!("/var/run/dpdk/nbd-pktgen-{pid}")).exists());
    assert!(stdout.contains("dir "), "table printed: {stdout}");
}

/// The pid pktgen prints in its summary line (`pid N`).
fn out_pid(stdout: &str) -> u32 {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|w| w.trim_end_matches(',').parse().ok())
        .expect("pid in the summary line")
}

/// Two groups, g2g with every pair split across them: each packet is handed from one group
/// to the other exactly once, with no loss; with no pair split, none is.
#[test]
fn pktgen_cross_group_points() {
    let (_, rows) = run_pktgen(
        "groups",
        &[
            "--sizes", "64", "--dirs", "g2g", "--vifs", "2", "--groups", "2", "--cross", "0,100",
        ],
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (r, cross) in rows.iter().zip([0u64, 100]) {
        assert_eq!(
            (r["groups"].as_u64(), r["cross"].as_u64()),
            (Some(2), Some(cross))
        );
        assert!(r["rounds"][0]["packets"].as_u64().unwrap() > 0);
        assert_eq!(r["drops_total"], 0, "loss: {}", r["drops"]);
        let h = r["handoffs_per_packet"].as_f64().unwrap();
        let want = cross as f64 / 100.0;
        assert!(
            (h - want).abs() < 0.02,
            "cross {cross}%: {h} handoffs per packet"
        );
    }
}

/// Runs a short pktgen (`args` plus a tiny timing and no baselines) and returns its stdout
/// and the points of its JSON.
fn run_pktgen(tag: &str, args: &[&str]) -> (String, Vec<serde_json::Value>) {
    let json = std::env::temp_dir().join(format!("pktgen-{tag}-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_pktgen"))
        .args(args)
        .args([
            "--warmup",
            "0.2",
            "--intervals",
            "2",
            "--interval-ms",
            "200",
            "--rounds",
            "1",
            "--no-baseline",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run pktgen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pktgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("json written");
    let _ = std::fs::remove_file(&json);
    let rows: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    (stdout, rows.as_array().expect("array of points").clone())
}
