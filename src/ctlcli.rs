//! The client side of the control socket: `netbackd ctl ...` (human tables, or the
//! daemon's JSON with `--json`) and `netbackd top` (a live per-vif table).
use crate::ctl::{
    request, Answer, GroupsInfo, PortInfo, Request, SwitchInfo, VifInfo, DEFAULT_SOCKET,
};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The socket to use: `--socket`, else `$NETBACKD_CTL_SOCKET`, else the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("NETBACKD_CTL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn ask(path: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let a: Answer = request(path, req)?;
    if !a.ok {
        bail!("{}", a.error.unwrap_or_else(|| "refused".into()));
    }
    Ok(a.result.unwrap_or(serde_json::Value::Null))
}

/// `netbackd ctl`: one request, its answer printed.
pub fn ctl(path: &Path, json: bool, req: Request) -> anyhow::Result<()> {
    let v = ask(path, &req)?;
    let text = if json {
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        match &req {
            Request::ShowVifs { .. } => vifs_table(&serde_json::from_value::<Vec<VifInfo>>(v)?),
            Request::ShowGroups { clear } => {
                let mut t = groups_table(&serde_json::from_value(v)?);
                if *clear {
                    t.push_str("(counters cleared: a new interval starts now)\n");
                }
                t
            }
            Request::ShowPorts {} => ports_table(&serde_json::from_value::<Vec<PortInfo>>(v)?),
            Request::ShowSwitch {} => switch_table(&serde_json::from_value(v)?),
            _ => format!("{}\n", v.as_str().unwrap_or(&v.to_string())),
        }
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.1}"))
}

/// `show vifs`.
pub fn vifs_table(vifs: &[VifInfo]) -> String {
    let mut s = String::new();
    if vifs.is_empty() {
        s.push_str("no vifs\n");
        return s;
    }
    for v in vifs {
        let _ = writeln!(
            s,
            "vif{}.{} guest {} state {} vlan {} rate {}",
            v.domid,
            v.devid,
            if v.name.is_empty() { "-" } else { &v.name },
            v.state_name,
            opt(v.vlan),
            v.rate.as_deref().unwrap_or("unlimited"),
        );
        if v.queues.is_empty() {
            s.push_str("  no queues\n");
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<2} {:>3} {:>26} {:>26} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "q",
            "grp",
            "tx ring prod/cons/rsp",
            "rx ring prod/cons/rsp",
            "backlog",
            "credit",
            "tx pkts",
            "tx bytes",
            "rx pkts",
            "rx bytes",
        );
        for q in &v.queues {
            let ring = |r: Option<crate::ctl::Ring>| {
                r.map_or_else(
                    || "(group not answering)".into(),
                    |r| format!("{}/{}/{}", r.req_prod, r.req_cons, r.rsp_prod),
                )
            };
            let _ = writeln!(
                s,
                "  {:<2} {:>3} {:>26} {:>26} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10}",
                q.queue,
                q.group,
                ring(q.tx_ring),
                ring(q.rx_ring),
                opt(q.backlog_packets),
                q.credit_bytes.map_or_else(|| "-".into(), |c| c.to_string()),
                q.tx_packets,
                q.tx_bytes,
                q.rx_packets,
                q.rx_bytes,
            );
            let nonzero: Vec<String> = q
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let _ = writeln!(
                s,
                "     drops: {}; notifications {}, credit waits {}, rx stalls {}{}{}",
                if nonzero.is_empty() {
                    "none".to_string()
                } else {
                    nonzero.join(" ")
                },
                q.notifications,
                q.credit_throttled,
                q.rx_stalls,
                if q.stalled == Some(true) {
                    ", STALLED"
                } else {
                    ""
                },
                q.disabled
                    .as_deref()
                    .map(|d| format!(", DISABLED: {d}"))
                    .unwrap_or_default(),
            );
        }
    }
    s
}

/// `show groups`.
pub fn groups_table(g: &GroupsInfo) -> String {
    let mut s = format!("interval: {:.1} s\n", g.interval_secs);
    let _ = writeln!(
        s,
        "{:<5} {:<8} {:>6} {:>12} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9}  queues",
        "group",
        "lcore",
        "busy%",
        "packets",
        "cyc/pkt",
        "tx cyc/p",
        "rx cyc/p",
        "batch",
        "ops/call",
        "notes/pkt",
        "handoffs",
    );
    for x in &g.groups {
        let _ = writeln!(
            s,
            "{:<5} {:<8} {:>6} {:>12} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9}  {}",
            x.group,
            x.lcore.map_or_else(|| "thread".into(), |l| l.to_string()),
            opt1(x.busy_pct),
            x.counts.batched_packets,
            opt1(x.cycles_per_packet),
            opt1(x.tx_cycles_per_packet),
            opt1(x.rx_cycles_per_packet),
            opt1(x.mean_batch),
            opt1(x.ops_per_call),
            x.notifications_per_packet
                .map_or_else(|| "-".into(), |v| format!("{v:.3}")),
            x.counts.handoffs,
            if x.queues.is_empty() {
                "-".to_string()
            } else {
                x.queues.join(" ")
            },
        );
    }
    for x in &g.groups {
        let c = &x.counts;
        let _ = writeln!(
            s,
            "group {}: busy cycles {}, idle cycles {}, iterations {} ({} busy), guest tx {} / rx {} packets, grant copies {} ops in {} calls, port tx full {}, handoffs ring full {} stale {}",
            x.group,
            c.busy_cycles,
            c.idle_cycles,
            c.iterations,
            c.busy_iterations,
            c.tx_packets,
            c.rx_packets,
            c.grant_copy_ops,
            c.grant_copy_calls,
            c.port_tx_full,
            c.handoff_ring_full,
            c.handoff_stale,
        );
    }
    s
}

/// `show ports`.
pub fn ports_table(ports: &[PortInfo]) -> String {
    let mut s = String::new();
    for p in ports {
        let _ = writeln!(
            s,
            "port {} ({}): link {}, {} Mbit/s{}, rx queues {}/{}, tx queues {}/{}",
            p.name,
            p.driver,
            if p.link_up { "up" } else { "down" },
            p.speed_mbps,
            if p.full_duplex { " full duplex" } else { "" },
            p.rx_queues,
            p.max_rx_queues,
            p.tx_queues,
            p.max_tx_queues,
        );
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        let _ = writeln!(
            s,
            "  tx offloads by the port: {}; in software: {}",
            list(&p.offloads),
            list(&p.software)
        );
        let _ = writeln!(
            s,
            "  stats: {}",
            p.stats
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        s.push_str("  xstats:\n");
        for (k, v) in &p.xstats {
            let _ = writeln!(s, "    {k:<32} {v}");
        }
    }
    s
}

/// `show switch`.
pub fn switch_table(w: &SwitchInfo) -> String {
    let mut s = format!(
        "switch: {}, ageing {:.0} s, {} entries\n",
        w.mode,
        w.ageing_secs,
        w.entries.len()
    );
    let _ = writeln!(
        s,
        "{:<6} {:<17} {:<10} {:<8} {:>8}  groups",
        "vlan", "mac", "port", "type", "age s"
    );
    for e in &w.entries {
        let _ = writeln!(
            s,
            "{:<6} {:<17} {:<10} {:<8} {:>8}  {}",
            opt(e.vlan),
            e.mac,
            e.port,
            if e.learned { "learned" } else { "static" },
            opt1(e.age_secs),
            e.groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    if !w.unanswered.is_empty() {
        let _ = writeln!(
            s,
            "groups not answering (tables missing): {:?}",
            w.unanswered
        );
    }
    s
}

/// One vif's totals at one instant, for `top`.
#[derive(Clone, Copy, Default)]
struct Totals {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
    drops: u64,
}

/// Every vif's totals at one instant.
type Sample = (Instant, BTreeMap<(u16, u32), Totals>);

fn totals(v: &VifInfo) -> Totals {
    let mut t = Totals::default();
    for q in &v.queues {
        t.tx_packets += q.tx_packets;
        t.tx_bytes += q.tx_bytes;
        t.rx_packets += q.rx_packets;
        t.rx_bytes += q.rx_bytes;
        t.drops += q.drops.values().sum::<u64>();
    }
    t
}

/// The `top` screen for one sample (`prev`: the one before and its time).
fn top_screen(
    path: &Path,
    vifs: &[VifInfo],
    groups: &GroupsInfo,
    prev: Option<&Sample>,
    prev_groups: Option<&[crate::ctl::GroupSample]>,
    now: Instant,
) -> String {
    let mut s = format!(
        "netbackd top - {} - {} vif(s), {} group(s)   (guest tx = what the guest sent)\n",
        path.display(),
        vifs.len(),
        groups.groups.len()
    );
    for (i, g) in groups.groups.iter().enumerate() {
        // Over the last sample when there is one, else since the interval began.
        let busy = match prev_groups.and_then(|p| p.get(i)) {
            Some(p) => {
                let d = g.counts.since(p);
                (d.busy_cycles + d.idle_cycles > 0)
                    .then(|| d.busy_cycles as f64 * 100.0 / (d.busy_cycles + d.idle_cycles) as f64)
            }
            None => g.busy_pct,
        };
        let _ = write!(
            s,
            "group {} busy {}%  ",
            g.group,
            busy.map_or_else(|| "-".into(), |b| format!("{b:.0}"))
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "{:<10} {:<10} {:<10} {:>4} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>7} {:>8}",
        "vif",
        "guest",
        "state",
        "grp",
        "tx packets",
        "rx packets",
        "tx pkt/s",
        "rx pkt/s",
        "tx Mbit/s",
        "rx Mbit/s",
        "drops",
        "backlog"
    );
    for v in vifs {
        let t = totals(v);
        let (tp, rp, tb, rb) =
            match prev.and_then(|(t0, m)| m.get(&(v.domid, v.devid)).map(|o| (t0, o))) {
                Some((t0, o)) => {
                    let dt = now.duration_since(*t0).as_secs_f64().max(1e-3);
                    (
                        t.tx_packets.saturating_sub(o.tx_packets) as f64 / dt,
                        t.rx_packets.saturating_sub(o.rx_packets) as f64 / dt,
                        t.tx_bytes.saturating_sub(o.tx_bytes) as f64 * 8.0 / dt / 1e6,
                        t.rx_bytes.saturating_sub(o.rx_bytes) as f64 * 8.0 / dt / 1e6,
                    )
                }
                None => (0.0, 0.0, 0.0, 0.0),
            };
        let mut grps: Vec<usize> = v.queues.iter().map(|q| q.group).collect();
        grps.dedup();
        let backlog: u64 = v.queues.iter().filter_map(|q| q.backlog_packets).sum();
        let _ = writeln!(
            s,
            "{:<10} {:<10} {:<10} {:>4} {:>12} {:>12} {:>10.0} {:>10.0} {:>10.1} {:>10.1} {:>7} {:>8}",
            format!("vif{}.{}", v.domid, v.devid),
            if v.name.is_empty() { "-" } else { &v.name },
            v.state_name,
            grps.iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(","),
            t.tx_packets,
            t.rx_packets,
            tp,
            rp,
            tb,
            rb,
            t.drops,
            backlog,
        );
    }
    s
}

/// `netbackd top`: redraws the table every `interval` until `stop` (or `count` samples).
pub fn top(
    path: &Path,
    interval: Duration,
    count: Option<u64>,
    stop: &'static AtomicBool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<Sample> = None;
    let mut prev_groups: Option<Vec<crate::ctl::GroupSample>> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| n < c) {
        let vifs: Vec<VifInfo> =
            serde_json::from_value(ask(path, &Request::ShowVifs { vif: None })?)
                .context("show vifs")?;
        let groups: GroupsInfo =
            serde_json::from_value(ask(path, &Request::ShowGroups { clear: false })?)
                .context("show groups")?;
        let now = Instant::now();
        let screen = top_screen(
            path,
            &vifs,
            &groups,
            prev.as_ref(),
            prev_groups.as_deref(),
            now,
        );
        prev_groups = Some(groups.groups.iter().map(|g| g.counts).collect::<Vec<_>>());
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear: the table stays in place.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        out.write_all(screen.as_bytes())?;
        if !tty {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        prev = Some((
            now,
            vifs.iter()
                .map(|v| ((v.domid, v.devid), totals(v)))
                .collect(),
        ));
        n += 1;
        let until = Instant::now() + interval;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
