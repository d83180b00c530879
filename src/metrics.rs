//! Prometheus metrics over HTTP (`GET /metrics`). Values are read from the engine's atomics
//! at scrape time; the lcores are never stopped or asked for anything.
//!
//! Direction names are from the guest's point of view: `tx` = what the guest sent.
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

/// What the HTTP thread reads; the control thread replaces `queues` when vifs change.
#[derive(Default)]
pub struct Shared {
    pub queues: Mutex<Vec<QueueView>>,
    pub groups: Vec<Arc<GroupCounters>>,
    /// The uplink port and its name, for link state and DPDK xstats; taken away on shutdown
    /// so the port closes (and returns its mbufs) before the pool goes.
    pub port: Mutex<Option<(String, Arc<pmd::Port>)>>,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Renders the text exposition format.
pub fn render(s: &Shared) -> prometheus::Result<String> {
    let r = Registry::new();
    let q = ["domid", "devid", "queue", "name"];
    let tx_p = counter(
        &r,
        "netbackd_vif_tx_packets_total",
        "Packets the guest sent (guest TX) that netbackd forwarded.",
        &q,
    )?;
    let tx_b = counter(
        &r,
        "netbackd_vif_tx_bytes_total",
        "Bytes of guest TX packets forwarded.",
        &q,
    )?;
    let rx_p = counter(
        &r,
        "netbackd_vif_rx_packets_total",
        "Packets delivered to the guest (guest RX).",
        &q,
    )?;
    let rx_b = counter(
        &r,
        "netbackd_vif_rx_bytes_total",
        "Bytes delivered to the guest.",
        &q,
    )?;
    let drops = counter(
        &r,
        "netbackd_vif_drops_total",
        "Packets dropped, by direction and reason.",
        &["domid", "devid", "queue", "name", "direction", "reason"],
    )?;
    let thr = counter(
        &r,
        "netbackd_vif_credit_throttled_total",
        "Times guest TX waited for rate credit.",
        &q,
    )?;
    let stalls = counter(
        &r,
        "netbackd_vif_rx_stalls_total",
        "Times the guest stopped posting receive buffers (XSA-392).",
        &q,
    )?;
    let notes = counter(
        &r,
        "netbackd_vif_notifications_total",
        "Event-channel notifications sent to the guest.",
        &q,
    )?;
    let rogue = counter(
        &r,
        "netbackd_vif_rogue_total",
        "Times the frontend broke the protocol and its queue was disabled.",
        &q,
    )?;
    let state = IntGaugeVec::new(
        Opts::new(
            "netbackd_vif_state",
            "xenbus state of the vif's backend (4 = Connected).",
        ),
        &q,
    )?;
    r.register(Box::new(state.clone()))?;
    for v in s.queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let (d, n, qu) = (
            v.domid.to_string(),
            v.devid.to_string(),
            v.queue.to_string(),
        );
        let l = [d.as_str(), n.as_str(), qu.as_str(), v.name.as_str()];
        let c = &v.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        tx_p.with_label_values(&l).inc_by(g(&c.tx_packets));
        tx_b.with_label_values(&l).inc_by(g(&c.tx_bytes));
        rx_p.with_label_values(&l).inc_by(g(&c.rx_packets));
        rx_b.with_label_values(&l).inc_by(g(&c.rx_bytes));
        thr.with_label_values(&l).inc_by(g(&c.tx_credit_throttled));
        stalls.with_label_values(&l).inc_by(g(&c.rx_stalls));
        notes.with_label_values(&l).inc_by(g(&c.notifications));
        rogue.with_label_values(&l).inc_by(g(&c.rogue));
        state.with_label_values(&l).set(i64::from(v.state));
        for (dir, reason, a) in [
            ("tx", "runt", &c.tx_drop_runt),
            ("tx", "too_many_slots", &c.tx_drop_too_many_slots),
            ("tx", "frag_overflow", &c.tx_drop_frag_overflow),
            ("tx", "copy_error", &c.tx_drop_copy_error),
            ("tx", "no_mbuf", &c.tx_drop_no_mbuf),
            ("tx", "offload", &c.tx_drop_offload),
            ("tx", "switch", &c.tx_drop_switch),
            ("rx", "backlog_full", &c.rx_drop_backlog_full),
            ("rx", "stalled", &c.rx_drop_stalled),
            ("rx", "copy_error", &c.rx_drop_copy_error),
            ("rx", "too_big", &c.rx_drop_too_big),
        ] {
            drops
                .with_label_values(&[l[0], l[1], l[2], l[3], dir, reason])
                .inc_by(g(a));
        }
    }
    let gl = ["group"];
    let it = counter(
        &r,
        "netbackd_group_iterations_total",
        "Poll-loop iterations.",
        &gl,
    )?;
    let busy = counter(
        &r,
        "netbackd_group_busy_iterations_total",
        "Iterations that moved packets.",
        &gl,
    )?;
    let pk = counter(
        &r,
        "netbackd_group_batched_packets_total",
        "Packets moved (batch size = this / busy iterations).",
        &gl,
    )?;
    let calls = counter(
        &r,
        "netbackd_group_grant_copy_calls_total",
        "Grant-copy calls (one per direction per busy iteration).",
        &gl,
    )?;
    let ops = counter(
        &r,
        "netbackd_group_grant_copy_ops_total",
        "Grant-copy operations.",
        &gl,
    )?;
    let full = counter(
        &r,
        "netbackd_group_port_tx_full_total",
        "Packets the port refused (its TX ring full).",
        &gl,
    )?;
    let cycles = counter(
        &r,
        "netbackd_group_cycles_total",
        "TSC cycles in poll iterations that moved packets (busy) and that did not (idle).",
        &["group", "state"],
    )?;
    let handoffs = counter(
        &r,
        "netbackd_group_handoffs_total",
        "Frames for a vif of another group, by outcome: sent through that group's ring, \
         dropped because it was full, or received for a queue that had gone (stale).",
        &["group", "result"],
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
        for (result, a) in [
            ("sent", &c.handoffs),
            ("ring_full", &c.handoff_ring_full),
            ("stale", &c.handoff_stale),
        ] {
            handoffs
                .with_label_values(&[i.as_str(), result])
                .inc_by(g(a));
        }
    }
    let port = s.port.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some((name, port)) = &port {
        let pl = ["port"];
        let up = IntGaugeVec::new(
            Opts::new("netbackd_port_link_up", "1 when the port's link is up."),
            &pl,
        )?;
        let speed = IntGaugeVec::new(
            Opts::new("netbackd_port_link_speed_mbps", "Link speed in Mbit/s."),
            &pl,
        )?;
        let xs = IntGaugeVec::new(
            Opts::new(
                "netbackd_port_xstat",
                "The port's DPDK extended statistics (rte_eth_xstats_get), by name.",
            ),
            &["port", "stat"],
        )?;
        r.register(Box::new(up.clone()))?;
        r.register(Box::new(speed.clone()))?;
        r.register(Box::new(xs.clone()))?;
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
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
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
