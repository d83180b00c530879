//! Exercises `xen::linux` against a real guest's netfront in a Xen dom0: a stand-in
//! backend for the first vif that appears (xenbus handshake only, it moves no packets)
//! that maps the guest's rings, binds its event channels, then grant-copies the guest's
//! first TX buffer (gntdev and privcmd paths) and writes into its first RX buffer, checking
//! every byte against a gntdev mapping of the same grant. Run by
//! `tests/realxen/xen-linux-guest.sh`. Prints `CHECK name: ok|FAIL detail` lines; exits
//! non-zero if any failed.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::iface::gntst;
use xen::linux::{
    GntallocRegion, LinuxEvtchn, LinuxGrantCopy, LinuxGrantMap, PrivcmdGrantCopy, PAGE,
};
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy, GrantMap, Mapping, Tx, XenStore};

struct Checks {
    failed: usize,
}

impl Checks {
    fn report(&mut self, name: &str, r: Result<String, String>) -> bool {
        match r {
            Ok(note) => {
                println!("CHECK {name}: ok ({note})");
                true
            }
            Err(why) => {
                self.failed += 1;
                println!("CHECK {name}: FAIL {why}");
                false
            }
        }
    }
    fn done(&self) -> ExitCode {
        if self.failed == 0 {
            println!("LINUX-GUEST-CHECK: all ok");
            ExitCode::SUCCESS
        } else {
            println!("LINUX-GUEST-CHECK: {} failed", self.failed);
            ExitCode::FAILURE
        }
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn rd(xs: &XenStore, p: &str) -> Option<String> {
    xs.read(Tx::NONE, p).ok().flatten()
}

/// Polls `f` every 100 ms until it gives Some or `secs` pass.
fn until<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn u16_at(p: *const u8, off: usize) -> u16 {
    // SAFETY: callers pass offsets inside a live 4 KiB ring mapping.
    u16::from_le(unsafe { p.add(off).cast::<u16>().read_volatile() })
}

fn u32_at(p: *const u8, off: usize) -> u32 {
    // SAFETY: as above.
    u32::from_le(unsafe { p.add(off).cast::<u32>().read_volatile() })
}

fn op(domid: u16, gref: u32, offset: u16, local: *mut u8, len: u16, dir: CopyDir) -> CopyOp {
    CopyOp {
        domid,
        gref,
        offset,
        local,
        len,
        dir,
        status: 99,
    }
}

fn main() -> ExitCode {
    let mut c = Checks { failed: 0 };
    let xs = match XenStore::open() {
        Ok(x) => x,
        Err(e) => {
            c.report("xenstore", Err(s(e)));
            return c.done();
        }
    };
    // The first vif the toolstack creates.
    let Some((dom, be)) = until(90, || {
        let doms = xs
            .directory(Tx::NONE, "/local/domain/0/backend/vif")
            .ok()??;
        let d = doms.first()?.clone();
        let devs = xs
            .directory(Tx::NONE, &format!("/local/domain/0/backend/vif/{d}"))
            .ok()??;
        let dev = devs.first()?.clone();
        Some((
            d.parse::<u16>().ok()?,
            format!("/local/domain/0/backend/vif/{d}/{dev}"),
        ))
    }) else {
        c.report("vif", Err("no backend/vif node within 90 s".into()));
        return c.done();
    };
    let fe = rd(&xs, &format!("{be}/frontend")).unwrap_or_default();
    until(10, || {
        (rd(&xs, &format!("{be}/state")).as_deref() == Some("1")).then_some(())
    });
    for (k, v) in [
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-sg", "0"),
        ("feature-split-event-channels", "1"),
        ("state", "2"),
    ] {
        if let Err(e) = xs.write(Tx::NONE, &format!("{be}/{k}"), v) {
            c.report("vif", Err(format!("write {be}/{k}: {e}")));
            return c.done();
        }
    }
    let fe_ok = until(60, || {
        matches!(
            rd(&xs, &format!("{fe}/state")).as_deref(),
            Some("3") | Some("4")
        )
        .then_some(())
        .filter(|_| rd(&xs, &format!("{fe}/tx-ring-ref")).is_some())
    });
    if fe_ok.is_none() {
        c.report(
            "vif",
            Err(format!("frontend {fe} never published its rings")),
        );
        return c.done();
    }
    let num = |k: &str| rd(&xs, &format!("{fe}/{k}")).and_then(|v| v.parse::<u32>().ok());
    let (Some(tx_ref), Some(rx_ref)) = (num("tx-ring-ref"), num("rx-ring-ref")) else {
        c.report("vif", Err("ring refs unreadable".into()));
        return c.done();
    };
    let ev_tx = num("event-channel-tx").or_else(|| num("event-channel"));
    let ev_rx = num("event-channel-rx").or(ev_tx);
    let (Some(ev_tx), Some(ev_rx)) = (ev_tx, ev_rx) else {
        c.report("vif", Err("event channels unreadable".into()));
        return c.done();
    };
    c.report(
        "vif",
        Ok(format!(
            "dom{dom} {be}: tx-ring-ref={tx_ref} rx-ring-ref={rx_ref} evtchn tx={ev_tx} rx={ev_rx}"
        )),
    );

    let gm = match LinuxGrantMap::open() {
        Ok(g) => g,
        Err(e) => {
            c.report("guest-ring-map", Err(s(e)));
            return c.done();
        }
    };
    let rings = gm
        .map(dom, &[tx_ref], true)
        .and_then(|t| Ok((t, gm.map(dom, &[rx_ref], true)?)));
    let (txr, rxr) = match rings {
        Ok(r) => r,
        Err(e) => {
            c.report("guest-ring-map", Err(s(e)));
            return c.done();
        }
    };
    c.report(
        "guest-ring-map",
        Ok(format!(
            "tx req_prod={} rx req_prod={}",
            u32_at(txr.as_ptr(), 0),
            u32_at(rxr.as_ptr(), 0)
        )),
    );

    let mut ev = match LinuxEvtchn::open() {
        Ok(e) => e,
        Err(e) => {
            c.report("guest-evtchn-bind", Err(s(e)));
            return c.done();
        }
    };
    let ports = ev.bind_interdomain(dom, ev_tx).and_then(|t| {
        Ok((
            t,
            if ev_rx == ev_tx {
                t
            } else {
                ev.clone().bind_interdomain(dom, ev_rx)?
            },
        ))
    });
    let (ptx, prx) = match ports {
        Ok(p) => p,
        Err(e) => {
            c.report("guest-evtchn-bind", Err(s(e)));
            return c.done();
        }
    };
    c.report("guest-evtchn-bind", Ok(format!("local tx={ptx} rx={prx}")));
    let _ = xs.write(Tx::NONE, &format!("{be}/state"), "4");

    // The guest's first TX request (ARP from its pings) comes with an event: its sring
    // starts with req_event = 1.
    let t0 = Instant::now();
    let mut notified = false;
    while t0.elapsed() < Duration::from_secs(90) {
        ev.wait(Duration::from_millis(500));
        notified |= ev.take_pending(ptx);
        if u32_at(txr.as_ptr(), 0) > 0 && (notified || t0.elapsed() > Duration::from_secs(80)) {
            break;
        }
    }
    let req_prod = u32_at(txr.as_ptr(), 0);
    c.report(
        "guest-evtchn-notify",
        if notified {
            Ok(format!(
                "tx port {ptx} pending after the guest posted {req_prod} request(s)"
            ))
        } else {
            Err(format!(
                "no event on tx port {ptx} (tx req_prod={req_prod})"
            ))
        },
    );
    let _ = ev.unmask(ptx);
    if req_prod == 0 {
        c.report("guest-tx", Err("the guest sent nothing".into()));
        return c.done();
    }
    let gref = u32_at(txr.as_ptr(), 64);
    let off = u16_at(txr.as_ptr(), 68);
    let size = u16_at(txr.as_ptr(), 74);
    let n = size.min(4096 - off.min(4096));
    // Reference bytes through a read-only mapping of the same grant.
    let reference = match gm.map(dom, &[gref], false) {
        Ok(m) => {
            // SAFETY: a live mapping of one page; off + n <= 4096.
            unsafe { std::slice::from_raw_parts(m.as_ptr().add(usize::from(off)), usize::from(n)) }
                .to_vec()
        }
        Err(e) => {
            c.report("guest-tx", Err(format!("mapping tx gref {gref}: {e}")));
            return c.done();
        }
    };
    c.report(
        "guest-tx",
        Ok(format!(
            "req[0] gref={gref} offset={off} size={size}: {n} bytes, first16 {:02x?}",
            &reference[..reference.len().min(16)]
        )),
    );

    c.report(
        "guest-tx-gntdev",
        (|| {
            let mut g = LinuxGrantCopy::open().map_err(s)?;
            let mut buf = vec![0u8; 4096];
            let mut ops = [op(
                dom,
                gref,
                off,
                buf.as_mut_ptr(),
                n,
                CopyDir::FromForeign,
            )];
            // SAFETY: the local range is inside buf.
            unsafe { g.copy(&mut ops) }.map_err(s)?;
            if ops[0].status != gntst::OKAY {
                return Err(format!("status {}", ops[0].status));
            }
            if buf[..usize::from(n)] != reference[..] {
                return Err("bytes differ from the mapping".into());
            }
            Ok(format!("{n} bytes equal"))
        })(),
    );

    let region = match GntallocRegion::alloc(0, 2) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            c.report("guest-tx-privcmd", Err(s(e)));
            return c.done();
        }
    };
    c.report(
        "guest-tx-privcmd",
        (|| {
            let mut p = PrivcmdGrantCopy::new(vec![region.clone()]).map_err(s)?;
            // Straddle the region's page boundary: two hypercall ops.
            let at = PAGE - usize::from(n) / 2;
            let local = region.as_ptr().wrapping_add(at);
            let mut ops = [op(dom, gref, off, local, n, CopyDir::FromForeign)];
            // SAFETY: the local range is inside the 2-page region.
            unsafe { p.copy(&mut ops) }.map_err(s)?;
            if ops[0].status != gntst::OKAY {
                return Err(format!("status {}", ops[0].status));
            }
            // SAFETY: inside the region's mapping.
            let got = unsafe { std::slice::from_raw_parts(local, usize::from(n)) };
            if got != &reference[..] {
                return Err("bytes differ from the mapping".into());
            }
            let st = p.stats();
            if st.fallback_ops != 0 || st.hypercalls != 1 {
                return Err(format!("unexpected path counters {st:?}"));
            }
            Ok(format!("{n} bytes equal; {st:?}"))
        })(),
    );

    // RX: write into the guest's first posted RX buffer (no response is published, so the
    // guest never looks at it) and read it back through a mapping.
    c.report(
        "guest-rx-copy",
        (|| {
            if u32_at(rxr.as_ptr(), 0) == 0 {
                return Err("the guest posted no RX buffers".into());
            }
            let rgref = u32_at(rxr.as_ptr(), 64 + 4);
            let pat: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
            // SAFETY: first 200 bytes of the region.
            unsafe { std::ptr::copy_nonoverlapping(pat.as_ptr(), region.as_ptr(), 200) };
            let mut p = PrivcmdGrantCopy::new(vec![region.clone()]).map_err(s)?;
            let mut g = LinuxGrantCopy::open().map_err(s)?;
            let mut heap = pat.clone();
            heap.reverse();
            let mut a = [op(dom, rgref, 0, region.as_ptr(), 200, CopyDir::ToForeign)];
            let mut b = [op(
                dom,
                rgref,
                1000,
                heap.as_mut_ptr(),
                200,
                CopyDir::ToForeign,
            )];
            // SAFETY: local ranges inside the region and `heap`.
            unsafe {
                p.copy(&mut a).map_err(s)?;
                g.copy(&mut b).map_err(s)?;
            }
            if a[0].status != gntst::OKAY || b[0].status != gntst::OKAY {
                return Err(format!("statuses {} {}", a[0].status, b[0].status));
            }
            let m = gm.map(dom, &[rgref], false).map_err(s)?;
            // SAFETY: a live one-page mapping.
            let page = unsafe { std::slice::from_raw_parts(m.as_ptr(), PAGE) };
            if page[..200] != pat[..] || page[1000..1200] != heap[..] {
                return Err("guest RX page does not hold what was copied".into());
            }
            Ok(format!(
                "rx gref {rgref}: privcmd at 0 and gntdev at 1000 seen in the page"
            ))
        })(),
    );
    c.report(
        "guest-notify",
        ev.notify(prx)
            .map(|_| format!("notified rx port {prx}"))
            .map_err(s),
    );
    let _ = xs.write(Tx::NONE, &format!("{be}/state"), "6");
    c.done()
}
