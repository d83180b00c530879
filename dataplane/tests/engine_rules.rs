//! Every guest-TX rule against the engine: a guest sends exactly one kind of bad input and
//! the test checks the exact outcome (response statuses in the ring, the queue disabled or
//! not, the counter), while a second, healthy vif in the same group keeps passing traffic
//! (a frame to the wire and back) with nothing lost. EAL once per process: one test.

use dataplane::engine::{Disable, EngineConfig, Group, QueueCounters};
use dataplane::netif::{
    ExtraInfo, TxRequest, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_RSP_ERROR, XEN_NETIF_RSP_NULL, XEN_NETIF_RSP_OKAY,
};
use dataplane::offload::TxCaps;
use dataplane::txparse::Rogue;
use guest::harness::attach;
use guest::pktgen::{PktGen, Sink};
use guest::{Netfront, TxMeta};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::SimHost;

type G = Group<xen::sim::SimGrant, xen::sim::SimEvtchn>;
/// Builds the raw requests of one case.
type Build<'a> = Box<dyn FnOnce(&mut Netfront) -> Vec<TxRequest> + 'a>;

/// The healthy vif (dom 9) sends one generated frame; it must come back from the wire.
fn healthy_roundtrip(g: &mut G, nf: &mut Netfront, gen: &mut PktGen) {
    let mut f = Vec::new();
    gen.next_frame(&mut f);
    nf.send(0, &f, TxMeta::default()).unwrap();
    let mut sink = Sink::default();
    let t = Instant::now();
    while sink.stats.packets == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "healthy vif's frame lost"
        );
        g.poll();
        for p in nf.poll_rx(0).unwrap() {
            // Other guests' flooded frames arrive too; only ours are generated frames.
            sink.accept(&p.data);
        }
        nf.reap_tx(0).unwrap();
    }
}

fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxRequest {
    TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    }
}

/// Sends raw requests from a fresh guest (domain `domid`: one netfront per guest, as one
/// kernel owns a domain's memory), polls, returns the responses, what was disabled and the
/// counters.
#[allow(clippy::type_complexity)]
fn case(
    h: &SimHost,
    g: &mut G,
    domid: u16,
    build: impl FnOnce(&mut Netfront) -> Vec<TxRequest>,
) -> (Vec<(u16, i16)>, Vec<Disable>, Arc<QueueCounters>, Netfront) {
    h.add_domain(domid, &format!("bad{domid}"), 1024, 2048)
        .unwrap();
    let (mut nf, setup, ctr) = attach(h, domid, 0, [0x00, 0x16, 0x3e, 0, 5, domid as u8]);
    g.add_queue(setup);
    let reqs = build(&mut nf);
    nf.send_raw(0, &reqs).unwrap();
    g.poll();
    g.poll();
    let rsps = nf.reap_tx(0).unwrap();
    let dis = g.take_disabled().into_iter().map(|d| d.1).collect();
    (rsps, dis, ctr, nf)
}

#[test]
fn every_tx_rule_with_a_healthy_neighbour() {
    let env = guest::harness::Env::new("rules", 512, 8191);
    {
        let (_pool, _port, h) = (&env.pool, &env.port, &env.host);
        h.add_domain(9, "good", 4096, 8192).unwrap();
        let mut g: G = env.group(EngineConfig::default(), TxCaps::default());
        let good_mac = [0x00, 0x16, 0x3e, 0, 0, 9];
        let (mut good, gsetup, gctr) = attach(h, 9, 0, good_mac);
        g.add_queue(gsetup);
        let mut gen = PktGen {
            src_mac: good_mac,
            dst_mac: [2, 0, 0, 0, 0, 0x77],
            src_ip: [10, 0, 0, 9],
            dst_ip: [10, 0, 0, 77],
            sport: 9,
            dport: 9,
            frame_len: 128,
            seq: 0,
        };
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        let page: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let mut domid = 10u16;
        let mut next = || {
            domid += 1;
            domid
        };

        // --- Tier 1: the packet is answered with an error and counted; the vif goes on.
        // Runt: first slot shorter than an Ethernet header.
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            vec![req(nf.grant_data(&page).unwrap(), 0, 0, 1, 13)]
        });
        assert_eq!((r, d.len()), (vec![(1, XEN_NETIF_RSP_ERROR)], 0));
        assert_eq!(c.tx_drop_runt.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // More than 18 slots (19): every slot ERROR.
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            let gr = nf.grant_data(&page).unwrap();
            let mut v = vec![req(gr, 0, NETTXF_MORE_DATA, 0, 19 * 100)];
            for i in 1..19u16 {
                v.push(req(
                    gr,
                    0,
                    if i < 18 { NETTXF_MORE_DATA } else { 0 },
                    i,
                    100,
                ));
            }
            v
        });
        assert_eq!(r.len(), 19);
        assert!(r.iter().all(|x| x.1 == XEN_NETIF_RSP_ERROR) && d.is_empty());
        assert_eq!(c.tx_drop_too_many_slots.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // A continuation slot bigger than what is left of the frame.
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            let gr = nf.grant_data(&page).unwrap();
            vec![req(gr, 0, NETTXF_MORE_DATA, 1, 100), req(gr, 0, 0, 2, 200)]
        });
        assert_eq!(
            (r, d.len()),
            (vec![(1, XEN_NETIF_RSP_ERROR), (2, XEN_NETIF_RSP_ERROR)], 0)
        );
        assert_eq!(c.tx_drop_frag_overflow.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // Zero-length continuation slot (XSA-448): answered OKAY, never attached; the
        // packet itself goes out.
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            let gr = nf.grant_data(&page).unwrap();
            vec![req(gr, 0, NETTXF_MORE_DATA, 1, 100), req(gr, 0, 0, 2, 0)]
        });
        assert_eq!(
            r,
            vec![(2, XEN_NETIF_RSP_OKAY), (1, XEN_NETIF_RSP_OKAY)]
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
        );
        assert!(d.is_empty());
        assert_eq!(c.tx_packets.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // A grant revoked while its request is in flight: ERROR, counted, no crash.
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            let gr = nf.grant_data(&page).unwrap();
            nf.revoke(gr);
            vec![req(gr, 0, 0, 7, 100)]
        });
        assert_eq!((r, d.len()), (vec![(7, XEN_NETIF_RSP_ERROR)], 0));
        assert_eq!(c.tx_drop_copy_error.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // Multicast add without multicast control negotiated: answered ERROR, extra NULL.
        let (r, d, _c, _nf) = case(h, &mut g, next(), |nf| {
            let gr = nf.grant_data(&page).unwrap();
            vec![
                req(gr, 0, NETTXF_EXTRA_INFO, 3, 0),
                ExtraInfo::mcast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, [1, 0, 0x5e, 0, 0, 1], false)
                    .to_tx_slot(),
            ]
        });
        assert_eq!(
            (r, d.len()),
            (vec![(3, XEN_NETIF_RSP_ERROR), (0, XEN_NETIF_RSP_NULL)], 0)
        );
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // Headers spread over 18 tiny slots (XSA-423's shape): accepted, gathered, and the
        // frame arrives whole at the healthy guest (unicast to its MAC).
        let mut frame = good_mac.to_vec();
        frame.extend_from_slice(&[0x00, 0x16, 0x3e, 0, 5, 0x42, 0x88, 0xb5]);
        frame.extend((0..170u8).map(|i| i.wrapping_mul(3)));
        let (r, d, c, _nf) = case(h, &mut g, next(), |nf| {
            let mut sizes = vec![14usize];
            sizes.extend(std::iter::repeat_n(10usize, 17));
            let total: usize = sizes.iter().sum();
            let mut v = Vec::new();
            let mut off = 0;
            for (i, sz) in sizes.iter().enumerate() {
                let gr = nf.grant_data(&frame[off..off + sz]).unwrap();
                let more = if i + 1 < sizes.len() {
                    NETTXF_MORE_DATA
                } else {
                    0
                };
                let size = if i == 0 { total as u16 } else { *sz as u16 };
                v.push(req(gr, 0, more, i as u16, size));
                off += sz;
            }
            v
        });
        assert_eq!(r.len(), 18);
        assert!(r.iter().all(|x| x.1 == XEN_NETIF_RSP_OKAY) && d.is_empty());
        assert_eq!(c.tx_packets.load(Ordering::Relaxed), 1);
        let t = Instant::now();
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5));
            g.poll();
            got.extend(
                good.poll_rx(0)
                    .unwrap()
                    .into_iter()
                    .filter(|p| p.data.len() == 184),
            );
        }
        assert_eq!(got[0].data, frame[..184].to_vec());
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        // --- Tier 2: the frontend is rogue; its queue is disabled, counted, reported.
        let rogue_cases: Vec<(Rogue, Build)> = vec![
            (
                Rogue::FatalSlotCount,
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    let mut v = vec![req(gr, 0, NETTXF_MORE_DATA, 0, 2000)];
                    for i in 1..20u16 {
                        v.push(req(
                            gr,
                            0,
                            if i < 19 { NETTXF_MORE_DATA } else { 0 },
                            i,
                            100,
                        ));
                    }
                    v
                }),
            ),
            (
                Rogue::MissingSlots,
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    vec![
                        req(gr, 0, NETTXF_MORE_DATA, 1, 300),
                        req(gr, 0, NETTXF_MORE_DATA, 2, 100),
                    ]
                }),
            ),
            (
                Rogue::MissingExtra,
                Box::new(|nf: &mut Netfront| {
                    vec![req(
                        nf.grant_data(&page).unwrap(),
                        0,
                        NETTXF_EXTRA_INFO,
                        1,
                        100,
                    )]
                }),
            ),
            (
                Rogue::BadExtraType(9),
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    vec![
                        req(gr, 0, NETTXF_EXTRA_INFO, 1, 100),
                        ExtraInfo {
                            ty: 9,
                            flags: 0,
                            payload: [0; 6],
                        }
                        .to_tx_slot(),
                    ]
                }),
            ),
            (
                Rogue::ZeroGsoSize,
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    vec![
                        req(gr, 0, NETTXF_EXTRA_INFO, 1, 100),
                        ExtraInfo::gso(0, XEN_NETIF_GSO_TYPE_TCPV4, false).to_tx_slot(),
                    ]
                }),
            ),
            (
                Rogue::BadGsoType(7),
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    vec![
                        req(gr, 0, NETTXF_EXTRA_INFO, 1, 100),
                        ExtraInfo::gso(1448, 7, false).to_tx_slot(),
                    ]
                }),
            ),
            (
                Rogue::SlotCrossesPage,
                Box::new(|nf: &mut Netfront| {
                    let gr = nf.grant_data(&page).unwrap();
                    vec![
                        req(gr, 0, NETTXF_MORE_DATA, 1, 300),
                        req(gr, 4000, 0, 2, 200),
                    ]
                }),
            ),
            (
                Rogue::FirstSlotCrossesPage,
                Box::new(|nf: &mut Netfront| {
                    vec![req(nf.grant_data(&page).unwrap(), 4000, 0, 1, 200)]
                }),
            ),
        ];
        for (expect, build) in rogue_cases {
            let (r, d, c, _nf) = case(h, &mut g, next(), build);
            assert_eq!(d, vec![Disable::Rogue(expect)], "{expect:?}");
            assert!(
                r.is_empty(),
                "{expect:?}: a rogue frontend gets no responses"
            );
            assert_eq!(c.rogue.load(Ordering::Relaxed), 1);
            healthy_roundtrip(&mut g, &mut good, &mut gen);
        }

        // An impossible producer index: disabled.
        let d_idx = next();
        h.add_domain(d_idx, "badidx", 1024, 2048).unwrap();
        let (mut nf, setup, c) = attach(h, d_idx, 0, [0x00, 0x16, 0x3e, 0, 5, 0xee]);
        g.add_queue(setup);
        nf.poke_tx_req_prod(0, 5000);
        g.poll();
        let d: Vec<_> = g.take_disabled().into_iter().map(|d| d.1).collect();
        assert_eq!(d, vec![Disable::ImpossibleTxIndex]);
        assert_eq!(c.rogue.load(Ordering::Relaxed), 1);
        healthy_roundtrip(&mut g, &mut good, &mut gen);

        assert_eq!(
            gctr.tx_drop_copy_error.load(Ordering::Relaxed) + gctr.rogue.load(Ordering::Relaxed),
            0
        );
        assert_eq!(good.stats.tx_errors, 0);
        drop(g);
    }
    env.finish();
}
