//! `pktgen`'s results: one [`Row`] per point (all fields go to `--json`), the table on
//! stdout, and the charts (`--plot DIR`, SVG and PNG with plotters).
use crate::harness::{Direction, Measured};
use crate::median;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One point of the run, with its netbackd rounds and baselines.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub dir: Direction,
    pub size: String,
    pub frame_len: usize,
    pub vifs: usize,
    /// Groups (one L2 domain, polled by one thread) and, for g2g, the percent of vif
    /// pairs split across two groups.
    pub groups: usize,
    pub cross: u8,
    /// Frames handed between groups per packet counted.
    pub handoffs_per_packet: f64,
    /// Each group's Mpps (median over rounds), counted on the queues it runs.
    pub group_mpps: Vec<f64>,
    pub wire: String,
    /// Median over rounds of each round's median interval rate.
    pub mpps: f64,
    /// Smallest and largest interval rate of all rounds.
    pub mpps_min: f64,
    pub mpps_max: f64,
    pub gbps: f64,
    pub gbps_min: f64,
    pub gbps_max: f64,
    pub cycles_per_packet: f64,
    /// Busy-iteration cycles per packet (the engine's own cost).
    pub busy_cycles_per_packet: f64,
    /// Idle iterations / iterations.
    pub idle_share: f64,
    /// Idle-iteration cycles / all iteration cycles (what decides `generator_limited`).
    pub idle_time_share: f64,
    pub copy_ops_per_call: f64,
    pub mean_batch: f64,
    pub notifications_per_packet: f64,
    /// Drops by reason, summed over the measured intervals of all rounds.
    pub drops: BTreeMap<String, u64>,
    /// All drops but `rx_drop_backlog_full` (loss that is not the wire's excess).
    pub drops_total: u64,
    /// `rx_drop_backlog_full`: frames the wire offered beyond what the guests took (a
    /// `net_null` source offers without limit, so guest RX points always have some).
    pub overload_drops: u64,
    /// Idle share above the threshold: the guests (generator/sink) limit, not the group.
    pub generator_limited: bool,
    pub rounds: Vec<Measured>,
    pub vhost_mpps: Option<f64>,
    /// Each vhost-user round's per-interval rates (pps).
    pub vhost_rounds: Vec<Vec<f64>>,
    pub memcpy_mpps: Option<f64>,
    pub ratio_vs_vhost_user: Option<f64>,
    pub ratio_vs_memcpy: Option<f64>,
    /// memif wire: netbackd's and the peer testpmd's counters compared.
    pub memif_check: Option<String>,
    pub notes: Vec<String>,
}

impl Row {
    pub fn from_rounds(
        p: &crate::harness::PointSpec,
        wire: &str,
        rounds: Vec<Measured>,
        idle_limit: f64,
    ) -> Row {
        let med = |f: &dyn Fn(&Measured) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        let all_pps: Vec<f64> = rounds.iter().flat_map(|m| m.pps.iter().copied()).collect();
        let all_bps: Vec<f64> = rounds.iter().flat_map(|m| m.bps.iter().copied()).collect();
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let mut drops = BTreeMap::new();
        for m in &rounds {
            for (k, v) in &m.drops {
                *drops.entry(k.clone()).or_insert(0) += v;
            }
        }
        let idle = med(&|m| m.idle_time_share);
        let handoffs: u64 = rounds.iter().map(|m| m.handoffs).sum();
        let packets: u64 = rounds.iter().map(|m| m.packets).sum();
        Row {
            dir: p.dir,
            size: p.size.label(),
            frame_len: p.size.bytes(),
            vifs: p.vifs,
            groups: p.groups,
            cross: p.cross,
            handoffs_per_packet: if packets == 0 {
                0.0
            } else {
                handoffs as f64 / packets as f64
            },
            group_mpps: (0..rounds.iter().map(|m| m.group_pps.len()).max().unwrap_or(0))
                .map(|g| med(&|m| m.group_pps.get(g).copied().unwrap_or(0.0)) / 1e6)
                .collect(),
            wire: wire.into(),
            mpps: med(&|m| median(&m.pps)) / 1e6,
            mpps_min: min(&all_pps) / 1e6,
            mpps_max: max(&all_pps) / 1e6,
            gbps: med(&|m| median(&m.bps)) / 1e9,
            gbps_min: min(&all_bps) / 1e9,
            gbps_max: max(&all_bps) / 1e9,
            cycles_per_packet: med(&|m| m.cycles_per_packet),
            busy_cycles_per_packet: med(&|m| m.busy_cycles_per_packet),
            idle_share: med(&|m| m.idle_share),
            idle_time_share: idle,
            copy_ops_per_call: med(&|m| m.copy_ops_per_call),
            mean_batch: med(&|m| m.mean_batch),
            notifications_per_packet: med(&|m| m.notifications_per_packet),
            overload_drops: drops.get("rx_drop_backlog_full").copied().unwrap_or(0),
            drops_total: drops
                .iter()
                .filter(|(k, _)| *k != "rx_drop_backlog_full")
                .map(|(_, v)| v)
                .sum(),
            drops,
            generator_limited: idle > idle_limit,
            rounds,
            vhost_mpps: None,
            vhost_rounds: Vec::new(),
            memcpy_mpps: None,
            ratio_vs_vhost_user: None,
            ratio_vs_memcpy: None,
            memif_check: None,
            notes: Vec::new(),
        }
    }

    /// Sets the baselines (pps per vhost round, memcpy pps) and the ratios.
    pub fn set_baselines(&mut self, vhost_rounds: Vec<Vec<f64>>, memcpy: Option<f64>) {
        let meds: Vec<f64> = vhost_rounds
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| median(r))
            .collect();
        if !meds.is_empty() {
            let v = median(&meds) / 1e6;
            self.vhost_mpps = Some(v);
            self.ratio_vs_vhost_user = (v > 0.0).then(|| self.mpps / v);
        }
        self.vhost_rounds = vhost_rounds;
        if let Some(m) = memcpy.filter(|m| *m > 0.0) {
            self.memcpy_mpps = Some(m / 1e6);
            self.ratio_vs_memcpy = Some(self.mpps * 1e6 / m);
        }
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.prec$}"))
}

/// The table printed on stdout.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<5} {:>6} {:>4} {:>7} {:>13} {:>7} {:>7} {:>7} {:>5} {:>5} {:>6} {:>5} {:>7} {:>6} {:>9} {:>5} {:>6} {:>6} {:>6} {:>6} {:>3} {:>4} {:>6}",
        "dir", "size", "vifs", "Mpps", "min-max", "Gbit/s", "cyc/pkt", "busy/pk", "idle%", "idlT%", "ops/cp", "batch",
        "ntf/pkt", "drops", "overload", "limit", "vhost", "x vh", "memcpy", "x mc", "grp", "xg%", "hof/pk"
    );
    let _ = s.pop();
    let _ = writeln!(s, " per-group Mpps");
    for r in rows {
        let _ = writeln!(
            s,
            "{:<5} {:>6} {:>4} {:>7.3} {:>13} {:>7.2} {:>7.0} {:>7.0} {:>5.1} {:>5.1} {:>6.1} {:>5.1} {:>7.4} {:>6} {:>9} {:>5} {:>6} {:>6} {:>6} {:>6} {:>3} {:>4} {:>6.3}",
            r.dir.name(),
            r.size,
            r.vifs,
            r.mpps,
            format!("{:.2}-{:.2}", r.mpps_min, r.mpps_max),
            r.gbps,
            r.cycles_per_packet,
            r.busy_cycles_per_packet,
            r.idle_share * 100.0,
            r.idle_time_share * 100.0,
            r.copy_ops_per_call,
            r.mean_batch,
            r.notifications_per_packet,
            r.drops_total,
            r.overload_drops,
            if r.generator_limited { "gen" } else { "group" },
            opt(r.vhost_mpps, 3),
            opt(r.ratio_vs_vhost_user, 3),
            opt(r.memcpy_mpps, 1),
            opt(r.ratio_vs_memcpy, 3),
            r.groups,
            r.cross,
            r.handoffs_per_packet,
        );
        let _ = s.pop();
        let per: Vec<String> = r.group_mpps.iter().map(|m| format!("{m:.2}")).collect();
        let _ = writeln!(s, " {}", per.join("/"));
    }
    let _ = writeln!(
        s,
        "Mpps: median over rounds of the median interval rate; min-max over all intervals; \
         Gbit/s of frame bytes (no FCS); cyc/pkt: TSC on the group lcore / packets; \
         busy/pk: TSC of busy iterations / packets (the engine's cost); idle%: idle \
         iterations; idlT%: cycles in idle iterations; \
         ops/cp: grant-copy ops per call; batch: packets per busy iteration; drops: loss \
         by reason (below); overload: rx_drop_backlog_full, the wire's excess; limit 'gen': \
         idle time > threshold (the guests limit); x vh, x mc: netbackd/vhost-user, \
         netbackd/memcpy; grp: groups (one L2 domain, all polled by the one group thread); \
         xg%: g2g pairs split over two groups; hof/pk: frames handed between groups per packet; \
         per-group Mpps: the point's count (guest TX, RX or both) on each group's queues."
    );
    // Same run: a frame handed between groups against one kept in its group, per point.
    for r in rows.iter().filter(|r| r.cross == 100) {
        if let Some(same) = rows.iter().find(|o| {
            o.cross == 0
                && o.dir.name() == r.dir.name()
                && o.size == r.size
                && o.vifs == r.vifs
                && o.groups == r.groups
        }) {
            if same.busy_cycles_per_packet > 0.0 {
                let _ = writeln!(
                    s,
                    "  cross-group cost {} {} x{} grp {}: {:.0} vs {:.0} busy cycles/packet \
                     (cross/same {:.3})",
                    r.dir.name(),
                    r.size,
                    r.vifs,
                    r.groups,
                    r.busy_cycles_per_packet,
                    same.busy_cycles_per_packet,
                    r.busy_cycles_per_packet / same.busy_cycles_per_packet
                );
            }
        }
    }
    for r in rows {
        let nonzero: Vec<String> = r
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !nonzero.is_empty() {
            let _ = writeln!(
                s,
                "  drops {} {} x{}: {}",
                r.dir.name(),
                r.size,
                r.vifs,
                nonzero.join(" ")
            );
        }
        if let Some(c) = &r.memif_check {
            let _ = writeln!(s, "  memif {} {} x{}: {c}", r.dir.name(), r.size, r.vifs);
        }
        for n in &r.notes {
            let _ = writeln!(s, "  note {} {} x{}: {n}", r.dir.name(), r.size, r.vifs);
        }
    }
    s
}

/// Registers DejaVu Sans (Debian `fonts-dejavu-core`) as plotters' "sans-serif" font for
/// the bitmap backend (ab_glyph: no fontconfig). Once per process.
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        let bytes =
            std::fs::read(path).map_err(|e| format!("{path}: {e} (install fonts-dejavu-core)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable TrueType font"))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// Writes `<dir>_{mpps,gbps}.{svg,png}` per direction: netbackd (one line per vif count)
/// beside vhost-user and memcpy, against frame size (GSO points are left out).
pub fn plot(rows: &[Row], out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    let mut dirs: Vec<Direction> = rows.iter().map(|r| r.dir).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let rs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.dir == dir && r.size != "gso64k")
            .collect();
        if rs.is_empty() {
            continue;
        }
        for gbps in [false, true] {
            let name = format!("{}_{}", dir.name(), if gbps { "gbps" } else { "mpps" });
            let svg = out.join(format!("{name}.svg"));
            let png = out.join(format!("{name}.png"));
            {
                let b = plotters::backend::SVGBackend::new(&svg, (900, 560));
                chart(b, &rs, dir, gbps)?;
            }
            {
                let b = plotters::backend::BitMapBackend::new(&png, (900, 560));
                chart(b, &rs, dir, gbps)?;
            }
            files.push(svg);
            files.push(png);
        }
    }
    Ok(files)
}

type Series = (String, Vec<(f64, f64)>);

fn chart<DB: plotters::prelude::DrawingBackend>(
    backend: DB,
    rows: &[&Row],
    dir: Direction,
    gbps: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let val = |r: &Row, mpps: f64| {
        if gbps {
            mpps * 1e6 * r.frame_len as f64 * 8.0 / 1e9
        } else {
            mpps
        }
    };
    let mut series: Vec<Series> = Vec::new();
    let mut vifs: Vec<usize> = rows.iter().map(|r| r.vifs).collect();
    vifs.sort();
    vifs.dedup();
    for v in &vifs {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.vifs == *v)
            .map(|r| (r.frame_len as f64, val(r, r.mpps)))
            .collect();
        let label = if vifs.len() == 1 {
            "netbackd".to_string()
        } else {
            format!("netbackd ({v} vifs)")
        };
        series.push((label, pts));
    }
    let base = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.vifs == vifs[0])
            .filter_map(|r| f(r).map(|m| (r.frame_len as f64, val(r, m))))
            .collect()
    };
    let vh = base(&|r| r.vhost_mpps);
    if !vh.is_empty() {
        series.push(("vhost-user (testpmd)".into(), vh));
    }
    let mc = base(&|r| r.memcpy_mpps);
    if !mc.is_empty() {
        series.push(("memcpy".into(), mc));
    }
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.partial_cmp(&b.0).expect("no NaN"));
    }
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let xs: Vec<f64> = rows.iter().map(|r| r.frame_len as f64).collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min) * 0.8;
    let xmax = xs.iter().copied().fold(0.0, f64::max) * 1.25;
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let what = if gbps { "Gbit/s" } else { "Mpps" };
    let title = format!(
        "guest {} ({}): {what} against frame size",
        dir.name(),
        match dir {
            Direction::Tx => "guest -> port",
            Direction::Rx => "port -> guest",
            Direction::G2g => "vif -> vif",
            Direction::Bidir => "both ways",
        }
    );
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0.0..ymax)?;
    c.configure_mesh()
        .x_labels(8)
        .x_desc("frame size, bytes (no FCS)")
        .y_desc(what)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let col = colors[i % colors.len()];
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, col.filled())))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
