//! What `/metrics` remembers beyond the vifs the control plane serves right now, so that a
//! guest closed for breaking the protocol is still visible to a scrape that comes seconds
//! later (a vif's queues and their counters go within ~100 ms of the close).
//!
//! Two kinds of series, never to be added together:
//! - per vif queue (`netbackd_vif_*`, [`Vifs`]): the counts of that queue's connections.
//!   When a connection ends its final counts stay exported for a grace period; a new
//!   connection of the same queue within it continues from them, so the series does not
//!   go backwards while it is exported. After the grace period without a connection the
//!   series goes (and a later connection starts from 0, after that gap).
//! - per domain (`netbackd_domain_*`, [`Domains`]): events counted once each, when the
//!   control plane reports them (a disabled queue when it is taken back, a vif when the
//!   backend closes it). They live as long as the daemon and are not derived from the
//!   per-vif series, so the grace period can neither double them nor lose them; a domain
//!   re-attaching keeps adding to its totals. At most `remembered_domains` domains are
//!   kept: the one whose last event is oldest is forgotten first, and counted.
use crate::metrics::QueueView;
use control::{Happened, VifEvent};
use dataplane::engine::QueueCounters;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

macro_rules! snap {
    ($($f:ident),* $(,)?) => {
        /// A plain copy of one queue's counters, or their sum over several connections.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snap {
            $(pub $f: u64,)*
        }

        impl Snap {
            pub fn of(c: &QueueCounters) -> Snap {
                Snap {
                    $($f: c.$f.load(Ordering::Relaxed),)*
                }
            }

            fn add(&mut self, o: &Snap) {
                $(self.$f = self.$f.saturating_add(o.$f);)*
            }
        }
    };
}

dataplane::with_queue_counters!(snap);

/// Labels of a vif queue's series: domid, devid, queue, the guest's name.
pub type VifKey = (u16, u32, u16, String);

/// One vif queue's series.
#[derive(Debug)]
pub struct VifSeries {
    /// The vif's xenbus state (Closed once it is no longer served).
    pub state: u32,
    /// The current connection's counters, written by a group.
    live: Option<Arc<QueueCounters>>,
    /// Final counts of the earlier connections still exported.
    base: Snap,
    /// When the last connection ended (None while connected).
    gone_since: Option<Instant>,
}

impl VifSeries {
    /// What the series shows: earlier connections plus the current one.
    pub fn totals(&self) -> Snap {
        let mut t = self.base;
        if let Some(c) = &self.live {
            t.add(&Snap::of(c));
        }
        t
    }
}

/// The per-vif series: those connected now, and those closed less than `grace` ago.
#[derive(Debug)]
pub struct Vifs {
    grace: Duration,
    series: BTreeMap<VifKey, VifSeries>,
}

impl Vifs {
    pub fn new(grace: Duration) -> Vifs {
        Vifs {
            grace,
            series: BTreeMap::new(),
        }
    }

    /// Brings the series up to date with the connections that ended since the last call
    /// (`events`, from the control plane, in order), the queues connected now (`live`) and
    /// the state of every vif the control plane still knows (`known`, by domid and devid);
    /// forgets series whose connection ended `grace` or longer before `now`.
    ///
    /// A connection's counters are added to its series' base once: when its end is
    /// reported (which comes before any later connection of the same queue is seen), or,
    /// if that report never came, when they leave the live view.
    pub fn update(
        &mut self,
        events: &[VifEvent],
        live: &[QueueView],
        known: &HashMap<(u16, u32), u32>,
        now: Instant,
    ) {
        for e in events {
            let Happened::Disconnected(queues) = &e.what else {
                continue;
            };
            for (q, c) in queues.iter().enumerate() {
                let key = (e.domid, e.devid, q as u16, e.name.clone());
                let s = self.series.entry(key).or_insert(VifSeries {
                    state: control::state::CLOSED,
                    live: None,
                    base: Snap::default(),
                    gone_since: None,
                });
                if s.live.as_ref().is_some_and(|l| Arc::ptr_eq(l, c)) {
                    s.live = None;
                }
                // Seen live or not (a connection shorter than a control step), it counts.
                s.base.add(&Snap::of(c));
                if s.live.is_none() {
                    s.gone_since.get_or_insert(now);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for v in live {
            let key = (v.domid, v.devid, v.queue, v.name.clone());
            let s = self.series.entry(key.clone()).or_insert(VifSeries {
                state: v.state,
                live: None,
                base: Snap::default(),
                gone_since: None,
            });
            match &s.live {
                Some(c) if Arc::ptr_eq(c, &v.counters) => {}
                // A new connection of the same queue: the old one's counts are final.
                Some(c) => {
                    s.base.add(&Snap::of(c));
                    s.live = Some(v.counters.clone());
                }
                None => s.live = Some(v.counters.clone()),
            }
            s.state = v.state;
            s.gone_since = None;
            seen.insert(key);
        }
        let grace = self.grace;
        self.series.retain(|key, s| {
            if seen.contains(key) {
                return true;
            }
            // The group let go of these counters (removal acknowledged): they are final.
            if let Some(c) = s.live.take() {
                s.base.add(&Snap::of(&c));
            }
            s.state = known
                .get(&(key.0, key.1))
                .copied()
                .unwrap_or(control::state::CLOSED);
            let since = *s.gone_since.get_or_insert(now);
            now.saturating_duration_since(since) < grace
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = (&VifKey, &VifSeries)> {
        self.series.iter()
    }
}

/// One domain's totals.
#[derive(Debug, Default)]
pub struct Domain {
    /// Disabled queues by verdict label.
    pub rogue: BTreeMap<&'static str, u64>,
    /// Vifs the backend closed, by verdict label or refused key.
    pub closed: BTreeMap<String, u64>,
    /// Sequence number of its last event (the smallest is evicted first).
    last: u64,
}

/// Per-domain totals (labels domid and the guest's name: a domid reused by another guest
/// is another domain), at most `cap` of them.
#[derive(Debug)]
pub struct Domains {
    cap: usize,
    seq: u64,
    evictions: u64,
    map: HashMap<(u16, String), Domain>,
}

impl Domains {
    pub fn new(cap: usize) -> Domains {
        Domains {
            cap: cap.max(1),
            seq: 0,
            evictions: 0,
            map: HashMap::new(),
        }
    }

    /// Counts `e` for its domain: a closure, or the disabled queues of an ended connection
    /// (a connection that ended without a verdict is nothing to remember).
    pub fn record(&mut self, e: &VifEvent) {
        let verdicts = e.verdicts();
        if matches!(e.what, Happened::Disconnected(_)) && verdicts.is_empty() {
            return;
        }
        let key = (e.domid, e.name.clone());
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            // Evictions are rare (a new misbehaving domain beyond the cap): a scan of at
            // most `cap` entries is cheaper than keeping an order for every event.
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, d)| d.last)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
                self.evictions += 1;
                tracing::info!(
                    domid = oldest.0,
                    name = %oldest.1,
                    "forgetting the oldest domain's counters (metrics.remembered_domains = {})",
                    self.cap
                );
            }
        }
        self.seq += 1;
        let d = self.map.entry(key).or_default();
        d.last = self.seq;
        match &e.what {
            Happened::Disconnected(_) => {
                for why in verdicts {
                    *d.rogue.entry(why).or_default() += 1;
                }
            }
            Happened::Closed(why) => *d.closed.entry(why.clone()).or_default() += 1,
        }
    }

    /// Domains forgotten to stay within the cap.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(u16, String), &Domain)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::engine::Disable;

    fn view(domid: u16, c: &Arc<QueueCounters>) -> QueueView {
        QueueView {
            domid,
            devid: 0,
            queue: 0,
            name: format!("g{domid}"),
            state: control::state::CONNECTED,
            counters: c.clone(),
        }
    }

    fn ev(domid: u16, what: Happened) -> VifEvent {
        VifEvent {
            domid,
            devid: 0,
            name: format!("g{domid}"),
            what,
        }
    }

    fn ended(domid: u16, c: &Arc<QueueCounters>) -> VifEvent {
        ev(domid, Happened::Disconnected(vec![c.clone()]))
    }

    fn counters(tx: u64, verdict: Option<Disable>) -> Arc<QueueCounters> {
        let c = QueueCounters::default();
        c.tx_packets.store(tx, Ordering::Relaxed);
        if let Some(v) = verdict {
            c.rogue.store(1, Ordering::Relaxed);
            c.disabled.set(v).unwrap();
        }
        Arc::new(c)
    }

    fn tx(v: &Vifs, domid: u16) -> Option<u64> {
        v.iter()
            .find(|(k, _)| k.0 == domid)
            .map(|(_, s)| s.totals().tx_packets)
    }

    const NONE: &[VifEvent] = &[];

    #[test]
    fn a_closed_vif_stays_for_the_grace_period() {
        let t0 = Instant::now();
        let mut v = Vifs::new(Duration::from_secs(60));
        let c = counters(5, Some(Disable::ImpossibleTxIndex));
        v.update(NONE, &[view(7, &c)], &HashMap::new(), t0);
        assert_eq!(tx(&v, 7), Some(5));
        // Closed: the end reported, the vif still known as Closed.
        let known = HashMap::from([((7, 0), control::state::CLOSED)]);
        v.update(
            &[ended(7, &c)],
            &[],
            &known,
            t0 + Duration::from_millis(100),
        );
        drop(c);
        let (_, s) = v.iter().next().unwrap();
        assert_eq!((s.totals().tx_packets, s.totals().rogue), (5, 1), "once");
        assert_eq!(s.state, control::state::CLOSED);
        v.update(NONE, &[], &HashMap::new(), t0 + Duration::from_secs(60));
        assert_eq!(tx(&v, 7), Some(5), "59.9 s after the close");
        v.update(
            NONE,
            &[],
            &HashMap::new(),
            t0 + Duration::from_millis(60_100),
        );
        assert_eq!(tx(&v, 7), None, "60 s after the close");
    }

    #[test]
    fn a_connection_shorter_than_a_step_is_kept_too() {
        let mut v = Vifs::new(Duration::from_secs(60));
        let c = counters(3, Some(Disable::ImpossibleTxIndex));
        v.update(&[ended(7, &c)], &[], &HashMap::new(), Instant::now());
        assert_eq!(tx(&v, 7), Some(3));
        let (_, s) = v.iter().next().unwrap();
        assert_eq!((s.totals().rogue, s.state), (1, control::state::CLOSED));
    }

    #[test]
    fn a_reconnection_continues_the_series() {
        let t0 = Instant::now();
        let mut v = Vifs::new(Duration::from_secs(60));
        let a = counters(5, None);
        v.update(NONE, &[view(7, &a)], &HashMap::new(), t0);
        // Closed and reconnected within one control step.
        let b = counters(0, None);
        v.update(&[ended(7, &a)], &[view(7, &b)], &HashMap::new(), t0);
        assert_eq!(tx(&v, 7), Some(5));
        b.tx_packets.store(2, Ordering::Relaxed);
        assert_eq!(tx(&v, 7), Some(7));
        // Closed, then reconnected a step later.
        v.update(&[ended(7, &b)], &[], &HashMap::new(), t0);
        assert_eq!(tx(&v, 7), Some(7));
        let c = counters(1, None);
        v.update(NONE, &[view(7, &c)], &HashMap::new(), t0);
        assert_eq!(tx(&v, 7), Some(8));
        // Connected for longer than the grace period: still there.
        v.update(
            NONE,
            &[view(7, &c)],
            &HashMap::new(),
            t0 + Duration::from_secs(600),
        );
        assert_eq!(tx(&v, 7), Some(8));
        // Counters gone from the view without a report (shutdown): counted once still.
        v.update(NONE, &[], &HashMap::new(), t0 + Duration::from_secs(600));
        assert_eq!(tx(&v, 7), Some(8));
    }

    #[test]
    fn no_grace_forgets_at_once() {
        let mut v = Vifs::new(Duration::ZERO);
        let c = counters(1, None);
        v.update(NONE, &[view(7, &c)], &HashMap::new(), Instant::now());
        v.update(&[ended(7, &c)], &[], &HashMap::new(), Instant::now());
        assert_eq!(v.iter().count(), 0);
    }

    #[test]
    fn domains_count_and_evict_the_oldest() {
        let missing = Disable::Rogue(dataplane::txparse::Rogue::MissingSlots);
        let mut d = Domains::new(2);
        d.record(&ended(1, &counters(9, Some(missing))));
        d.record(&ev(1, Happened::Closed("missing_slots".into())));
        d.record(&ev(2, Happened::Closed("rx-ring-ref".into())));
        // A healthy connection ending is nothing to remember.
        d.record(&ended(5, &counters(9, None)));
        assert_eq!(d.iter().count(), 2);
        // Domain 1 again (a re-attached vif): its totals go on, and it is now the newest.
        d.record(&ended(1, &counters(0, Some(missing))));
        assert_eq!(d.evictions(), 0);
        d.record(&ev(3, Happened::Closed("mac".into())));
        assert_eq!(d.evictions(), 1);
        let mut doms: Vec<_> = d.iter().map(|(k, _)| k.0).collect();
        doms.sort();
        assert_eq!(doms, [1, 3], "domain 2's last event was the oldest");
        let (_, one) = d.iter().find(|(k, _)| k.0 == 1).unwrap();
        assert_eq!(one.rogue["missing_slots"], 2);
        assert_eq!(one.closed["missing_slots"], 1);
        // Domain 2 comes back: a new entry, another eviction.
        d.record(&ev(2, Happened::Closed("rx-ring-ref".into())));
        assert_eq!((d.evictions(), d.iter().count()), (2, 2));
    }
}
