//! Prometheus metrics over HTTP (`GET /metrics`). Values are read from the engine's atomics
//! at scrape time; the lcores are never stopped or asked for anything.
//!
//! Direction names are from the guest's point of view: `tx` = what the guest sent.
//!
//! `netbackd_vif_*` series are per vif queue and per connection (kept a grace period after
//! it ends); `netbackd_domain_*` series are per-domain event totals for the daemon's
//! lifetime (see `ledger`). They count different things and are not to be summed.
use crate::ledger::{Domains, Vifs};
use dataplane::engine::{GroupCounters, QueueCounters};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One queue of one vif, as the control plane last saw it.
#[derive(Clone)]
pub struct QueueView {
    pub domid: u16,
    pub devid: u32,
    pub queue: u16,
    /// The guest's name (empty when xenstore has none).
    pub name: String,
    pub state: u32,
    pub counters: Arc<QueueCounters>,
}

/// What the HTTP thread reads; the control thread updates `vifs` every step and records
/// its events in `domains`.
pub struct Shared {
    pub vifs: Mutex<Vifs>,
    pub domains: Mutex<Domains>,
    pub groups: Vec<Arc<GroupCounters>>,
    /// The uplink port and its name, for link state and DPDK xstats; taken away on shutdown
    /// so the port closes (and returns its mbufs) before the pool goes.
    pub port: Mutex<Option<(String, Arc<pmd::Port>)>>,
    /// The mbuf pool, for its in-use count (a leak shows as a count that never comes back
    /// down); taken away on shutdown with the port.
    pub pool: Mutex<Option<Arc<pmd::Mempool>>>,
    /// How vifs' frames from the wire reach their groups (NIC flow rule or software).
    pub steering: Arc<control::SteeringCounters>,
}

/// The registry of one scrape, and every family declared in it: the registry leaves out a
/// family without samples, but its `# HELP`/`# TYPE` lines still say the metric exists
/// (dashboards and alert rules over `netbackd_domain_rogue_total` find it before the first
/// rogue guest, and a typo in them is caught).
#[derive(Default)]
struct Families {
    r: Registry,
    declared: Vec<(String, String, &'static str)>,
}

impl Families {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(c.clone()))?;
        self.declared.push((name.into(), help.into(), "counter"));
        Ok(c)
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.r.register(Box::new(g.clone()))?;
        self.declared.push((name.into(), help.into(), "gauge"));
        Ok(g)
    }

    fn encode(self) -> prometheus::Result<String> {
        let families = self.r.gather();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        let mut text = String::from_utf8_lossy(&out).into_owned();
        for (name, help, kind) in &self.declared {
            if !families.iter().any(|f| f.name() == name) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        Ok(text)
    }
}

/// Renders the text exposition format.
pub fn render(s: &Shared) -> prometheus::Result<String> {
    let mut f = Families::default();
    let r = &mut f;
    let q = ["domid", "devid", "queue", "name"];
    let tx_p = r.counter(
        "netbackd_vif_tx_packets_total",
        "Packets the guest sent (guest TX) that netbackd forwarded.",
        &q,
    )?;
    let tx_b = r.counter(
        "netbackd_vif_tx_bytes_total",
        "Bytes of guest TX packets forwarded.",
        &q,
    )?;
    let rx_p = r.counter(
        "netbackd_vif_rx_packets_total",
        "Packets delivered to the guest (guest RX).",
        &q,
    )?;
    let rx_b = r.counter(
        "netbackd_vif_rx_bytes_total",
        "Bytes delivered to the guest.",
        &q,
    )?;
    let drops = r.counter(
        "netbackd_vif_drops_total",
        "Packets dropped, by direction and reason.",
        &["domid", "devid", "queue", "name", "direction", "reason"],
    )?;
    let thr = r.counter(
        "netbackd_vif_credit_throttled_total",
        "Times guest TX waited for rate credit.",
        &q,
    )?;
    let stalls = r.counter(
        "netbackd_vif_rx_stalls_total",
        "Times the guest stopped posting receive buffers (XSA-392).",
        &q,
    )?;
    let gro = r.counter(
        "netbackd_vif_rx_gro_total",
        "GRO toward the guest: coalesced GSO frames (kind=frames) and the wire segments they carry (kind=segments).",
        &["domid", "devid", "queue", "name", "kind"],
    )?;
    let notes = r.counter(
        "netbackd_vif_notifications_total",
        "Event-channel notifications sent to the guest.",
        &q,
    )?;
    let rogue = r.counter(
        "netbackd_vif_rogue_total",
        "Times the frontend broke the protocol and its queue was disabled.",
        &q,
    )?;
    let state = r.gauge(
        "netbackd_vif_state",
        "xenbus state of the vif's backend (4 = Connected, 6 = Closed).",
        &q,
    )?;
    for ((domid, devid, queue, name), v) in s.vifs.lock().unwrap_or_else(|e| e.into_inner()).iter()
    {
        let (d, n, qu) = (domid.to_string(), devid.to_string(), queue.to_string());
        let l = [d.as_str(), n.as_str(), qu.as_str(), name.as_str()];
        let c = v.totals();
        tx_p.with_label_values(&l).inc_by(c.tx_packets);
        tx_b.with_label_values(&l).inc_by(c.tx_bytes);
        rx_p.with_label_values(&l).inc_by(c.rx_packets);
        rx_b.with_label_values(&l).inc_by(c.rx_bytes);
        thr.with_label_values(&l).inc_by(c.tx_credit_throttled);
        stalls.with_label_values(&l).inc_by(c.rx_stalls);
        for (kind, n) in [("frames", c.rx_gro_frames), ("segments", c.rx_gro_segments)] {
            let [d, n2, qu, na] = l;
            gro.with_label_values(&[d, n2, qu, na, kind]).inc_by(n);
        }
        notes.with_label_values(&l).inc_by(c.notifications);
        rogue.with_label_values(&l).inc_by(c.rogue);
        state.with_label_values(&l).set(i64::from(v.state));
        for (dir, reason, n) in [
            ("tx", "runt", c.tx_drop_runt),
            ("tx", "too_many_slots", c.tx_drop_too_many_slots),
            ("tx", "frag_overflow", c.tx_drop_frag_overflow),
            ("tx", "copy_error", c.tx_drop_copy_error),
            ("tx", "no_mbuf", c.tx_drop_no_mbuf),
            ("tx", "offload", c.tx_drop_offload),
            ("tx", "switch", c.tx_drop_switch),
            ("rx", "backlog_full", c.rx_drop_backlog_full),
            ("rx", "stalled", c.rx_drop_stalled),
            ("rx", "copy_error", c.rx_drop_copy_error),
            ("rx", "too_big", c.rx_drop_too_big),
        ] {
            drops
                .with_label_values(&[l[0], l[1], l[2], l[3], dir, reason])
                .inc_by(n);
        }
    }
    let dom_rogue = r.counter(
        "netbackd_domain_rogue_total",
        "Queues of the domain's vifs disabled for breaking the netif protocol, by verdict; \
         kept after the vifs are gone, for the daemon's lifetime.",
        &["domid", "name", "reason"],
    )?;
    let dom_closed = r.counter(
        "netbackd_domain_closed_total",
        "Vifs of the domain the backend closed with an error node, by reason: the protocol \
         verdict, or the xenstore key it refused; kept after the vifs are gone.",
        &["domid", "name", "reason"],
    )?;
    let evictions = r.counter(
        "netbackd_domain_evictions_total",
        "Domains whose netbackd_domain_* totals were forgotten to stay within \
         metrics.remembered_domains (oldest last event first).",
        &[],
    )?;
    {
        let doms = s.domains.lock().unwrap_or_else(|e| e.into_inner());
        for ((domid, name), d) in doms.iter() {
            let id = domid.to_string();
            for (why, n) in &d.rogue {
                dom_rogue
                    .with_label_values(&[id.as_str(), name.as_str(), why])
                    .inc_by(*n);
            }
            for (why, n) in &d.closed {
                dom_closed
                    .with_label_values(&[id.as_str(), name.as_str(), why.as_str()])
                    .inc_by(*n);
            }
        }
        evictions
            .with_label_values::<&str>(&[])
            .inc_by(doms.evictions());
    }
    let gl = ["group"];
    let it = r.counter(
        "netbackd_group_iterations_total",
        "Poll-loop iterations.",
        &gl,
    )?;
    let busy = r.counter(
        "netbackd_group_busy_iterations_total",
        "Iterations that moved packets.",
        &gl,
    )?;
    let pk = r.counter(
        "netbackd_group_batched_packets_total",
        "Packets moved (batch size = this / busy iterations).",
        &gl,
    )?;
    let calls = r.counter(
        "netbackd_group_grant_copy_calls_total",
        "Grant-copy calls (one per direction per busy iteration).",
        &gl,
    )?;
    let ops = r.counter(
        "netbackd_group_grant_copy_ops_total",
        "Grant-copy operations.",
        &gl,
    )?;
    let full = r.counter(
        "netbackd_group_port_tx_full_total",
        "Packets the port refused (its TX ring full).",
        &gl,
    )?;
    let cycles = r.counter(
        "netbackd_group_cycles_total",
        "TSC cycles in poll iterations that moved packets (busy) and that did not (idle).",
        &["group", "state"],
    )?;
    let dir_cycles = r.counter(
        "netbackd_group_direction_cycles_total",
        "TSC cycles of the guest-TX (tx) and guest-RX (rx) parts of iterations that moved \
         packets that way (cycles per packet = this / netbackd_group_direction_packets_total).",
        &["group", "direction"],
    )?;
    let dir_packets = r.counter(
        "netbackd_group_direction_packets_total",
        "Packets moved by guest TX (tx) and guest RX (rx).",
        &["group", "direction"],
    )?;
    let gnotes = r.counter(
        "netbackd_group_notifications_total",
        "Event-channel notifications the group sent to its guests.",
        &gl,
    )?;
    let handoffs = r.counter(
        "netbackd_group_handoffs_total",
        "Frames for a vif of another group, by outcome: sent through that group's ring, \
         dropped because it was full, received for a queue that had gone (stale), passed on \
         to the group a queue had just moved to (forwarded), or dropped while their queue \
         was being moved and more were held than a backlog (held_full).",
        &["group", "result"],
    )?;
    let moves = r.counter(
        "netbackd_group_queue_moves_total",
        "Queues moved out of the group and into it (rebalancing or `netbackd ctl move`).",
        &["group", "direction"],
    )?;
    for (i, c) in s.groups.iter().enumerate() {
        let i = i.to_string();
        let l = [i.as_str()];
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        it.with_label_values(&l).inc_by(g(&c.iterations));
        busy.with_label_values(&l).inc_by(g(&c.busy_iterations));
        pk.with_label_values(&l).inc_by(g(&c.batched_packets));
        calls.with_label_values(&l).inc_by(g(&c.grant_copy_calls));
        ops.with_label_values(&l).inc_by(g(&c.grant_copy_ops));
        full.with_label_values(&l).inc_by(g(&c.port_tx_full));
        for (state, a) in [("busy", &c.busy_cycles), ("idle", &c.idle_cycles)] {
            cycles.with_label_values(&[i.as_str(), state]).inc_by(g(a));
        }
        for (dir, cy, pk) in [
            ("tx", &c.tx_cycles, &c.tx_packets),
            ("rx", &c.rx_cycles, &c.rx_packets),
        ] {
            dir_cycles
                .with_label_values(&[i.as_str(), dir])
                .inc_by(g(cy));
            dir_packets
                .with_label_values(&[i.as_str(), dir])
                .inc_by(g(pk));
        }
        gnotes.with_label_values(&l).inc_by(g(&c.notifications));
        for (dir, a) in [("out", &c.queues_moved_out), ("in", &c.queues_moved_in)] {
            moves.with_label_values(&[i.as_str(), dir]).inc_by(g(a));
        }
        for (result, a) in [
            ("sent", &c.handoffs),
            ("ring_full", &c.handoff_ring_full),
            ("stale", &c.handoff_stale),
            ("forwarded", &c.handoff_forwarded),
            ("held_full", &c.move_held_dropped),
        ] {
            handoffs
                .with_label_values(&[i.as_str(), result])
                .inc_by(g(a));
        }
    }
    if let Some(pool) = s.pool.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        let mbufs = r.gauge(
            "netbackd_mempool_mbufs",
            "The mbuf pool: mbufs in use (in rings, backlogs, ports' queues) and available.",
            &["state"],
        )?;
        mbufs
            .with_label_values(&["in_use"])
            .set(i64::from(pool.in_use()));
        mbufs
            .with_label_values(&["available"])
            .set(i64::from(pool.available()));
    }
    let port = s.port.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((name, port)) = &port {
        let pl = ["port"];
        let up = r.gauge(
            "netbackd_port_link_up",
            "1 when the port's link is up.",
            &pl,
        )?;
        let speed = r.gauge(
            "netbackd_port_link_speed_mbps",
            "Link speed in Mbit/s.",
            &pl,
        )?;
        let xs = r.gauge(
            "netbackd_port_xstat",
            "The port's DPDK extended statistics (rte_eth_xstats_get), by name.",
            &["port", "stat"],
        )?;
        if let Ok(link) = port.link() {
            up.with_label_values(&[name]).set(i64::from(link.up));
            speed
                .with_label_values(&[name])
                .set(i64::from(link.speed_mbps));
        }
        for (stat, v) in port.xstats().unwrap_or_default() {
            xs.with_label_values(&[name.as_str(), stat.as_str()])
                .set(v as i64);
        }
        let pdrops = r.counter(
            "netbackd_port_drops_total",
            "Frames the port lost (rte_eth_stats): received in error (e.g. longer than \
             port.mtu), missed (RX queue full), no mbuf for them, failed to send; and frames \
             netbackd did not send because they exceed port.mtu (tx_too_big).",
            &["port", "reason"],
        )?;
        let too_big: u64 = s
            .groups
            .iter()
            .map(|g| g.port_tx_too_big.load(Ordering::Relaxed))
            .sum();
        if let Ok(st) = port.stats() {
            for (reason, v) in [
                ("rx_errors", st.ierrors),
                ("rx_missed", st.imissed),
                ("rx_nombuf", st.rx_nombuf),
                ("tx_errors", st.oerrors),
                ("tx_too_big", too_big),
            ] {
                pdrops.with_label_values(&[name.as_str(), reason]).inc_by(v);
            }
        }
        let steer = r.counter(
            "netbackd_port_steering_total",
            "With several groups: flow rules installed in the port to deliver a vif's frames to \
             its group's queue (installed), and vif connections left to software handoff \
             because the port cannot steer (software).",
            &["port", "result"],
        )?;
        for (result, a) in [
            ("installed", &s.steering.installed),
            ("software", &s.steering.software),
        ] {
            steer
                .with_label_values(&[name.as_str(), result])
                .inc_by(a.load(Ordering::Relaxed));
        }
    }
    f.encode()
}

/// Serves `GET /metrics` on `listen` from a thread until the process ends.
/// Returns the address it listens on (the real port when `listen` asked for port 0).
pub fn serve(listen: &str, shared: Arc<Shared>) -> anyhow::Result<String> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("metrics.listen {listen}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| listen.to_string(), |a| a.to_string());
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let resp = if req.url() == "/metrics" {
                    match render(&shared) {
                        Ok(body) => tiny_http::Response::from_string(body).with_header(
                            "Content-Type: text/plain; version=0.0.4"
                                .parse::<tiny_http::Header>()
                                .expect("static header"),
                        ),
                        Err(e) => tiny_http::Response::from_string(format!("error: {e}\n"))
                            .with_status_code(500),
                    }
                } else {
                    tiny_http::Response::from_string("netbackd: see /metrics\n")
                        .with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::{Happened, VifEvent};
    use std::time::{Duration, Instant};

    fn shared() -> Shared {
        Shared {
            vifs: Mutex::new(Vifs::new(Duration::from_secs(60))),
            domains: Mutex::new(Domains::new(8)),
            groups: Vec::new(),
            port: Mutex::new(None),
            pool: Mutex::new(None),
            steering: Default::default(),
        }
    }

    #[test]
    fn empty_families_are_declared() {
        let text = render(&shared()).unwrap();
        for (m, kind) in [
            ("netbackd_vif_rogue_total", "counter"),
            ("netbackd_vif_state", "gauge"),
            ("netbackd_domain_rogue_total", "counter"),
            ("netbackd_domain_closed_total", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {m} {kind}\n")), "{text}");
            assert!(!text.contains(&format!("\n{m}{{")), "{text}");
        }
        assert!(
            text.contains("\nnetbackd_domain_evictions_total 0\n"),
            "{text}"
        );
    }

    #[test]
    fn closed_vifs_and_domains() {
        let s = shared();
        let c = Arc::new(QueueCounters::default());
        c.tx_packets.store(4, Ordering::Relaxed);
        c.rogue.store(1, Ordering::Relaxed);
        c.disabled
            .set(dataplane::engine::Disable::ImpossibleRxIndex)
            .unwrap();
        let events = [
            VifEvent {
                domid: 9,
                devid: 1,
                name: "web".into(),
                what: Happened::Closed("impossible_rx_index".into()),
            },
            VifEvent {
                domid: 9,
                devid: 1,
                name: "web".into(),
                what: Happened::Disconnected(vec![c]),
            },
        ];
        for e in &events {
            s.domains.lock().unwrap().record(e);
        }
        s.vifs
            .lock()
            .unwrap()
            .update(&events, &[], &Default::default(), Instant::now());
        let text = render(&s).unwrap();
        for line in [
            r#"netbackd_domain_rogue_total{domid="9",name="web",reason="impossible_rx_index"} 1"#,
            r#"netbackd_domain_closed_total{domid="9",name="web",reason="impossible_rx_index"} 1"#,
            r#"netbackd_vif_tx_packets_total{devid="1",domid="9",name="web",queue="0"} 4"#,
            r#"netbackd_vif_rogue_total{devid="1",domid="9",name="web",queue="0"} 1"#,
            r#"netbackd_vif_state{devid="1",domid="9",name="web",queue="0"} 6"#,
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
        }
    }
}
