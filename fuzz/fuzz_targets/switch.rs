//! The L2 switch under arbitrary frames from arbitrary endpoints (uplinks, access and
//! untagged vifs), interleaved with endpoint changes, cross-connects, ageing changes,
//! evictions, peer announcements and time passing.
//!
//! Invariants: the cached path (`forward_cached`, `flood_targets_into`) decides exactly
//! what the uncached one decides; a frame from an unknown endpoint, a runt and a tagged
//! frame from an access vif are dropped for that reason; a unicast never goes back to
//! its ingress or to an unknown endpoint, never bridges uplink to uplink, and tags or
//! strips only between an access vif and an uplink; a flood list holds no ingress, no
//! duplicate and no uplink for an uplink's frame; a learnable source is in the table
//! behind its ingress (or pinned by a vif's static MAC) unless the table was full; the
//! table never holds more learned entries than configured and no key twice.
#![no_main]
use arbitrary::Arbitrary;
use dataplane::switch::{
    parse_l2, Decision, DropReason, Egress, EndpointId, EndpointKind, FwdCache, Mode, Switch,
    SwitchConfig,
};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};

#[derive(Arbitrary, Debug)]
enum Op {
    Frame {
        ingress: u8,
        dst: u8,
        src: u8,
        tag: Option<u16>,
        runt: u8,
    },
    Raw {
        ingress: u8,
        bytes: Vec<u8>,
    },
    Add {
        id: u8,
        vif: bool,
        mac: u8,
        vlan: Option<u16>,
    },
    Remove(u8),
    Connect(u8, u8),
    Ageing(u32),
    Evict,
    Peer {
        vlan: Option<u16>,
        mac: u8,
        id: u8,
    },
    Sleep(u32),
}

#[derive(Arbitrary, Debug)]
struct Script {
    cross: bool,
    max_learned: u8,
    ops: Vec<Op>,
}

/// A small MAC vocabulary so frames hit learned and static entries: unicast, the
/// broadcast, a multicast and zero.
fn mac(i: u8) -> [u8; 6] {
    match i % 12 {
        9 => [0xff; 6],
        10 => [0x01, 0x00, 0x5e, 0, 0, 1],
        11 => [0; 6],
        n => [0x02, 0, 0, 0, 0, n],
    }
}

fn vlan(v: Option<u16>) -> Option<u16> {
    v.map(|v| 1 + v % 4)
}

fuzz_target!(|s: Script| {
    let cfg = SwitchConfig {
        mode: if s.cross {
            Mode::CrossConnect
        } else {
            Mode::Learning
        },
        ageing_ns: 1_000_000,
        max_learned: 1 + usize::from(s.max_learned % 32),
    };
    let max_learned = cfg.max_learned;
    let mut sw = Switch::new(cfg);
    let mut kinds: HashMap<EndpointId, EndpointKind> = HashMap::new();
    let mut caches: HashMap<EndpointId, FwdCache> = HashMap::new();
    let mut ageing = cfg.ageing_ns;
    let mut now = 1u64;
    let mut flood = Vec::new();
    for op in s.ops.iter().take(256) {
        match op {
            Op::Frame {
                ingress,
                dst,
                src,
                tag,
                runt,
            } => {
                let mut f = Vec::new();
                f.extend_from_slice(&mac(*dst));
                f.extend_from_slice(&mac(*src));
                if let Some(t) = vlan(*tag) {
                    f.extend_from_slice(&[0x81, 0x00]);
                    f.extend_from_slice(&t.to_be_bytes());
                }
                f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                if runt % 8 == 0 {
                    f.truncate(usize::from(runt / 8) % 18);
                }
                frame(
                    &mut sw,
                    &kinds,
                    &mut caches,
                    EndpointId(u32::from(ingress % 8)),
                    &f,
                    now,
                    ageing,
                    max_learned,
                    &mut flood,
                );
            }
            Op::Raw { ingress, bytes } => {
                frame(
                    &mut sw,
                    &kinds,
                    &mut caches,
                    EndpointId(u32::from(ingress % 8)),
                    bytes,
                    now,
                    ageing,
                    max_learned,
                    &mut flood,
                );
            }
            Op::Add {
                id,
                vif,
                mac: m,
                vlan: v,
            } => {
                let id = EndpointId(u32::from(id % 8));
                let kind = if *vif {
                    EndpointKind::Vif {
                        mac: mac(*m),
                        vlan: vlan(*v),
                    }
                } else {
                    EndpointKind::Uplink
                };
                sw.add_endpoint(id, kind);
                kinds.insert(id, kind);
            }
            Op::Remove(id) => {
                let id = EndpointId(u32::from(id % 8));
                sw.remove_endpoint(id);
                kinds.remove(&id);
            }
            Op::Connect(a, b) => {
                sw.cross_connect(EndpointId(u32::from(a % 8)), EndpointId(u32::from(b % 8)))
            }
            Op::Ageing(ns) => {
                ageing = u64::from(*ns) + 1;
                sw.set_ageing(ageing);
            }
            Op::Evict => sw.evict_aged(now),
            Op::Peer {
                vlan: v,
                mac: m,
                id,
            } => sw.learn_from_peer(vlan(*v), mac(*m), EndpointId(u32::from(id % 8)), now),
            Op::Sleep(ns) => now += u64::from(*ns),
        }
        assert!(
            sw.learned_entries() <= max_learned,
            "{} learned, max {max_learned}",
            sw.learned_entries()
        );
        let entries = sw.entries(now);
        let mut keys = HashSet::new();
        for e in &entries {
            assert!(keys.insert((e.domain, e.mac)), "{e:?} twice");
            assert!(
                kinds.contains_key(&e.endpoint),
                "{e:?} behind a removed endpoint"
            );
            if e.is_static {
                assert!(
                    matches!(kinds[&e.endpoint], EndpointKind::Vif { mac, vlan } if mac == e.mac && vlan == e.domain)
                );
            }
        }
    }
});

#[allow(clippy::too_many_arguments)]
fn frame(
    sw: &mut Switch,
    kinds: &HashMap<EndpointId, EndpointKind>,
    caches: &mut HashMap<EndpointId, FwdCache>,
    ingress: EndpointId,
    f: &[u8],
    now: u64,
    ageing: u64,
    max_learned: usize,
    flood: &mut Vec<(EndpointId, Egress)>,
) {
    let full_before = sw.table_full;
    let cache = caches.entry(ingress).or_default();
    let d = sw.forward_cached(ingress, f, now, cache);
    let again = sw.forward(ingress, f, now);
    assert_eq!(d, again, "cached decision differs");
    let l2 = parse_l2(f);
    let Some(&kind) = kinds.get(&ingress) else {
        assert_eq!(d, Decision::Drop(DropReason::UnknownIngress));
        return;
    };
    let Some(l2) = l2 else {
        assert_eq!(d, Decision::Drop(DropReason::Runt));
        return;
    };
    if sw.config().mode == Mode::CrossConnect {
        assert!(
            matches!(
                d,
                Decision::Unicast(..) | Decision::Drop(DropReason::NotConnected)
            ),
            "{d:?}"
        );
        return;
    }
    let domain = match kind {
        EndpointKind::Uplink => l2.vlan,
        EndpointKind::Vif { vlan: Some(_), .. } if l2.vlan.is_some() => {
            assert_eq!(d, Decision::Drop(DropReason::TaggedFromAccessVif));
            return;
        }
        EndpointKind::Vif { vlan, .. } => vlan.or(l2.vlan),
    };
    match d {
        Decision::Unicast(dst, egress) => {
            assert_ne!(dst, ingress, "hairpin");
            let dk = *kinds.get(&dst).expect("unicast to an unknown endpoint");
            assert!(
                !(kind == EndpointKind::Uplink && dk == EndpointKind::Uplink),
                "uplink to uplink"
            );
            match egress {
                Egress::AsIs => {}
                Egress::Tag(v) => assert!(
                    matches!(kind, EndpointKind::Vif { vlan: Some(x), .. } if x == v)
                        && dk == EndpointKind::Uplink
                ),
                Egress::Strip => assert!(
                    kind == EndpointKind::Uplink
                        && matches!(dk, EndpointKind::Vif { vlan: Some(_), .. })
                ),
            }
            assert_eq!(l2.dst[0] & 1, 0, "multicast unicast");
        }
        Decision::Flood { domain: fd } => {
            assert_eq!(fd, domain);
            let cache = caches.get_mut(&ingress).expect("cache made above");
            sw.flood_targets_into(ingress, fd, cache, flood);
            let plain: Vec<_> = sw.flood_targets(ingress, fd).collect();
            assert_eq!(*flood, plain, "cached flood list differs");
            let mut seen = HashSet::new();
            for (e, _) in &plain {
                assert_ne!(*e, ingress);
                assert!(seen.insert(*e), "{e:?} flooded twice");
                if kind == EndpointKind::Uplink {
                    assert_ne!(kinds[e], EndpointKind::Uplink, "flood uplink to uplink");
                }
            }
        }
        Decision::Drop(r) => assert_eq!(r, DropReason::NoDestination),
    }
    // Learning: the source is behind the ingress now.
    let src = l2.src;
    if src[0] & 1 == 0 && src != [0; 6] && ageing > 0 && sw.table_full == full_before {
        let e = sw
            .entries(now)
            .into_iter()
            .find(|e| e.domain == domain && e.mac == src);
        let e = e.unwrap_or_else(|| panic!("source {src:?} in {domain:?} not learned"));
        assert!(
            e.is_static || e.endpoint == ingress,
            "{e:?} not behind {ingress:?}"
        );
    }
    let _ = max_learned;
}
