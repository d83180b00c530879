//! `netbackd run` configuration (TOML). Unknown keys are errors, so a typo is reported with
//! its name instead of being silently ignored.
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The control socket's default path (`ctl.socket`, and where `netbackd ctl` looks).
pub const DEFAULT_SOCKET: &str = "/run/netbackd/ctl.sock";

/// Which hypervisor interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    /// A real Xen dom0 (/dev/xen).
    Xen,
    /// The simulated host of `netbackd sim`.
    Sim,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub host: HostKind,
    #[serde(default)]
    pub sim: SimSection,
    #[serde(default)]
    pub eal: EalSection,
    /// DPDK ports by devargs ("net_tap0,iface=nbtap0", "0000:03:00.0").
    #[serde(default)]
    pub port: Vec<PortSection>,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub switch: SwitchSection,
    #[serde(default)]
    pub xen: XenSection,
    /// Per-vif settings.
    #[serde(default)]
    pub vif: Vec<VifSection>,
    #[serde(default)]
    pub ctl: CtlSection,
    #[serde(default)]
    pub log: LogSection,
}

/// The operator's control socket (`netbackd ctl`, `netbackd top`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtlSection {
    /// Path of the unix socket (mode 0600); "" disables it.
    #[serde(default = "default_ctl_socket")]
    pub socket: String,
}

fn default_ctl_socket() -> String {
    DEFAULT_SOCKET.into()
}

impl Default for CtlSection {
    fn default() -> Self {
        CtlSection {
            socket: default_ctl_socket(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `tracing` filter (`info`, `warn,control=debug`, ...). At start NETBACKD_LOG or
    /// RUST_LOG win over it; a SIGHUP applies it.
    pub filter: Option<String>,
}

/// How guest packet data is copied on a real dom0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyPath {
    /// `/dev/xen/gntdev` grant copy: works with any memory, on any dom0.
    Gntdev,
    /// `GNTTABOP_copy` hypercalls through privcmd, with the mbuf pool in pages dom0 grants
    /// to itself (gntalloc); ops on other memory fall back to gntdev.
    Privcmd,
}

/// Settings of the real dom0 host (`host = "xen"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XenSection {
    #[serde(default = "default_copy")]
    pub grant_copy: CopyPath,
    /// xenstored's socket; default: the socket if it exists, else /dev/xen/xenbus.
    pub xenstore: Option<String>,
}

fn default_copy() -> CopyPath {
    CopyPath::Gntdev
}

impl Default for XenSection {
    fn default() -> Self {
        XenSection {
            grant_copy: default_copy(),
            xenstore: None,
        }
    }
}

/// How frames are forwarded between vifs and the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchMode {
    /// MAC learning bridge (vif MACs static, uplink MACs learned).
    Learning,
    /// Every vif frame goes to the uplink and every uplink frame to every vif.
    CrossConnect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    #[serde(default = "default_mode")]
    pub mode: SwitchMode,
    /// Seconds after which a learned MAC is forgotten.
    #[serde(default = "default_ageing")]
    pub ageing_secs: u32,
    /// Bound on learned MACs (a guest spraying source MACs cannot grow memory).
    #[serde(default = "default_max_learned")]
    pub max_learned: u32,
}

fn default_mode() -> SwitchMode {
    SwitchMode::Learning
}
fn default_ageing() -> u32 {
    300
}
fn default_max_learned() -> u32 {
    8192
}

impl Default for SwitchSection {
    fn default() -> Self {
        SwitchSection {
            mode: default_mode(),
            ageing_secs: default_ageing(),
            max_learned: default_max_learned(),
        }
    }
}

/// One vif's settings, by (domid, devid).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VifSection {
    pub domid: u16,
    #[serde(default)]
    pub devid: u32,
    /// Access VLAN (1..=4094): frames of this vif are tagged toward the uplink.
    pub vlan: Option<u16>,
    /// Runs all of this vif's queues in this group (0..engine.groups) instead of the least
    /// loaded one per queue.
    pub group: Option<u16>,
    /// Guest TX rate limit, "BYTES,USECS" as the toolstack's `rate` key (which it wins
    /// over).
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the Prometheus endpoint (`GET /metrics`); "" disables it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Domains whose `netbackd_domain_*` totals are kept (the oldest forgotten first): a
    /// bound on series however many guests come and go.
    #[serde(default = "default_remembered")]
    pub remembered_domains: u32,
    /// Seconds a closed vif's last `netbackd_vif_*` series stay exported: longer than two
    /// scrape intervals, so a scrape sees how the vif ended.
    #[serde(default = "default_grace")]
    pub closed_vif_grace_secs: u32,
}

fn default_listen() -> String {
    "127.0.0.1:9750".into()
}
fn default_remembered() -> u32 {
    1024
}
fn default_grace() -> u32 {
    60
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: default_listen(),
            remembered_domains: default_remembered(),
            closed_vif_grace_secs: default_grace(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSection {
    /// The sim root printed by `netbackd sim` (required with host = "sim").
    pub root: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EalSection {
    /// EAL arguments passed through as given (e.g. "-l", "0-3", "--no-huge", "-m", "1024").
    #[serde(default)]
    pub args: Vec<String>,
    /// `--file-prefix` (unique per DPDK process on a host).
    #[serde(default = "default_prefix")]
    pub file_prefix: String,
    /// Mbufs in the pool.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Bytes of each mbuf's data room, headroom included. Unset: 2176 (2 KiB of data), or
    /// when port[0].mtu needs more, enough for its largest frame in one mbuf (9000 ->
    /// 9216): measured faster than chains of 2 KiB mbufs (RX scatter) at every size, at
    /// 4.2x the pool's memory (benches/results/data-room.txt).
    #[serde(default)]
    pub mbuf_data_room: Option<u16>,
}

/// The pool's data room when `eal.mbuf_data_room` is unset and frames fit 2 KiB.
pub const DATA_ROOM_DEFAULT: u16 = 2176;

impl EalSection {
    /// The pool's data room for a port of `mtu`: the configured one, else the default, or
    /// one frame of `mtu` (Ethernet header, a VLAN tag, CRC) after the headroom, in 128-byte
    /// steps.
    pub fn data_room(&self, mtu: u16) -> u16 {
        self.mbuf_data_room.unwrap_or_else(|| {
            let need = u32::from(mtu) + 14 + 4 + 4 + 128;
            need.div_ceil(128)
                .saturating_mul(128)
                .clamp(u32::from(DATA_ROOM_DEFAULT), u32::from(u16::MAX)) as u16
        })
    }
}

fn default_prefix() -> String {
    "netbackd".into()
}
fn default_mbufs() -> u32 {
    16383
}

impl Default for EalSection {
    fn default() -> Self {
        EalSection {
            args: Vec::new(),
            file_prefix: default_prefix(),
            mbufs: default_mbufs(),
            mbuf_data_room: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSection {
    pub devargs: String,
    /// IP MTU of the port (the wire's): frames up to this plus the Ethernet header (and a
    /// VLAN tag) are received and sent; checked against the device when it starts.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Groups (poll loops); each runs on an EAL worker lcore when there are enough.
    #[serde(default = "one")]
    pub groups: u32,
    #[serde(default = "default_budget")]
    pub budget: u32,
    #[serde(default = "default_backlog")]
    pub backlog_kib: u32,
    #[serde(default = "default_stall")]
    pub stall_secs: u32,
    /// 0: busy-poll always. Otherwise a group idle this long sleeps on its event channels
    /// (at most `max_sleep_us`) until a guest notifies: fewer cycles, more latency.
    #[serde(default)]
    pub idle_sleep_us: u32,
    #[serde(default = "default_max_sleep")]
    pub max_sleep_us: u32,
    /// Frames each group's handoff ring holds (frames for its vifs from other groups);
    /// what does not fit is dropped and counted (`netbackd_group_handoffs_total{result="ring_full"}`).
    #[serde(default = "default_handoff_ring")]
    pub handoff_ring: u32,
    /// Every this many seconds, move one queue from the busiest group to the idlest when
    /// their busy shares differ by `rebalance_gap_pct` or more; 0: never (placement stays
    /// as queues connected, or as `[[vif]] group` pins it).
    #[serde(default)]
    pub rebalance_secs: u32,
    #[serde(default = "default_gap")]
    pub rebalance_gap_pct: u32,
    /// Coalesce TCP segments into GSO frames toward guests that negotiated GSO.
    #[serde(default = "yes")]
    pub gro: bool,
}

fn default_gap() -> u32 {
    25
}

fn default_handoff_ring() -> u32 {
    dataplane::engine::HANDOFF_RING
}

fn default_max_sleep() -> u32 {
    1000
}

fn one() -> u32 {
    1
}
fn default_budget() -> u32 {
    64
}
fn default_backlog() -> u32 {
    512
}
fn default_stall() -> u32 {
    60
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            groups: 1,
            budget: 64,
            backlog_kib: 512,
            stall_secs: 60,
            idle_sleep_us: 0,
            max_sleep_us: default_max_sleep(),
            handoff_ring: default_handoff_ring(),
            rebalance_secs: 0,
            rebalance_gap_pct: default_gap(),
            gro: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    #[serde(default)]
    pub domid: u16,
    #[serde(default = "default_queues")]
    pub max_queues: u32,
    /// Offer frontends a control ring (`feature-ctrl-ring`) for receive-side hashing.
    #[serde(default = "yes")]
    pub ctrl_ring: bool,
    /// What a clean stop does to the vifs: leave them Connected for the next start to
    /// resume, or close them (the guests' frontends see the backend go away).
    #[serde(default)]
    pub on_stop: OnStop,
    /// How long a clean stop waits for guests to post RX buffers for the frames it already
    /// took in (they are dropped after it), milliseconds.
    #[serde(default = "default_stop_drain_ms")]
    pub stop_drain_ms: u32,
}

/// `backend.on_stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// Vifs stay Connected in xenstore; the next daemon resumes them where they are.
    #[default]
    Keep,
    /// Every vif is closed (backend state Closing, then Closed), as removing the backend
    /// would: the frontends tear down and reconnect when a backend offers InitWait again.
    Close,
}

fn default_stop_drain_ms() -> u32 {
    2000
}

fn yes() -> bool {
    true
}

fn default_queues() -> u32 {
    4
}

impl Default for BackendSection {
    fn default() -> Self {
        BackendSection {
            domid: 0,
            max_queues: 4,
            ctrl_ring: true,
            on_stop: OnStop::Keep,
            stop_drain_ms: default_stop_drain_ms(),
        }
    }
}

/// Command-line flags that override the file (they win over it).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub sim_root: Option<String>,
    pub metrics_listen: Option<String>,
    pub groups: Option<u32>,
    pub file_prefix: Option<String>,
}

impl Config {
    /// Parses and validates; errors name the file and the offending key.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        Config::parse_with(text, origin, &Overrides::default())
    }

    /// Loads `path`, applies the command line's overrides, then validates.
    pub fn load_with(path: &Path, o: &Overrides) -> anyhow::Result<Config> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {origin}"))?;
        Config::parse_with(&text, &origin, o)
    }

    fn parse_with(text: &str, origin: &str, o: &Overrides) -> anyhow::Result<Config> {
        let mut c: Config =
            toml::from_str(text).with_context(|| format!("{origin}: invalid configuration"))?;
        if let Some(r) = &o.sim_root {
            c.sim.root = Some(r.clone());
        }
        if let Some(l) = &o.metrics_listen {
            c.metrics.listen = l.clone();
        }
        if let Some(g) = o.groups {
            c.engine.groups = g;
        }
        if let Some(p) = &o.file_prefix {
            c.eal.file_prefix = p.clone();
        }
        c.validate()
            .with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(c)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.host == HostKind::Sim && self.sim.root.as_deref().unwrap_or("").is_empty() {
            bail!("sim.root: required with host = \"sim\" (the root `netbackd sim` prints)");
        }
        if self.port.is_empty() {
            bail!("port: at least one [[port]] with devargs is required");
        }
        for (i, p) in self.port.iter().enumerate() {
            if p.devargs.trim().is_empty() || p.devargs.contains(char::is_whitespace) {
                bail!(
                    "port[{i}].devargs: {:?} is not a DPDK devargs string",
                    p.devargs
                );
            }
            if !(68..=16_000).contains(&p.mtu) {
                bail!("port[{i}].mtu: {} is not in 68..=16000", p.mtu);
            }
        }
        if self.port.len() > 1 {
            bail!(
                "port: only one port is supported by this version ({} given)",
                self.port.len()
            );
        }
        if !(1..=64).contains(&self.engine.groups) {
            bail!("engine.groups: {} is not in 1..=64", self.engine.groups);
        }
        if !(1..=1024).contains(&self.engine.budget) {
            bail!("engine.budget: {} is not in 1..=1024", self.engine.budget);
        }
        if self.engine.backlog_kib < 64 {
            bail!(
                "engine.backlog_kib: {} is below 64 (one 64 KiB packet must fit)",
                self.engine.backlog_kib
            );
        }
        if self.engine.rebalance_secs > 3600 {
            bail!(
                "engine.rebalance_secs: {} is not in 0..=3600 (0: never)",
                self.engine.rebalance_secs
            );
        }
        if !(5..=100).contains(&self.engine.rebalance_gap_pct) {
            bail!(
                "engine.rebalance_gap_pct: {} is not in 5..=100",
                self.engine.rebalance_gap_pct
            );
        }
        if !(256..=1 << 20).contains(&self.engine.handoff_ring) {
            bail!(
                "engine.handoff_ring: {} is not in 256..=1048576",
                self.engine.handoff_ring
            );
        }
        if !(10..=1_000_000).contains(&self.engine.max_sleep_us) {
            bail!(
                "engine.max_sleep_us: {} is not in 10..=1000000",
                self.engine.max_sleep_us
            );
        }
        if !(1..=8).contains(&self.backend.max_queues) {
            bail!(
                "backend.max_queues: {} is not in 1..=8",
                self.backend.max_queues
            );
        }
        if self.backend.stop_drain_ms > 60_000 {
            bail!(
                "backend.stop_drain_ms: {} is not in 0..=60000",
                self.backend.stop_drain_ms
            );
        }
        if !(1..=86_400).contains(&self.switch.ageing_secs) {
            bail!(
                "switch.ageing_secs: {} is not in 1..=86400",
                self.switch.ageing_secs
            );
        }
        if !(16..=1_000_000).contains(&self.switch.max_learned) {
            bail!(
                "switch.max_learned: {} is not in 16..=1000000",
                self.switch.max_learned
            );
        }
        if !(1..=65_536).contains(&self.metrics.remembered_domains) {
            bail!(
                "metrics.remembered_domains: {} is not in 1..=65536",
                self.metrics.remembered_domains
            );
        }
        if self.metrics.closed_vif_grace_secs > 86_400 {
            bail!(
                "metrics.closed_vif_grace_secs: {} is not in 0..=86400",
                self.metrics.closed_vif_grace_secs
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in self.vif.iter().enumerate() {
            if let Some(vlan) = v.vlan {
                if !(1..=4094).contains(&vlan) {
                    bail!("vif[{i}].vlan: {vlan} is not in 1..=4094");
                }
            }
            if let Some(g) = v.group {
                if u32::from(g) >= self.engine.groups {
                    bail!(
                        "vif[{i}].group: {g} is not in 0..{} (engine.groups)",
                        self.engine.groups
                    );
                }
            }
            if let Some(r) = &v.rate {
                dataplane::credit::parse_rate(r).with_context(|| format!("vif[{i}].rate"))?;
            }
            if !seen.insert((v.domid, v.devid)) {
                bail!(
                    "vif[{i}]: dom{} devid {} is configured twice",
                    v.domid,
                    v.devid
                );
            }
        }
        if let Some(f) = &self.log.filter {
            f.parse::<tracing_subscriber::filter::Targets>()
                .map_err(|e| anyhow::anyhow!("log.filter: {f:?} is not a filter ({e})"))?;
        }
        if self.ctl.socket.contains('\0') {
            bail!("ctl.socket: {:?} is not a path", self.ctl.socket);
        }
        if let Some(r) = self.eal.mbuf_data_room.filter(|r| *r < 1152) {
            bail!("eal.mbuf_data_room: {r} is below 1152 (128 headroom + 1024 bytes of data)");
        }
        if self.eal.mbufs < 1023 {
            bail!("eal.mbufs: {} is below 1023", self.eal.mbufs);
        }
        if self.eal.file_prefix.is_empty() || self.eal.file_prefix.contains('/') {
            bail!(
                "eal.file_prefix: {:?} is not a usable prefix",
                self.eal.file_prefix
            );
        }
        Ok(())
    }
}

/// The keys whose values differ between `old` and `new` and cannot change while the
/// daemon runs (everything but the per-vif VLANs and rates, the switch's ageing time and
/// the log filter), named as in the file (`eal.args`, `port[0].devargs`, `vif[1].group`).
pub fn restart_keys(old: &Config, new: &Config) -> Vec<String> {
    fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    diff(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            (serde_json::Value::Array(x), serde_json::Value::Array(y))
                if x.len() == y.len() && x.iter().all(|v| v.is_object()) =>
            {
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    diff(&format!("{path}[{i}]"), v, w, out);
                }
            }
            _ if a != b => out.push(path.to_string()),
            _ => {}
        }
    }
    let strip = |c: &Config| {
        let mut v = serde_json::to_value(c).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("vif");
            o.remove("log");
            if let Some(s) = o.get_mut("switch").and_then(|s| s.as_object_mut()) {
                s.remove("ageing_secs");
            }
            if let Some(e) = o.get_mut("engine").and_then(|e| e.as_object_mut()) {
                e.remove("rebalance_secs");
                e.remove("rebalance_gap_pct");
            }
            // Read when the daemon stops: the operator may change them just before.
            if let Some(b) = o.get_mut("backend").and_then(|b| b.as_object_mut()) {
                b.remove("on_stop");
                b.remove("stop_drain_ms");
            }
        }
        v
    };
    let mut out = Vec::new();
    diff("", &strip(old), &strip(new), &mut out);
    // Group pins apply when a vif connects: a change would leave running vifs where they are.
    let pins = |c: &Config| -> std::collections::HashMap<(u16, u32), Option<u16>> {
        c.vif
            .iter()
            .map(|v| ((v.domid, v.devid), v.group))
            .collect()
    };
    let (a, b) = (pins(old), pins(new));
    for (cfg, other) in [(new, &a), (old, &b)] {
        for (i, v) in cfg.vif.iter().enumerate() {
            let here = v.group;
            let there = other.get(&(v.domid, v.devid)).copied().flatten();
            let key = format!("vif[{i}].group");
            if here != there && !out.contains(&key) && (std::ptr::eq(cfg, new) || here.is_some()) {
                out.push(key);
            }
        }
    }
    out
}

impl Config {
    /// Access VLANs by vif.
    pub fn vlans(&self) -> std::collections::HashMap<(u16, u32), u16> {
        self.vif
            .iter()
            .filter_map(|v| v.vlan.map(|vl| ((v.domid, v.devid), vl)))
            .collect()
    }

    /// Rates by vif (validated at load).
    pub fn rates(&self) -> std::collections::HashMap<(u16, u32), dataplane::credit::Rate> {
        self.vif
            .iter()
            .filter_map(|v| {
                let r = dataplane::credit::parse_rate(v.rate.as_deref()?).ok()?;
                Some(((v.domid, v.devid), r))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
host = "sim"
[sim]
root = "/dev/shm/netbackd-sim-1-0"
[eal]
args = ["--no-huge", "-m", "512", "--no-pci"]
[[port]]
devargs = "net_tap0,iface=nbtap0"
[engine]
groups = 1
"#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.host, HostKind::Sim);
        assert_eq!(c.eal.file_prefix, "netbackd");
        assert_eq!(
            (c.engine.budget, c.engine.backlog_kib, c.backend.max_queues),
            (64, 512, 4)
        );
        assert_eq!(
            (
                c.metrics.remembered_domains,
                c.metrics.closed_vif_grace_secs
            ),
            (1024, 60)
        );
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text, "t.toml").unwrap_err())
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(&GOOD.replace("groups = 1", "groups = 0")).contains("engine.groups"));
        assert!(
            err(&GOOD.replace("groups = 1", "grups = 1")).contains("grups"),
            "{}",
            err(&GOOD.replace("groups = 1", "grups = 1"))
        );
        assert!(err(&GOOD.replace("host = \"sim\"", "host = \"kvm\"")).contains("host"));
        assert!(
            err(&GOOD.replace("root = \"/dev/shm/netbackd-sim-1-0\"", "")).contains("sim.root")
        );
        assert!(
            err(&GOOD.replace("devargs = \"net_tap0,iface=nbtap0\"", "devargs = \"\""))
                .contains("port[0].devargs")
        );
        assert!(err(&GOOD.replace("groups = 1", "groups = \"many\"")).contains("groups"));
        assert!(err("not toml at all [").contains("t.toml"));
        assert!(err(&format!("{GOOD}[switch]\nmode = \"hub\"\n")).contains("mode"));
        assert!(err(&format!("{GOOD}[[vif]]\ndomid = 5\nvlan = 4095\n")).contains("vif[0].vlan"));
        assert!(
            err(&GOOD.replace("groups = 1", "groups = 1\nhandoff_ring = 16"))
                .contains("engine.handoff_ring: 16 is not in 256..=1048576")
        );
        assert!(
            err(&GOOD.replace("groups = 1", "groups = 1\nrebalance_gap_pct = 1"))
                .contains("engine.rebalance_gap_pct: 1 is not in 5..=100")
        );
        assert!(
            err(&GOOD.replace("groups = 1", "groups = 1\nrebalance_secs = 9999"))
                .contains("engine.rebalance_secs: 9999 is not in 0..=3600")
        );
        assert!(err(&GOOD.replace(
            "devargs = \"net_tap0,iface=nbtap0\"",
            "devargs = \"net_tap0,iface=nbtap0\"\nmtu = 50"
        ))
        .contains("port[0].mtu: 50 is not in 68..=16000"));
        assert!(err(&format!("{GOOD}[[vif]]\ndomid = 5\ngroup = 1\n"))
            .contains("vif[0].group: 1 is not in 0..1 (engine.groups)"));
        assert!(err(&format!(
            "{GOOD}[[vif]]\ndomid = 5\nvlan = 7\n[[vif]]\ndomid = 5\ndevid = 0\n"
        ))
        .contains("configured twice"));
        for bad in ["remembered_domains = 0", "remembered_domains = 65537"] {
            assert!(
                err(&format!("{GOOD}[metrics]\n{bad}\n")).contains("metrics.remembered_domains"),
                "{bad}"
            );
        }
        assert!(
            err(&format!("{GOOD}[metrics]\nclosed_vif_grace_secs = 86401\n"))
                .contains("metrics.closed_vif_grace_secs")
        );
        assert!(
            err(&format!("{GOOD}[metrics]\nclosed_vif_grace_secs = -1\n"))
                .contains("closed_vif_grace_secs")
        );
        let c = Config::parse(
            &format!("{GOOD}[metrics]\nremembered_domains = 2\nclosed_vif_grace_secs = 0\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            (
                c.metrics.remembered_domains,
                c.metrics.closed_vif_grace_secs
            ),
            (2, 0)
        );
        let c = Config::parse(
            &format!("{GOOD}[switch]\nmode = \"cross-connect\"\n[[vif]]\ndomid = 5\nvlan = 100\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.switch.mode, SwitchMode::CrossConnect);
        assert_eq!(c.vif[0].vlan, Some(100));
    }

    #[test]
    fn restart_keys_name_what_needs_a_restart() {
        let old = Config::parse(&format!("{GOOD}[[vif]]\ndomid = 5\nvlan = 7\n"), "t").unwrap();
        // Live keys: VLANs, rates, ageing, log filter, new vifs without a pin.
        let live = Config::parse(
            &format!(
                "{GOOD}[switch]\nageing_secs = 20\n[log]\nfilter = \"debug\"\n[[vif]]\ndomid = 5\nvlan = 9\nrate = \"1000,1000\"\n[[vif]]\ndomid = 6\nrate = \"5,5\"\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(restart_keys(&old, &live), Vec::<String>::new());
        let dead = Config::parse(
            &(GOOD
                .replace("groups = 1", "groups = 2")
                .replace("\"512\"", "\"256\"")
                .replace("nbtap0", "nbtap1")
                + "[switch]\nmode = \"cross-connect\"\n[ctl]\nsocket = \"/tmp/x\"\n[[vif]]\ndomid = 5\ngroup = 1\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            restart_keys(&old, &dead),
            [
                "ctl.socket",
                "eal.args",
                "engine.groups",
                "port[0].devargs",
                "switch.mode",
                "vif[0].group"
            ]
        );
        assert!(
            err(&format!("{GOOD}[[vif]]\ndomid = 5\nrate = \"fast\"\n")).contains("vif[0].rate")
        );
        assert!(err(&format!("{GOOD}[log]\nfilter = \"x=loud\"\n")).contains("log.filter"));
    }

    #[test]
    fn data_room_follows_the_mtu_unless_set() {
        let e = EalSection::default();
        assert_eq!(e.data_room(1500), DATA_ROOM_DEFAULT);
        assert_eq!(e.data_room(2000), 2176);
        assert_eq!(e.data_room(2100), 2304);
        assert_eq!(e.data_room(9000), 9216);
        assert_eq!(e.data_room(16_000), 16_256);
        let set = EalSection {
            mbuf_data_room: Some(4096),
            ..EalSection::default()
        };
        assert_eq!(set.data_room(9000), 4096);
        assert!(err(&GOOD.replace("[eal]", "[eal]\nmbuf_data_room = 1000"))
            .contains("eal.mbuf_data_room: 1000"));
        assert!(
            err(&GOOD.replace("[eal]", "[eal]\nmbuf_data_room = 70000")).contains("mbuf_data_room")
        );
    }
}
