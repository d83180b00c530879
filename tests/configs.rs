//! The configurations shipped in deploy/ are valid (`netbackd run --check`), and broken
//! ones are refused with the key named and exit code 2.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_netbackd");

fn check(path: &str, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["run", "--check", "--config", path])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn shipped_configs_are_valid() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = check(&format!("{dir}/deploy/netbackd.toml"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CrossConnect") || text.contains("Learning"),
        "{text}"
    );
    assert!(text.contains("vlan: Some(\n                100"), "{text}");
    let out = check(&format!("{dir}/deploy/netbackd-sim.toml"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The examples show the metrics keys with their defaults.
    for f in ["netbackd.toml", "netbackd-sim.toml"] {
        let text =
            String::from_utf8_lossy(&check(&format!("{dir}/deploy/{f}"), &[]).stdout).into_owned();
        assert!(
            text.contains("remembered_domains: 1024") && text.contains("closed_vif_grace_secs: 60"),
            "{f}: {text}"
        );
    }
}

#[test]
fn overrides_are_validated_and_win() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let cfg = format!("{dir}/deploy/netbackd.toml");
    let out = check(&cfg, &["--groups", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("engine.groups"));
    let out = check(
        &cfg,
        &["--groups", "3", "--metrics-listen", "127.0.0.1:9999"],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("groups: 3") && text.contains("127.0.0.1:9999"),
        "{text}"
    );
}

#[test]
fn broken_configs_name_the_key() {
    let dir = std::env::temp_dir().join(format!("nbd-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "host = \"kvm\"\n[[port]]\ndevargs = \"net_null0\"\n",
            "host",
        ),
        (
            "host = \"sim\"\n[[port]]\ndevargs = \"net_null0\"\n",
            "sim.root",
        ),
        ("host = \"xen\"\n", "port"),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[engine]\nbudget = 0\n",
            "engine.budget",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[metrics]\nlisten = 5\n",
            "listen",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[[vif]]\ndomid = 70000\n",
            "domid",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[eal]\nmbuf = 5\n",
            "mbuf",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"a b\"\n",
            "port[0].devargs",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[metrics]\nremembered_domains = 0\n",
            "metrics.remembered_domains",
        ),
        (
            "host = \"xen\"\n[[port]]\ndevargs = \"net_null0\"\n[metrics]\nclosed_vif_grace_secs = 100000\n",
            "metrics.closed_vif_grace_secs",
        ),
        ("\u{0}\u{1}garbage", "invalid configuration"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let p = dir.join(format!("c{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = check(p.to_str().unwrap(), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(err.contains(key), "case {i}: {err:?} should name {key}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = check("/nonexistent/netbackd.toml", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/netbackd.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `host = "xen"` on a machine without Xen: refused at start with a message that says so.
#[test]
fn xen_host_refused_without_xen() {
    if std::path::Path::new("/dev/xen/gntdev").exists() {
        eprintln!("skipped: this machine is a Xen dom0");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nbd-cfgx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("xen.toml");
    std::fs::write(
        &p,
        "host = \"xen\"\n[eal]\nargs = [\"--no-huge\", \"-m\", \"64\", \"--no-pci\"]\n[[port]]\ndevargs = \"net_null0\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not running on Xen"), "{err}");
    assert!(err.contains("/dev/xen/gntdev"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
