//! Every xenstore value the control plane parses: a frontend's directory (single- and
//! multi-queue) with arbitrary keys and values, read by `read_frontend`; and the single
//! values: numbers (`parse_num`, also states and directory names), the toolstack's
//! `mac`, `mtu` and `rate`.
//!
//! Invariants: every value is judged as an independent reference parser judges it; an
//! accepted frontend's keys are exactly the values written (queue count, ring refs,
//! channels, features, control ring); a refusal names a key from netbackd's own list
//! (never one the frontend invented), whose value is missing or fails the reference,
//! quoting at most 32 characters; an accepted MAC, rate or number prints back to itself;
//! the MTU stays in its bounds.
#![no_main]
use control::{
    parse_mac, parse_num, read_frontend, vif_mtu, Bound, Evtchn, FrontendError, NumError,
};
use dataplane::credit::parse_rate;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const TOP: &[&str] = &[
    "request-rx-copy",
    "multi-queue-num-queues",
    "feature-sg",
    "feature-gso-tcpv4",
    "feature-gso-tcpv6",
    "feature-gso-tcpv4-prefix",
    "request-multicast-control",
    "ctrl-ring-ref",
    "event-channel-ctrl",
];
const PER_QUEUE: &[&str] = &[
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "event-channel-tx",
    "event-channel-rx",
];

/// The input, as text lines (so the tests' directories are the seeds): `max=N`
/// (multi-queue-max-queues), `num=MIN,MAX,VALUE`, `mac=V`, `mtu=V`, `sg=1`, `rate=V`;
/// any other `key=value` line is a key of the frontend's directory.
#[derive(Default, Debug)]
struct Input {
    max_queues: u32,
    dir: HashMap<String, String>,
    num: Option<(String, u32, u32)>,
    mac: Option<String>,
    mtu: Option<String>,
    sg: bool,
    rate: Option<String>,
}

fn input(text: &str) -> Input {
    let mut inp = Input {
        max_queues: 4,
        ..Input::default()
    };
    for line in text.lines().take(128) {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "max" => inp.max_queues = v.parse::<u32>().map_or(4, |n| n % 10),
            "num" => {
                let mut it = v.splitn(3, ',');
                if let (Some(a), Some(b), Some(val)) = (it.next(), it.next(), it.next()) {
                    let (a, b) = (a.parse().unwrap_or(0), b.parse().unwrap_or(u32::MAX));
                    inp.num = Some((val.to_string(), a, b));
                }
            }
            "mac" => inp.mac = Some(v.into()),
            "mtu" => inp.mtu = Some(v.into()),
            "sg" => inp.sg = v == "1",
            "rate" => inp.rate = Some(v.into()),
            _ => {
                inp.dir.insert(k.into(), v.into());
            }
        }
    }
    inp
}

/// netbackd's number rule, restated: optional '-', then ASCII digits only; a negative
/// non-zero is below the minimum; compared as an unbounded integer.
fn ref_num(v: &str, min: u32, max: u32) -> Result<u32, NumError> {
    let (neg, d) = v.strip_prefix('-').map_or((false, v), |d| (true, d));
    if d.is_empty() || !d.chars().all(|c| c.is_ascii_digit()) {
        return Err(NumError::NotANumber);
    }
    let d = d.trim_start_matches('0');
    if neg && !d.is_empty() {
        return Err(NumError::OutOfRange(Bound::Min(min)));
    }
    let n: u128 = if d.len() > 30 {
        u128::MAX
    } else {
        d.parse().unwrap_or(0)
    };
    if n > u128::from(max) {
        Err(NumError::OutOfRange(Bound::Max(max)))
    } else if n < u128::from(min) {
        Err(NumError::OutOfRange(Bound::Min(min)))
    } else {
        Ok(n as u32)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let inp = input(text);
    if let Some((v, min, max)) = &inp.num {
        let got = parse_num(v, *min, *max);
        assert_eq!(
            got,
            ref_num(v, *min, *max),
            "parse_num({v:?}, {min}, {max})"
        );
        if let Ok(n) = got {
            assert_eq!(parse_num(&n.to_string(), *min, *max), Ok(n));
        }
    }
    if let Some(m) = &inp.mac {
        let parts: Vec<&str> = m.split(':').collect();
        let valid = parts.len() == 6
            && parts
                .iter()
                .all(|p| (1..=2).contains(&p.len()) && p.chars().all(|c| c.is_ascii_hexdigit()));
        match parse_mac(m) {
            Some(mac) => {
                assert!(valid, "{m:?} accepted");
                for (b, p) in mac.iter().zip(&parts) {
                    assert_eq!(u8::from_str_radix(p, 16).ok(), Some(*b));
                }
                let s = mac.map(|b| format!("{b:02x}")).join(":");
                assert_eq!(parse_mac(&s), Some(mac));
            }
            None => assert!(!valid, "{m:?} refused"),
        }
    }
    let mtu = vif_mtu(inp.mtu.as_deref(), inp.sg);
    let key = inp.mtu.as_deref().and_then(|v| ref_num(v, 68, 65_535).ok());
    let want = key.map_or(1500, |m| m as u16);
    assert_eq!(mtu, if inp.sg { want } else { want.min(1500) });
    if let Some(rate) = &inp.rate {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
        let want = rate.split_once(',').and_then(|(b, u)| {
            (digits(b) && digits(u)).then(|| (b.parse::<u64>().ok(), u.parse::<u64>().ok()))
        });
        match parse_rate(rate) {
            Ok(r) => {
                assert_eq!(want, Some((Some(r.bytes), Some(r.usec))), "rate {rate:?}");
                assert_eq!(parse_rate(&format!("{},{}", r.bytes, r.usec)), Ok(r));
            }
            Err(_) => assert!(
                !matches!(want, Some((Some(_), Some(_)))),
                "rate {rate:?} refused"
            ),
        }
    }

    // The frontend's directory.
    let max_queues = inp.max_queues;
    let dir = &inp.dir;
    let read = |k: &str| dir.get(k).cloned();
    match read_frontend(&read, max_queues) {
        Ok(fk) => {
            assert_eq!(ref_num(&dir["request-rx-copy"], 0, u32::MAX), Ok(1));
            let nq = match dir.get("multi-queue-num-queues") {
                None => 1,
                Some(v) => ref_num(v, 1, max_queues).expect("bad queue count accepted"),
            };
            assert_eq!(fk.queues.len() as u32, nq);
            let flag = |k: &str| dir.get(k).map(String::as_str) == Some("1");
            assert_eq!(fk.features.sg, flag("feature-sg"));
            assert_eq!(fk.features.gso_tcpv4, flag("feature-gso-tcpv4"));
            assert_eq!(fk.features.gso_tcpv6, flag("feature-gso-tcpv6"));
            assert_eq!(fk.features.gso_prefix, flag("feature-gso-tcpv4-prefix"));
            assert_eq!(fk.features.mcast, flag("request-multicast-control"));
            let num = |k: &str| {
                ref_num(dir.get(k).expect("accepted without the key"), 0, u32::MAX)
                    .expect("bad number accepted")
            };
            for (q, qk) in fk.queues.iter().enumerate() {
                let p = if nq > 1 {
                    format!("queue-{q}/")
                } else {
                    String::new()
                };
                assert_eq!(qk.prefix, p);
                assert_eq!(qk.tx_ring_ref, num(&format!("{p}tx-ring-ref")));
                assert_eq!(qk.rx_ring_ref, num(&format!("{p}rx-ring-ref")));
                match qk.evtchn {
                    Evtchn::Single(port) => assert_eq!(port, num(&format!("{p}event-channel"))),
                    Evtchn::Split { tx, rx } => {
                        assert!(!dir.contains_key(&format!("{p}event-channel")));
                        assert_eq!(
                            (tx, rx),
                            (
                                num(&format!("{p}event-channel-tx")),
                                num(&format!("{p}event-channel-rx"))
                            )
                        );
                    }
                }
            }
            match fk.ctrl {
                None => assert!(!dir.contains_key("ctrl-ring-ref")),
                Some(c) => assert_eq!(
                    (c.ring_ref, c.evtchn),
                    (num("ctrl-ring-ref"), num("event-channel-ctrl"))
                ),
            }
        }
        Err(e) => {
            let k = e.key().to_string();
            let known = TOP.contains(&k.as_str())
                || PER_QUEUE.contains(&k.as_str())
                || k.strip_prefix("queue-")
                    .and_then(|r| r.split_once('/'))
                    .is_some_and(|(n, rest)| {
                        n.parse::<u32>().is_ok_and(|n| n < max_queues) && PER_QUEUE.contains(&rest)
                    });
            assert!(known, "refusal names {k:?}");
            match &e {
                FrontendError::Missing { key } => assert!(!dir.contains_key(key)),
                FrontendError::NotANumber { key, value } => {
                    assert_eq!(ref_num(&dir[key], 0, u32::MAX), Err(NumError::NotANumber));
                    assert!(value.chars().count() <= 35);
                }
                FrontendError::OutOfRange { key, value, .. } => {
                    assert!(matches!(
                        ref_num(&dir[key], 0, u32::MAX),
                        Err(NumError::OutOfRange(_)) | Ok(_)
                    ));
                    assert!(value.chars().count() <= 35);
                }
                FrontendError::Invalid { key, value, .. } => {
                    assert_eq!(key, "request-rx-copy");
                    assert_ne!(ref_num(&dir[key], 0, u32::MAX), Ok(1));
                    assert!(value.chars().count() <= 35);
                }
                other => panic!("read_frontend returned {other:?}"),
            }
        }
    }
});
