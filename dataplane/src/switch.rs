//! L2 forwarding between DPDK ports and vifs.
//!
//! The switch decides, per frame, where it goes; it never touches mbufs, so the same logic
//! serves guest TX (vif -> port/vif) and guest RX (port -> vif). Two modes:
//! - `Learning`: a MAC table per VLAN domain, seeded with each vif's own MAC (static, never
//!   aged or overridden) and learned from source addresses (aged); unknown unicast,
//!   broadcast and multicast are flooded with split horizon (never back where they came
//!   from, and never from one uplink port to another: the switch is not a transit bridge).
//! - `CrossConnect`: fixed pairs (one vif <-> one port), no lookup, for NFV service chains.
//!
//! VLANs: a vif may be an access port of one VLAN. Its frames are untagged on the ring;
//! toward an uplink they are tagged with the VLAN, and tagged frames from an uplink reach
//! only the vifs of that VLAN, stripped. Vifs without a VLAN share the untagged domain.
//!
//! Per ingress endpoint, the last decision is cached ([`FwdCache`]) and reused while the same
//! header keeps coming and the switch is unchanged; a cached flow's source is re-learned
//! every min(1 s, ageing/4) instead of per frame, so an idle learned MAC may age that much
//! early.
//!
//! Time is passed in by the caller (nanoseconds from any monotonic clock) so ageing is
//! testable and the hot path makes no clock syscall of its own.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A MAC address.
pub type Mac = [u8; 6];

/// Identifies a port or a vif queue-set to the switch. Dense small integers chosen by the
/// caller (index into its own tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

/// What kind of endpoint, with its L2 attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// A DPDK port toward the network (trunk: carries tagged and untagged frames).
    Uplink,
    /// A guest vif with its own MAC and an optional access VLAN.
    Vif { mac: Mac, vlan: Option<u16> },
}

/// Forwarding mode of the whole switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Learning,
    CrossConnect,
}

/// Switch configuration.
#[derive(Clone, Copy, Debug)]
pub struct SwitchConfig {
    pub mode: Mode,
    /// Learned entries not refreshed for this long are ignored and later evicted.
    pub ageing_ns: u64,
    /// Upper bound on learned entries: a guest spraying source MACs cannot grow memory.
    pub max_learned: usize,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            mode: Mode::Learning,
            ageing_ns: 300 * 1_000_000_000,
            max_learned: 8192,
        }
    }
}

/// What to do to the frame's 802.1Q tag on the way out to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// Send as is.
    AsIs,
    /// Insert an 802.1Q tag with this VLAN id (vif access VLAN toward an uplink).
    Tag(u16),
    /// Remove the 802.1Q tag (uplink frame toward an access vif).
    Strip,
}

/// Why the switch dropped a frame; each is counted separately by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header (or a tagged header when it claims a tag).
    Runt,
    /// The ingress endpoint is not known to the switch.
    UnknownIngress,
    /// A tagged frame from an access vif (guests on an access VLAN may not pick VLANs).
    TaggedFromAccessVif,
    /// Destination is the ingress endpoint itself (hairpin) or no other member exists.
    NoDestination,
    /// Cross-connect mode and the ingress endpoint has no peer.
    NotConnected,
}

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    /// Send to exactly one endpoint.
    Unicast(EndpointId, Egress),
    /// Send to every endpoint `Switch::flood_targets` lists for this (ingress, domain).
    Flood {
        domain: Domain,
    },
}

/// A VLAN domain: `None` is the untagged domain.
pub type Domain = Option<u16>;

#[derive(Clone, Copy, Debug)]
struct Learned {
    endpoint: EndpointId,
    last_seen_ns: u64,
    is_static: bool,
    /// When this entry was last announced to other switches (see [`Switch::take_fresh`]).
    announced_ns: u64,
}

/// One MAC table entry as [`Switch::entries`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub domain: Domain,
    pub mac: Mac,
    pub endpoint: EndpointId,
    /// A vif's own MAC (never aged), else learned.
    pub is_static: bool,
    /// Time since a learned entry was last seen.
    pub age_ns: Option<u64>,
}

/// A learned entry to tell the other groups' switches about: (domain, MAC, endpoint).
pub type Announce = (Domain, Mac, EndpointId);

/// Announcements kept between two [`Switch::take_fresh`] calls; more are dropped (the
/// other switches then flood to those MACs until a later announcement).
const FRESH_CAP: usize = 256;

/// One multiply-xorshift per key: the MAC table is hit per packet and every key is one
/// integer (a packed MAC + domain, an endpoint id), so SipHash or a byte-wise hash is
/// needless there (keys are bounded by `max_learned`, so flooding the table with
/// collisions costs the attacker more than it costs us). Byte input falls back to FNV-1a.
#[derive(Default)]
pub struct MacHasher(u64);
impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        self.0 = h ^ (h >> 29);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A MAC table key: the domain (0xFFFF = untagged) and the MAC packed in one integer, so
/// it hashes with one `write_u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key(u64);

fn key(d: Domain, mac: Mac) -> Key {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    b[6..].copy_from_slice(&d.unwrap_or(0xFFFF).to_le_bytes());
    Key(u64::from_le_bytes(b))
}

/// The L2 switch of one netbackd instance.
pub struct Switch {
    cfg: SwitchConfig,
    endpoints: HashMap<EndpointId, EndpointKind, BuildHasherDefault<MacHasher>>,
    /// Endpoint list in insertion order for flooding (small, iterated per flood).
    order: Vec<EndpointId>,
    table: HashMap<Key, Learned, BuildHasherDefault<MacHasher>>,
    learned: usize,
    peers: HashMap<EndpointId, EndpointId, BuildHasherDefault<MacHasher>>,
    /// Learn attempts refused because the table was full.
    pub table_full: u64,
    /// Bumped by every change that can alter a decision (endpoints, pairings, a MAC
    /// learned, moved, refreshed after ageing or evicted): a [`FwdCache`] of an older
    /// generation is void.
    generation: u64,
    /// Collect learned entries for other switches ([`Switch::set_announce`]).
    announce: bool,
    fresh: Vec<Announce>,
    /// A full table sweeps its aged entries at most this often (not per refused learn:
    /// a guest spraying source MACs would make every frame walk the table).
    next_sweep_ns: u64,
}

/// The last decision for frames entering at one endpoint, reused while the same header
/// (destination, source, VLAN tag) keeps coming and the switch has not changed: the
/// lookups then cost one 14-byte compare. Each ingress endpoint owns one.
#[derive(Clone, Copy, Debug)]
pub struct FwdCache {
    hdr: u128,
    generation: u64,
    decision: Option<Decision>,
    /// Decision valid before this (a learned destination's ageing).
    valid_until_ns: u64,
    /// When the source's learned entry is refreshed next (no lookup per frame).
    relearn_at_ns: u64,
    /// The flood list of `flood_domain` as of `flood_generation`, when it is short.
    flood: [(EndpointId, Egress); FLOOD_CACHED],
    flood_len: u8,
    flood_domain: Domain,
    flood_generation: u64,
}

/// Flood lists up to this long are kept in a [`FwdCache`].
const FLOOD_CACHED: usize = 4;

impl Default for FwdCache {
    fn default() -> Self {
        FwdCache {
            hdr: 0,
            generation: 0,
            decision: None,
            valid_until_ns: 0,
            relearn_at_ns: 0,
            flood: [(EndpointId(0), Egress::AsIs); FLOOD_CACHED],
            flood_len: 0,
            flood_domain: None,
            flood_generation: 0,
        }
    }
}

/// The header bytes a decision depends on: MACs, the ethertype and, if tagged, the tag;
/// None for a runt, tagged ones included (their decision, a drop, is never cached: a key
/// of their first bytes would match a whole tagged frame's).
#[inline]
fn cache_key(frame: &[u8]) -> Option<u128> {
    // Two 8-byte loads straight from the frame: a byte copy into a stack array and a
    // wider load of it stalled on store forwarding (most of this lookup's cycles).
    let word = |at: usize| u64::from_le_bytes(frame[at..at + 8].try_into().expect("8 bytes"));
    let tagged = frame.len() >= ETH_HLEN && frame[12..14] == ETHERTYPE_VLAN.to_be_bytes();
    if tagged && frame.len() < ETH_HLEN + 4 {
        return None;
    }
    if frame.len() >= 16 {
        // Untagged: the key is the first 14 bytes (the rest is the payload's).
        let hi = if tagged {
            word(8)
        } else {
            word(8) & 0x0000_ffff_ffff_ffff
        };
        Some(u128::from(word(0)) | u128::from(hi) << 64)
    } else if frame.len() >= ETH_HLEN {
        // 14 or 15 bytes: bytes 8..14 are the top six of the word at 6.
        Some(u128::from(word(0)) | u128::from(word(6) >> 16) << 64)
    } else {
        None
    }
}

/// Result of parsing the L2 header the switch needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub dst: Mac,
    pub src: Mac,
    /// 802.1Q VLAN id when the frame carries a tag.
    pub vlan: Option<u16>,
}

const ETH_HLEN: usize = 14;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Reads destination, source and the optional 802.1Q tag; `None` for a runt.
pub fn parse_l2(frame: &[u8]) -> Option<L2> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let vlan = if ethertype == ETHERTYPE_VLAN {
        if frame.len() < ETH_HLEN + 4 {
            return None;
        }
        Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0FFF)
    } else {
        None
    };
    Some(L2 { dst, src, vlan })
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    pub fn new(cfg: SwitchConfig) -> Self {
        Switch {
            cfg,
            endpoints: HashMap::default(),
            order: Vec::new(),
            table: HashMap::default(),
            learned: 0,
            peers: HashMap::default(),
            table_full: 0,
            generation: 1,
            announce: false,
            fresh: Vec::new(),
            next_sweep_ns: 0,
        }
    }

    /// With `on`, every new or moved learned entry (and a live one again every half ageing
    /// time, so copies elsewhere do not age out while traffic continues) is kept for
    /// [`Switch::take_fresh`]: how the groups of one L2 domain share what each learns.
    pub fn set_announce(&mut self, on: bool) {
        self.announce = on;
        self.fresh.clear();
    }

    /// Moves the pending announcements into `out` (appended).
    pub fn take_fresh(&mut self, out: &mut Vec<Announce>) {
        out.append(&mut self.fresh);
    }

    /// Learns what another switch of the same L2 domain announced: `mac` in `domain` is
    /// behind `endpoint` (which must be known here; else ignored). Static entries win, as
    /// for local learning; nothing is announced back.
    pub fn learn_from_peer(&mut self, domain: Domain, mac: Mac, endpoint: EndpointId, now_ns: u64) {
        if self.endpoints.contains_key(&endpoint) {
            self.learn_inner(domain, mac, endpoint, now_ns, false);
        }
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// Adds (or replaces) an endpoint. A vif's own MAC becomes a static entry in its
    /// domain, so traffic for it never floods and a learned entry can't steal it.
    pub fn add_endpoint(&mut self, id: EndpointId, kind: EndpointKind) {
        self.remove_endpoint(id);
        self.generation += 1;
        self.endpoints.insert(id, kind);
        self.order.push(id);
        if let EndpointKind::Vif { mac, vlan } = kind {
            if !is_multicast(&mac) {
                let prev = self.table.insert(
                    key(vlan, mac),
                    Learned {
                        endpoint: id,
                        last_seen_ns: 0,
                        is_static: true,
                        announced_ns: 0,
                    },
                );
                if matches!(prev, Some(l) if !l.is_static) {
                    self.learned -= 1;
                }
            }
        }
    }

    /// Removes an endpoint, its cross-connect and every MAC entry that points at it.
    pub fn remove_endpoint(&mut self, id: EndpointId) {
        if self.endpoints.remove(&id).is_none() {
            return;
        }
        self.generation += 1;
        self.order.retain(|e| *e != id);
        let mut freed = 0;
        self.table.retain(|_, l| {
            let keep = l.endpoint != id;
            if !keep && !l.is_static {
                freed += 1;
            }
            keep
        });
        self.learned -= freed;
        if let Some(peer) = self.peers.remove(&id) {
            self.peers.remove(&peer);
        }
    }

    /// Connects two endpoints for `CrossConnect` mode (replacing earlier pairings).
    pub fn cross_connect(&mut self, a: EndpointId, b: EndpointId) {
        self.generation += 1;
        for e in [a, b] {
            if let Some(old) = self.peers.remove(&e) {
                self.peers.remove(&old);
            }
        }
        self.peers.insert(a, b);
        self.peers.insert(b, a);
    }

    /// Changes the ageing time live (learned entries then age by the new time; cached
    /// decisions are void).
    pub fn set_ageing(&mut self, ageing_ns: u64) {
        self.cfg.ageing_ns = ageing_ns;
        self.generation += 1;
    }

    /// The MAC table for inspection (slow path: walks the whole table): static entries and
    /// learned ones not aged out at `now_ns`, with their age.
    pub fn entries(&self, now_ns: u64) -> Vec<TableEntry> {
        let mut v: Vec<TableEntry> = self
            .table
            .iter()
            .filter_map(|(k, l)| {
                let b = k.0.to_le_bytes();
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&b[..6]);
                let d = u16::from_le_bytes([b[6], b[7]]);
                let age_ns = now_ns.saturating_sub(l.last_seen_ns);
                if !l.is_static && age_ns >= self.cfg.ageing_ns {
                    return None;
                }
                Some(TableEntry {
                    domain: (d != 0xFFFF).then_some(d),
                    mac,
                    endpoint: l.endpoint,
                    is_static: l.is_static,
                    age_ns: (!l.is_static).then_some(age_ns),
                })
            })
            .collect();
        v.sort_by_key(|e| (e.domain, e.mac));
        v
    }

    /// Number of learned (non-static) entries, aged ones included until evicted.
    pub fn learned_entries(&self) -> usize {
        self.learned
    }

    /// Drops learned entries older than the ageing time. Call from the slow path (e.g.
    /// once a second); lookups already ignore stale entries in between.
    pub fn evict_aged(&mut self, now_ns: u64) {
        let ageing = self.cfg.ageing_ns;
        let mut freed = 0;
        self.table.retain(|_, l| {
            let keep = l.is_static || now_ns.saturating_sub(l.last_seen_ns) < ageing;
            if !keep {
                freed += 1;
            }
            keep
        });
        self.learned -= freed;
        if freed > 0 {
            self.generation += 1;
        }
    }

    /// [`Switch::forward`] through `cache`, the ingress endpoint's own: the same header as
    /// last time in an unchanged switch gets the same decision without a lookup. The
    /// source is still learned, once a second (or a quarter of the ageing time). The hit
    /// is inlined into the caller's per-packet loop; the rest is out of line.
    #[inline]
    pub fn forward_cached(
        &mut self,
        ingress: EndpointId,
        frame: &[u8],
        now_ns: u64,
        cache: &mut FwdCache,
    ) -> Decision {
        let hdr = cache_key(frame);
        if let (Some(hdr), Some(d)) = (hdr, cache.decision) {
            if cache.generation == self.generation
                && cache.hdr == hdr
                && now_ns < cache.valid_until_ns
                && now_ns < cache.relearn_at_ns
            {
                return d;
            }
        }
        self.forward_uncached(ingress, frame, hdr, now_ns, cache)
    }

    /// `forward_cached` past its hit (`hdr`: the frame's cache key): decides, refreshing
    /// the source's entry, and fills the cache (a change of the entry voids other caches
    /// through the generation).
    #[inline(never)]
    fn forward_uncached(
        &mut self,
        ingress: EndpointId,
        frame: &[u8],
        hdr: Option<u128>,
        now_ns: u64,
        cache: &mut FwdCache,
    ) -> Decision {
        let Some(hdr) = hdr else {
            return self.forward(ingress, frame, now_ns);
        };
        let (d, until) = self.decide(ingress, frame, now_ns);
        self.fill(cache, hdr, d, until, now_ns);
        d
    }

    fn fill(&self, c: &mut FwdCache, hdr: u128, d: Decision, valid_until_ns: u64, now_ns: u64) {
        if let Decision::Drop(_) = d {
            c.decision = None;
            return;
        }
        let refresh = (self.cfg.ageing_ns / 4).clamp(1, 1_000_000_000);
        *c = FwdCache {
            hdr,
            generation: self.generation,
            decision: Some(d),
            valid_until_ns,
            relearn_at_ns: now_ns.saturating_add(refresh),
            ..*c
        };
    }

    /// [`Switch::flood_targets`] into `out` (cleared first), through the ingress
    /// endpoint's `cache`: a list of up to 4 is kept while the switch is unchanged (the
    /// list depends only on the endpoints, whose changes bump the generation).
    pub fn flood_targets_into(
        &self,
        ingress: EndpointId,
        domain: Domain,
        cache: &mut FwdCache,
        out: &mut Vec<(EndpointId, Egress)>,
    ) {
        out.clear();
        if cache.flood_generation == self.generation && cache.flood_domain == domain {
            out.extend_from_slice(&cache.flood[..usize::from(cache.flood_len)]);
            return;
        }
        out.extend(self.flood_targets(ingress, domain));
        if out.len() <= FLOOD_CACHED {
            cache.flood[..out.len()].copy_from_slice(out);
            cache.flood_len = out.len() as u8;
            cache.flood_domain = domain;
            cache.flood_generation = self.generation;
        }
    }

    /// The one destination of a flood in `domain`, when `cache` holds a current flood list
    /// of exactly one (a vif and the uplink alone in their domain): the caller then needs
    /// no list. None otherwise (use [`Switch::flood_targets_into`]).
    #[inline]
    pub fn sole_flood_target(
        &self,
        domain: Domain,
        cache: &FwdCache,
    ) -> Option<(EndpointId, Egress)> {
        (cache.flood_generation == self.generation
            && cache.flood_domain == domain
            && cache.flood_len == 1)
            .then_some(cache.flood[0])
    }

    /// Decides where a frame entering at `ingress` goes. `frame` needs only its first 18
    /// bytes. Learns the source address as a side effect.
    pub fn forward(&mut self, ingress: EndpointId, frame: &[u8], now_ns: u64) -> Decision {
        self.decide(ingress, frame, now_ns).0
    }

    /// The decision and until when it holds (a learned destination ages; u64::MAX when
    /// only a change of the switch can alter it).
    fn decide(&mut self, ingress: EndpointId, frame: &[u8], now_ns: u64) -> (Decision, u64) {
        let forever = |d| (d, u64::MAX);
        let Some(kind) = self.endpoints.get(&ingress).copied() else {
            return forever(Decision::Drop(DropReason::UnknownIngress));
        };
        let Some(l2) = parse_l2(frame) else {
            return forever(Decision::Drop(DropReason::Runt));
        };
        if self.cfg.mode == Mode::CrossConnect {
            return forever(match self.peers.get(&ingress) {
                Some(peer) => Decision::Unicast(*peer, self.egress(kind, l2.vlan, *peer)),
                None => Decision::Drop(DropReason::NotConnected),
            });
        }
        let domain = match kind {
            EndpointKind::Uplink => l2.vlan,
            EndpointKind::Vif { vlan: Some(_), .. } if l2.vlan.is_some() => {
                return forever(Decision::Drop(DropReason::TaggedFromAccessVif));
            }
            // An untagged vif may send tagged frames: they are in that VLAN's domain.
            EndpointKind::Vif { vlan, .. } => vlan.or(l2.vlan),
        };
        self.learn(domain, l2.src, ingress, now_ns);
        if is_multicast(&l2.dst) {
            return forever(Decision::Flood { domain });
        }
        match self.table.get(&key(domain, l2.dst)) {
            Some(l)
                if l.is_static || now_ns.saturating_sub(l.last_seen_ns) < self.cfg.ageing_ns =>
            {
                let dst = l.endpoint;
                let until = if l.is_static {
                    u64::MAX
                } else {
                    l.last_seen_ns.saturating_add(self.cfg.ageing_ns)
                };
                if dst == ingress {
                    return forever(Decision::Drop(DropReason::NoDestination));
                }
                let dst_kind = self.endpoints[&dst];
                if matches!(kind, EndpointKind::Uplink) && matches!(dst_kind, EndpointKind::Uplink)
                {
                    // Split horizon between uplinks: never bridge port to port.
                    return forever(Decision::Drop(DropReason::NoDestination));
                }
                (
                    Decision::Unicast(dst, self.egress(kind, domain, dst)),
                    until,
                )
            }
            _ => forever(Decision::Flood { domain }),
        }
    }

    fn learn(&mut self, domain: Domain, src: Mac, ingress: EndpointId, now_ns: u64) {
        self.learn_inner(domain, src, ingress, now_ns, self.announce);
    }

    fn learn_inner(
        &mut self,
        domain: Domain,
        src: Mac,
        ingress: EndpointId,
        now_ns: u64,
        announce: bool,
    ) {
        if is_multicast(&src) || src == [0; 6] {
            return;
        }
        let k = key(domain, src);
        let ageing = self.cfg.ageing_ns;
        let tell = match self.table.get_mut(&k) {
            // A vif's own MAC is pinned: another endpoint claiming it is not believed.
            Some(l) if l.is_static => false,
            Some(l) => {
                // A move, or an aged entry coming back, changes decisions: cached ones
                // (flood while it was aged, unicast to the old endpoint) are void.
                let changed =
                    l.endpoint != ingress || now_ns.saturating_sub(l.last_seen_ns) >= ageing;
                if changed {
                    self.generation += 1;
                }
                l.endpoint = ingress;
                l.last_seen_ns = now_ns;
                let tell =
                    announce && (changed || now_ns.saturating_sub(l.announced_ns) >= ageing / 2);
                if tell {
                    l.announced_ns = now_ns;
                }
                tell
            }
            None => {
                if self.learned >= self.cfg.max_learned && now_ns >= self.next_sweep_ns {
                    self.next_sweep_ns = now_ns + (ageing / 4).min(1_000_000_000);
                    self.evict_aged(now_ns);
                }
                if self.learned >= self.cfg.max_learned {
                    self.table_full += 1;
                    return;
                }
                self.generation += 1;
                self.table.insert(
                    k,
                    Learned {
                        endpoint: ingress,
                        last_seen_ns: now_ns,
                        is_static: false,
                        announced_ns: now_ns,
                    },
                );
                self.learned += 1;
                announce
            }
        };
        if tell && self.fresh.len() < FRESH_CAP {
            self.fresh.push((domain, src, ingress));
        }
    }

    /// The tag operation for a frame of `domain` coming from an endpoint of `from` kind
    /// and leaving through `dst`.
    fn egress(&self, from: EndpointKind, domain: Domain, dst: EndpointId) -> Egress {
        let dst_kind = self.endpoints.get(&dst).copied();
        match (from, dst_kind) {
            (EndpointKind::Vif { vlan: Some(v), .. }, Some(EndpointKind::Uplink)) => Egress::Tag(v),
            (EndpointKind::Uplink, Some(EndpointKind::Vif { vlan: Some(_), .. }))
                if domain.is_some() =>
            {
                Egress::Strip
            }
            _ => Egress::AsIs,
        }
    }

    /// The destinations of a flooded frame with their tag operations: every endpoint of
    /// the domain except the ingress, and no uplink when the ingress is an uplink.
    pub fn flood_targets(
        &self,
        ingress: EndpointId,
        domain: Domain,
    ) -> impl Iterator<Item = (EndpointId, Egress)> + '_ {
        let from = self.endpoints.get(&ingress).copied();
        self.order.iter().filter_map(move |&e| {
            let from = from?;
            if e == ingress {
                return None;
            }
            let kind = self.endpoints[&e];
            let member = match kind {
                EndpointKind::Uplink => !matches!(from, EndpointKind::Uplink),
                EndpointKind::Vif { vlan, .. } => match vlan {
                    Some(v) => domain == Some(v),
                    None => domain.is_none(),
                },
            };
            member.then(|| (e, self.egress(from, domain, e)))
        })
    }
}

/// Applies an egress tag operation to a frame; false when it cannot be done (no headroom,
/// shared mbuf), in which case the caller drops and counts the frame.
#[inline]
pub fn apply_egress(m: &mut pmd::Mbuf, e: Egress) -> bool {
    match e {
        Egress::AsIs => true,
        Egress::Tag(vlan) => m.vlan_insert(vlan & 0x0FFF).is_ok(),
        Egress::Strip => m.vlan_strip().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: EndpointId = EndpointId(0);
    const P1: EndpointId = EndpointId(1);
    const V1: EndpointId = EndpointId(10);
    const V2: EndpointId = EndpointId(11);
    const V3: EndpointId = EndpointId(12);
    const MAC_V1: Mac = [0x00, 0x16, 0x3e, 0, 0, 1];
    const MAC_V2: Mac = [0x00, 0x16, 0x3e, 0, 0, 2];
    const MAC_V3: Mac = [0x00, 0x16, 0x3e, 0, 0, 3];
    const HOST_A: Mac = [0x02, 0, 0, 0, 0, 0xa];
    const BCAST: Mac = [0xff; 6];
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn cache_key_is_macs_and_tag() {
        let mut a = frame(MAC_V2, MAC_V1, None);
        a.resize(64, 0);
        let mut b = a.clone();
        // Past the header (ethertype included): same key.
        b[14] ^= 0xff;
        b[40] ^= 0xff;
        assert_eq!(cache_key(&a), cache_key(&b));
        // A 14- or 15-byte frame keys as the first 14 bytes of a longer one.
        assert_eq!(cache_key(&a[..14]), cache_key(&a));
        assert_eq!(cache_key(&a[..15]), cache_key(&a));
        assert_eq!(cache_key(&a[..13]), None);
        for at in [0, 5, 6, 11, 12, 13] {
            let mut c = a.clone();
            c[at] ^= 1;
            assert_ne!(cache_key(&c), cache_key(&a), "byte {at}");
        }
        // A tagged runt has no key (it would match the whole tagged frame's).
        let mut t0 = frame(MAC_V2, MAC_V1, Some(10));
        t0.resize(64, 0);
        for len in 14..18 {
            assert_eq!(cache_key(&t0[..len]), None, "tagged {len} bytes");
        }
        assert!(cache_key(&t0[..18]).is_some());
        // Tagged: the tag is part of the key.
        let mut t1 = frame(MAC_V2, MAC_V1, Some(10));
        t1.resize(64, 0);
        let mut t2 = frame(MAC_V2, MAC_V1, Some(11));
        t2.resize(64, 0);
        assert_ne!(cache_key(&t1), cache_key(&t2));
        assert_ne!(cache_key(&t1), cache_key(&a));
    }

    fn frame(dst: Mac, src: Mac, vlan: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        if let Some(v) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.resize(f.len() + 46, 0);
        f
    }

    fn basic() -> Switch {
        let mut s = Switch::new(SwitchConfig {
            ageing_ns: 10 * SEC,
            ..Default::default()
        });
        s.add_endpoint(P0, EndpointKind::Uplink);
        s.add_endpoint(P1, EndpointKind::Uplink);
        s.add_endpoint(
            V1,
            EndpointKind::Vif {
                mac: MAC_V1,
                vlan: None,
            },
        );
        s.add_endpoint(
            V2,
            EndpointKind::Vif {
                mac: MAC_V2,
                vlan: None,
            },
        );
        s
    }

    fn targets(s: &Switch, ingress: EndpointId, d: Domain) -> Vec<(EndpointId, Egress)> {
        s.flood_targets(ingress, d).collect()
    }

    #[test]
    fn vif_mac_is_seeded() {
        let mut s = basic();
        assert_eq!(
            s.forward(P0, &frame(MAC_V2, HOST_A, None), 0),
            Decision::Unicast(V2, Egress::AsIs)
        );
        // vif to vif inside the host.
        assert_eq!(
            s.forward(V1, &frame(MAC_V2, MAC_V1, None), 0),
            Decision::Unicast(V2, Egress::AsIs)
        );
    }

    /// The cached path decides exactly as the uncached one through learning, moves,
    /// endpoint churn, VLANs and eviction (within an ageing period: the cache refreshes a
    /// source at most every ageing/4, see `cached_unicast_ages`).
    #[test]
    fn cached_decisions_equal_uncached() {
        let (mut a, mut b) = (basic(), basic());
        let v3 = EndpointKind::Vif {
            mac: MAC_V3,
            vlan: Some(7),
        };
        a.add_endpoint(V3, v3);
        b.add_endpoint(V3, v3);
        let ingress = [P0, P1, V1, V2, V3];
        let macs = [MAC_V1, MAC_V2, MAC_V3, HOST_A, [2, 0, 0, 0, 0, 0xb], BCAST];
        let mut caches = [FwdCache::default(); 5];
        let mut last: [Vec<u8>; 5] = Default::default();
        let mut x: u64 = 0x1234_5678;
        let mut rnd = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut now = 0u64;
        let (mut hits, mut frames) = (0, 0);
        for _ in 0..20_000 {
            now += rnd(500) * 1000;
            match rnd(100) {
                0..=2 => {
                    let (id, kind) = if rnd(2) == 0 {
                        (
                            V1,
                            EndpointKind::Vif {
                                mac: MAC_V1,
                                vlan: None,
                            },
                        )
                    } else {
                        (V3, v3)
                    };
                    a.remove_endpoint(id);
                    b.remove_endpoint(id);
                    a.add_endpoint(id, kind);
                    b.add_endpoint(id, kind);
                }
                3..=4 => {
                    a.evict_aged(now);
                    b.evict_aged(now);
                }
                _ => {
                    let i = rnd(5) as usize;
                    // Mostly the ingress's previous header again (what a cache is for),
                    // else a new one.
                    if rnd(10) >= 7 || last[i].is_empty() {
                        let vlan = (rnd(4) == 0).then_some(7);
                        last[i] = frame(macs[rnd(6) as usize], macs[rnd(5) as usize], vlan);
                    }
                    let f = last[i].clone();
                    let before = caches[i];
                    let da = a.forward(ingress[i], &f, now);
                    let db = b.forward_cached(ingress[i], &f, now, &mut caches[i]);
                    assert_eq!(da, db, "frame {frames} from {:?}", ingress[i]);
                    if let Decision::Flood { domain } = db {
                        let mut got = Vec::new();
                        b.flood_targets_into(ingress[i], domain, &mut caches[i], &mut got);
                        assert_eq!(got, targets(&a, ingress[i], domain), "flood {frames}");
                    }
                    frames += 1;
                    if before.decision.is_some() && before.generation == caches[i].generation {
                        hits += 1;
                    }
                }
            }
        }
        assert!(hits > 1000, "the cache was used ({hits} of {frames})");
    }

    /// Fuzz (switch target, 30 s in CI): a tagged frame's decision was cached, then a
    /// runt of its first 16 bytes (too short for the tag) hit that cache instead of being
    /// dropped as a runt.
    #[test]
    fn tagged_runt_does_not_hit_a_tagged_frames_cache() {
        let mut s = basic();
        let mut c = FwdCache::default();
        s.forward(P0, &frame(MAC_V1, HOST_A, None), SEC);
        let mut f = frame(HOST_A, MAC_V1, Some(5));
        f.resize(64, 0);
        let whole = s.forward_cached(V1, &f, 2 * SEC, &mut c);
        assert!(!matches!(whole, Decision::Drop(_)), "{whole:?}");
        for len in 14..18 {
            // The whole frame's decision cached, then its runt.
            assert_eq!(s.forward_cached(V1, &f, 2 * SEC, &mut c), whole);
            assert_eq!(
                s.forward_cached(V1, &f[..len], 2 * SEC, &mut c),
                Decision::Drop(DropReason::Runt),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn cached_unicast_ages() {
        let mut s = basic();
        let mut c = FwdCache::default();
        s.forward(P0, &frame(MAC_V1, HOST_A, None), SEC);
        let f = frame(HOST_A, MAC_V1, None);
        for t in [2 * SEC, 3 * SEC, 10 * SEC] {
            assert_eq!(
                s.forward_cached(V1, &f, t, &mut c),
                Decision::Unicast(P0, Egress::AsIs)
            );
        }
        // HOST_A last seen at 1 s: aged at 11 s although the cached decision said P0.
        assert_eq!(
            s.forward_cached(V1, &f, 11 * SEC, &mut c),
            Decision::Flood { domain: None }
        );
        // It comes back: unicast again at once (the refresh voids the cached flood).
        s.forward(P1, &frame(MAC_V1, HOST_A, None), 12 * SEC);
        assert_eq!(
            s.forward_cached(V1, &f, 12 * SEC + 1, &mut c),
            Decision::Unicast(P1, Egress::AsIs)
        );
    }

    #[test]
    fn learns_and_ages() {
        let mut s = basic();
        // Unknown destination floods.
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 0),
            Decision::Flood { domain: None }
        );
        // HOST_A answers through P0: learned.
        s.forward(P0, &frame(MAC_V1, HOST_A, None), SEC);
        assert_eq!(s.learned_entries(), 1);
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 2 * SEC),
            Decision::Unicast(P0, Egress::AsIs)
        );
        // Station moves to P1.
        s.forward(P1, &frame(MAC_V1, HOST_A, None), 3 * SEC);
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 4 * SEC),
            Decision::Unicast(P1, Egress::AsIs)
        );
        // Aged out after 10 s without refresh: floods again, and eviction frees it.
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 13 * SEC + 1),
            Decision::Flood { domain: None }
        );
        s.evict_aged(13 * SEC + 1);
        assert_eq!(s.learned_entries(), 0);
    }

    #[test]
    fn full_table_makes_room_from_aged_entries() {
        let mut s = Switch::new(SwitchConfig {
            ageing_ns: 10 * SEC,
            max_learned: 4,
            ..Default::default()
        });
        s.add_endpoint(P0, EndpointKind::Uplink);
        let host = |i: u8| [0x02, 0, 0, 0, 1, i];
        for i in 0..4 {
            s.forward(P0, &frame(BCAST, host(i), None), 0);
        }
        assert_eq!(s.learned_entries(), 4);
        // Still fresh: a fifth is refused and counted.
        s.forward(P0, &frame(BCAST, host(4), None), SEC);
        assert_eq!((s.learned_entries(), s.table_full), (4, 1));
        // Nobody calls evict_aged: once the four have aged, the full table sweeps them
        // itself and the newcomer is learned (before, the table stayed full forever).
        s.forward(P0, &frame(BCAST, host(5), None), 11 * SEC);
        assert_eq!((s.learned_entries(), s.table_full), (1, 1));
        // Fresh entries are never swept: the table fills again and refuses again.
        for i in 6..11 {
            s.forward(P0, &frame(BCAST, host(i), None), 11 * SEC + 1);
        }
        assert_eq!((s.learned_entries(), s.table_full), (4, 3));
    }

    #[test]
    fn announces_what_it_learns_once_per_half_ageing() {
        let mut s = basic();
        s.set_announce(true);
        let mut out = Vec::new();
        // New (from the wire, behind P0), then a refresh: announced once.
        s.forward(P0, &frame(MAC_V1, HOST_A, None), 0);
        s.forward(P0, &frame(MAC_V1, HOST_A, None), SEC);
        s.take_fresh(&mut out);
        assert_eq!(out, vec![(None, HOST_A, P0)]);
        out.clear();
        // A move is announced at once; a live entry again after half the ageing time.
        s.forward(P1, &frame(MAC_V1, HOST_A, None), 2 * SEC);
        s.forward(P1, &frame(MAC_V1, HOST_A, None), 6 * SEC);
        s.forward(P1, &frame(MAC_V1, HOST_A, None), 7 * SEC);
        s.take_fresh(&mut out);
        assert_eq!(out, vec![(None, HOST_A, P1), (None, HOST_A, P1)]);
        out.clear();
        // Static MACs are never announced; what a peer announces is learned, not echoed,
        // and only for an endpoint this switch knows.
        s.forward(V1, &frame(HOST_A, MAC_V1, None), 8 * SEC);
        let host_b: Mac = [0x02, 0, 0, 0, 0, 0xb];
        s.learn_from_peer(None, host_b, V2, 8 * SEC);
        s.learn_from_peer(None, [0x02, 0, 0, 0, 0, 0xc], EndpointId(99), 8 * SEC);
        s.learn_from_peer(None, MAC_V1, P0, 8 * SEC);
        s.take_fresh(&mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            s.forward(V1, &frame(host_b, MAC_V1, None), 9 * SEC),
            Decision::Unicast(V2, Egress::AsIs)
        );
        assert_eq!(
            s.forward(V2, &frame(MAC_V1, MAC_V2, None), 9 * SEC),
            Decision::Unicast(V1, Egress::AsIs),
            "a peer cannot move a static MAC"
        );
        assert_eq!(s.learned_entries(), 2);
        // Without announce, nothing accumulates.
        let mut quiet = basic();
        quiet.forward(P0, &frame(MAC_V1, HOST_A, None), 0);
        quiet.take_fresh(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn static_vif_mac_cannot_be_stolen() {
        let mut s = basic();
        s.forward(P0, &frame(BCAST, MAC_V1, None), 0); // spoofed source from the wire
        assert_eq!(s.learned_entries(), 0);
        assert_eq!(
            s.forward(P0, &frame(MAC_V1, HOST_A, None), 0),
            Decision::Unicast(V1, Egress::AsIs)
        );
    }

    #[test]
    fn flooding_uses_split_horizon() {
        let s = basic();
        // From a vif: every other vif and every uplink.
        assert_eq!(
            targets(&s, V1, None),
            vec![(P0, Egress::AsIs), (P1, Egress::AsIs), (V2, Egress::AsIs)]
        );
        // From an uplink: vifs only, never the other uplink, never back.
        assert_eq!(
            targets(&s, P0, None),
            vec![(V1, Egress::AsIs), (V2, Egress::AsIs)]
        );
        let mut s = s;
        assert_eq!(
            s.forward(P0, &frame(BCAST, HOST_A, None), 0),
            Decision::Flood { domain: None }
        );
    }

    #[test]
    fn uplink_to_uplink_unicast_is_dropped() {
        let mut s = basic();
        s.forward(P1, &frame(BCAST, HOST_A, None), 0);
        assert_eq!(
            s.forward(P0, &frame(HOST_A, [2, 0, 0, 0, 0, 0xb], None), 0),
            Decision::Drop(DropReason::NoDestination)
        );
    }

    #[test]
    fn hairpin_is_dropped() {
        let mut s = basic();
        assert_eq!(
            s.forward(V1, &frame(MAC_V1, MAC_V1, None), 0),
            Decision::Drop(DropReason::NoDestination)
        );
    }

    #[test]
    fn runts_and_unknown_ingress() {
        let mut s = basic();
        assert_eq!(
            s.forward(V1, &[0u8; 13], 0),
            Decision::Drop(DropReason::Runt)
        );
        let mut tagged_short = frame(BCAST, MAC_V1, None);
        tagged_short.truncate(14);
        tagged_short[12] = 0x81;
        tagged_short[13] = 0x00;
        assert_eq!(
            s.forward(V1, &tagged_short, 0),
            Decision::Drop(DropReason::Runt)
        );
        assert_eq!(
            s.forward(EndpointId(99), &frame(BCAST, MAC_V1, None), 0),
            Decision::Drop(DropReason::UnknownIngress)
        );
    }

    #[test]
    fn vlan_access_vifs() {
        let mut s = basic();
        s.add_endpoint(
            V3,
            EndpointKind::Vif {
                mac: MAC_V3,
                vlan: Some(100),
            },
        );
        // V3's untagged frame goes to the uplink tagged with 100.
        s.forward(P0, &frame(MAC_V3, HOST_A, Some(100)), 0); // learn HOST_A in vlan 100
        assert_eq!(
            s.forward(V3, &frame(HOST_A, MAC_V3, None), 0),
            Decision::Unicast(P0, Egress::Tag(100))
        );
        // Tagged frame for V3 from the wire is stripped.
        assert_eq!(
            s.forward(P0, &frame(MAC_V3, HOST_A, Some(100)), 0),
            Decision::Unicast(V3, Egress::Strip)
        );
        // V3's MAC is not reachable from the untagged domain.
        assert_eq!(
            s.forward(P0, &frame(MAC_V3, HOST_A, None), 0),
            Decision::Flood { domain: None }
        );
        assert!(!targets(&s, P0, None).iter().any(|(e, _)| *e == V3));
        // Broadcast in vlan 100 from the wire reaches only V3, stripped.
        assert_eq!(targets(&s, P0, Some(100)), vec![(V3, Egress::Strip)]);
        // Flood from V3: uplinks tagged, no untagged vif.
        assert_eq!(
            targets(&s, V3, Some(100)),
            vec![(P0, Egress::Tag(100)), (P1, Egress::Tag(100))]
        );
        // An access vif may not send tagged frames.
        assert_eq!(
            s.forward(V3, &frame(BCAST, MAC_V3, Some(200)), 0),
            Decision::Drop(DropReason::TaggedFromAccessVif)
        );
        // Vif-to-vif across VLAN domains does not happen.
        assert_eq!(
            s.forward(V1, &frame(MAC_V3, MAC_V1, None), 0),
            Decision::Flood { domain: None }
        );
    }

    #[test]
    fn cross_connect_mode() {
        let mut s = Switch::new(SwitchConfig {
            mode: Mode::CrossConnect,
            ..Default::default()
        });
        s.add_endpoint(P0, EndpointKind::Uplink);
        s.add_endpoint(
            V1,
            EndpointKind::Vif {
                mac: MAC_V1,
                vlan: None,
            },
        );
        s.add_endpoint(
            V2,
            EndpointKind::Vif {
                mac: MAC_V2,
                vlan: None,
            },
        );
        s.cross_connect(V1, P0);
        // No lookup: any destination goes to the peer.
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 0),
            Decision::Unicast(P0, Egress::AsIs)
        );
        assert_eq!(
            s.forward(P0, &frame(MAC_V2, HOST_A, None), 0),
            Decision::Unicast(V1, Egress::AsIs)
        );
        assert_eq!(
            s.forward(V2, &frame(HOST_A, MAC_V2, None), 0),
            Decision::Drop(DropReason::NotConnected)
        );
        // Re-pairing replaces the old pair on both sides.
        s.cross_connect(V2, P0);
        assert_eq!(
            s.forward(V1, &frame(HOST_A, MAC_V1, None), 0),
            Decision::Drop(DropReason::NotConnected)
        );
        assert_eq!(
            s.forward(P0, &frame(HOST_A, HOST_A, None), 0),
            Decision::Unicast(V2, Egress::AsIs)
        );
        s.remove_endpoint(V2);
        assert_eq!(
            s.forward(P0, &frame(HOST_A, HOST_A, None), 0),
            Decision::Drop(DropReason::NotConnected)
        );
    }

    #[test]
    fn table_is_bounded() {
        let mut s = Switch::new(SwitchConfig {
            max_learned: 4,
            ..Default::default()
        });
        s.add_endpoint(
            V1,
            EndpointKind::Vif {
                mac: MAC_V1,
                vlan: None,
            },
        );
        s.add_endpoint(P0, EndpointKind::Uplink);
        for i in 0..100u8 {
            s.forward(V1, &frame(BCAST, [2, 0, 0, 0, 1, i], None), 0);
        }
        assert_eq!(s.learned_entries(), 4);
        assert_eq!(s.table_full, 96);
    }

    #[test]
    fn removing_endpoint_forgets_its_macs() {
        let mut s = basic();
        s.forward(P0, &frame(BCAST, HOST_A, None), 0);
        assert_eq!(s.learned_entries(), 1);
        s.remove_endpoint(P0);
        assert_eq!(s.learned_entries(), 0);
        assert_eq!(
            s.forward(P0, &frame(BCAST, HOST_A, None), 0),
            Decision::Drop(DropReason::UnknownIngress)
        );
        // V1's static entry is gone with it.
        s.remove_endpoint(V1);
        assert_eq!(
            s.forward(V2, &frame(MAC_V1, MAC_V2, None), 0),
            Decision::Flood { domain: None }
        );
    }

    #[test]
    fn entries_list_static_and_learned_with_age_and_follow_the_ageing_time() {
        let mut s = basic();
        s.forward(P0, &frame(MAC_V1, HOST_A, Some(7)), SEC);
        let e = s.entries(3 * SEC);
        assert_eq!(e.len(), 3, "{e:?}");
        let learned: Vec<_> = e.iter().filter(|x| !x.is_static).collect();
        assert_eq!(learned.len(), 1);
        assert_eq!(
            (learned[0].mac, learned[0].domain, learned[0].endpoint),
            (HOST_A, Some(7), P0)
        );
        assert_eq!(learned[0].age_ns, Some(2 * SEC));
        let v1 = e.iter().find(|x| x.mac == MAC_V1).unwrap();
        assert_eq!(
            (v1.is_static, v1.endpoint, v1.age_ns, v1.domain),
            (true, V1, None, None)
        );
        // A shorter ageing time applies at once: the learned entry is aged out.
        s.set_ageing(SEC);
        assert_eq!(
            s.entries(3 * SEC).iter().filter(|x| !x.is_static).count(),
            0
        );
        assert_eq!(s.config().ageing_ns, SEC);
    }
}
