//! Exercises `xen::linux` against dom0 itself, with no guest: run it as root in a Xen
//! dom0 (the realxen harness does, via `tests/realxen/xen-linux-check.sh`).
//!
//! Pages that dom0 grants to itself through gntalloc stand in for a guest's grants, so
//! grant map, gntdev grant copy, the privcmd `GNTTABOP_copy` path, event channels
//! (loopback between two handles) and a mempool over self-granted memory can all be
//! checked. Prints one `CHECK name: ok|FAIL detail` line per check and exits non-zero if
//! any failed. The local domid is 0 unless `LINUX_CHECK_DOMID` says otherwise.
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use xen::iface::gntst;
use xen::linux::{
    probe, GntallocRegion, LinuxEvtchn, LinuxGrantCopy, LinuxGrantMap, PrivcmdGrantCopy, PAGE,
};
use xen::{CopyDir, CopyOp, EventChannel, GrantCopy, GrantMap, Mapping};

struct Checks {
    failed: usize,
}

impl Checks {
    fn report(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(note) if note.is_empty() => println!("CHECK {name}: ok"),
            Ok(note) => println!("CHECK {name}: ok ({note})"),
            Err(why) => {
                self.failed += 1;
                println!("CHECK {name}: FAIL {why}");
            }
        }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn region_bytes(r: &GntallocRegion, off: usize, len: usize) -> Vec<u8> {
    assert!(off + len <= r.len());
    // SAFETY: inside the region's mapping (asserted), read as plain bytes.
    unsafe { std::slice::from_raw_parts(r.as_ptr().add(off), len) }.to_vec()
}

fn fill_region(r: &GntallocRegion, off: usize, data: &[u8]) {
    assert!(off + data.len() <= r.len());
    // SAFETY: inside the region's mapping (asserted); nothing else writes it now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), r.as_ptr().add(off), data.len()) };
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

fn statuses(ops: &[CopyOp]) -> Result<(), String> {
    match ops.iter().position(|o| o.status != gntst::OKAY) {
        None => Ok(()),
        Some(i) => Err(format!("op {i} status {}", ops[i].status)),
    }
}

fn main() -> ExitCode {
    let dom: u16 = std::env::var("LINUX_CHECK_DOMID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut c = Checks { failed: 0 };

    c.report(
        "probe",
        probe()
            .map(|p| {
                format!(
                    "control_domain={:?} fast_path={}",
                    p.control_domain,
                    p.fast_path_missing.as_deref().unwrap_or("available")
                )
            })
            .map_err(|e| e.to_string()),
    );

    // The "foreign" pages: 4 self-granted pages with a known pattern.
    let foreign = match GntallocRegion::alloc(dom, 4) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            c.report("gntalloc", Err(e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let fpat = pattern(7, 4 * PAGE);
    fill_region(&foreign, 0, &fpat);
    let fg = foreign.pages().grefs().to_vec();
    c.report(
        "gntalloc",
        Ok(format!("4 pages granted to dom{dom}: grefs {fg:?}")),
    );

    // Grant map of our own grants.
    c.report(
        "grant-map",
        (|| {
            let m = LinuxGrantMap::open().map_err(|e| e.to_string())?;
            let mp = m
                .map(dom, &fg[..2], false)
                .map_err(|e| format!("Xen/gntdev refused mapping dom{dom}'s own grants: {e}"))?;
            // SAFETY: a live read-only mapping of 2 pages.
            let got = unsafe { std::slice::from_raw_parts(mp.as_ptr(), mp.len()) }.to_vec();
            if got != fpat[..2 * PAGE] {
                return Err("mapped bytes differ from the granted pages".into());
            }
            let mw = m.map(dom, &fg[3..4], true).map_err(|e| e.to_string())?;
            // SAFETY: a live writable mapping of 1 page.
            unsafe { mw.as_ptr().add(10).write(0x5a) };
            drop(mw);
            drop(mp);
            if region_bytes(&foreign, 3 * PAGE + 10, 1) != [0x5a] {
                return Err("write through a writable mapping not seen in the page".into());
            }
            fill_region(&foreign, 3 * PAGE, &fpat[3 * PAGE..]);
            Ok("2 pages read-only + 1 writable, bytes equal".into())
        })(),
    );

    // gntdev grant copy both ways, with a local buffer in ordinary heap memory.
    c.report(
        "gntdev-copy",
        (|| {
            let mut g = LinuxGrantCopy::open().map_err(|e| e.to_string())?;
            let mut local = vec![0u8; 3 * PAGE];
            // A local range crossing a page: gntdev splits it itself.
            let base = local.as_mut_ptr();
            let mut ops = [
                op(dom, fg[0], 0, base, 4096, CopyDir::FromForeign),
                op(
                    dom,
                    fg[1],
                    100,
                    base.wrapping_add(PAGE + 4000),
                    1500,
                    CopyDir::FromForeign,
                ),
            ];
            // SAFETY: every local range lies inside `local`, which outlives the call.
            unsafe { g.copy(&mut ops) }.map_err(|e| e.to_string())?;
            statuses(&ops)?;
            if local[..PAGE] != fpat[..PAGE]
                || local[PAGE + 4000..PAGE + 5500] != fpat[PAGE + 100..PAGE + 1600]
            {
                return Err("FromForeign bytes differ".into());
            }
            let out = pattern(99, 2000);
            local[..2000].copy_from_slice(&out);
            let mut ops = [op(
                dom,
                fg[2],
                1000,
                local.as_mut_ptr(),
                2000,
                CopyDir::ToForeign,
            )];
            // SAFETY: as above.
            unsafe { g.copy(&mut ops) }.map_err(|e| e.to_string())?;
            statuses(&ops)?;
            if region_bytes(&foreign, 2 * PAGE + 1000, 2000) != out {
                return Err("ToForeign bytes differ".into());
            }
            fill_region(&foreign, 2 * PAGE, &fpat[2 * PAGE..3 * PAGE]);
            let (ioctls, segs) = g.counts();
            Ok(format!(
                "FromForeign + ToForeign equal; {ioctls} ioctls, {segs} segments"
            ))
        })(),
    );

    c.report(
        "gntdev-bad-gref",
        (|| {
            let mut g = LinuxGrantCopy::open().map_err(|e| e.to_string())?;
            let mut b = vec![0u8; 64];
            let mut ops = [
                op(
                    dom,
                    0x00ff_fff0,
                    0,
                    b.as_mut_ptr(),
                    64,
                    CopyDir::FromForeign,
                ),
                op(dom, fg[0], 0, b.as_mut_ptr(), 64, CopyDir::FromForeign),
                op(dom, fg[0], 4090, b.as_mut_ptr(), 64, CopyDir::FromForeign),
            ];
            // SAFETY: local ranges inside `b`.
            unsafe { g.copy(&mut ops) }.map_err(|e| format!("batch failed: {e}"))?;
            let st: Vec<i16> = ops.iter().map(|o| o.status).collect();
            if st != [gntst::BAD_GNTREF, gntst::OKAY, gntst::BAD_COPY_ARG] {
                return Err(format!("statuses {st:?}, want [-3, 0, -10]"));
            }
            Ok(format!("statuses {st:?}"))
        })(),
    );

    // The privcmd fast path: local side in another self-granted region.
    let local = match GntallocRegion::alloc(dom, 4) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            c.report("privcmd-copy", Err(format!("gntalloc local region: {e}")));
            return finish(c);
        }
    };
    c.report(
        "privcmd-copy",
        (|| {
            let mut p = PrivcmdGrantCopy::new(vec![local.clone()]).map_err(|e| e.to_string())?;
            let lb = local.as_ptr();
            let mut ops = [
                op(dom, fg[0], 0, lb, 4096, CopyDir::FromForeign),
                // Crosses local page 1 -> 2: two hypercall ops.
                op(
                    dom,
                    fg[1],
                    200,
                    lb.wrapping_add(2 * PAGE - 700),
                    1500,
                    CopyDir::FromForeign,
                ),
            ];
            // SAFETY: local ranges inside the region, which outlives the call.
            unsafe { p.copy(&mut ops) }.map_err(|e| e.to_string())?;
            statuses(&ops)?;
            if region_bytes(&local, 0, PAGE) != fpat[..PAGE]
                || region_bytes(&local, 2 * PAGE - 700, 1500) != fpat[PAGE + 200..PAGE + 1700]
            {
                return Err("FromForeign bytes differ".into());
            }
            let out = pattern(55, 3000);
            fill_region(&local, 3 * PAGE - 1000, &out);
            let mut ops = [op(
                dom,
                fg[2],
                500,
                lb.wrapping_add(3 * PAGE - 1000),
                3000,
                CopyDir::ToForeign,
            )];
            // SAFETY: as above.
            unsafe { p.copy(&mut ops) }.map_err(|e| e.to_string())?;
            statuses(&ops)?;
            if region_bytes(&foreign, 2 * PAGE + 500, 3000) != out {
                return Err("ToForeign (split) bytes differ".into());
            }
            fill_region(&foreign, 2 * PAGE, &fpat[2 * PAGE..3 * PAGE]);
            let s = p.stats();
            if s.split_ops != 2 || s.fallback_ops != 0 || s.hypercalls != 2 || s.hypercall_ops != 5
            {
                return Err(format!("unexpected path counters {s:?}"));
            }
            Ok(format!(
                "FromForeign + ToForeign equal incl. 2 page-crossing ops; {s:?}"
            ))
        })(),
    );

    c.report(
        "privcmd-batch",
        (|| {
            let mut p = PrivcmdGrantCopy::new(vec![local.clone()]).map_err(|e| e.to_string())?;
            let lb = local.as_ptr();
            // 64 small copies (netback's guest-RX batch size) in one call.
            let mut ops: Vec<CopyOp> = (0..64)
                .map(|i| {
                    op(dom, fg[i % 4], (i * 60) as u16, lb.wrapping_add(i * 60), 60, CopyDir::FromForeign)
                })
                .collect();
            let t = std::time::Instant::now();
            // SAFETY: local ranges inside the region.
            unsafe { p.copy(&mut ops) }.map_err(|e| e.to_string())?;
            let dt = t.elapsed();
            statuses(&ops)?;
            for i in 0..64 {
                let want = &fpat[(i % 4) * PAGE + i * 60..(i % 4) * PAGE + i * 60 + 60];
                if region_bytes(&local, i * 60, 60) != want {
                    return Err(format!("op {i} bytes differ"));
                }
            }
            let s = p.stats();
            Ok(format!(
                "{} ops in {} hypercall(s): {:.1} ops per hypercall, {:?} (TCG: timing not meaningful)",
                s.hypercall_ops,
                s.hypercalls,
                s.ops_per_hypercall(),
                dt
            ))
        })(),
    );

    c.report(
        "copy-timing",
        (|| {
            // 64 x 1400-byte copies into the local region, 200 rounds, by each path. Under
            // QEMU TCG only the ratio says anything, and even that loosely.
            let mut p = PrivcmdGrantCopy::new(vec![local.clone()]).map_err(|e| e.to_string())?;
            let mut g = LinuxGrantCopy::open().map_err(|e| e.to_string())?;
            let lb = local.as_ptr();
            let mk = || -> Vec<CopyOp> {
                (0..64)
                    .map(|i| {
                        let at = (i % 2) * 2048 + (i / 2 % 4) * PAGE;
                        op(
                            dom,
                            fg[i % 4],
                            0,
                            lb.wrapping_add(at),
                            1400,
                            CopyDir::FromForeign,
                        )
                    })
                    .collect()
            };
            let mut ops = mk();
            let mut time = |gc: &mut dyn GrantCopy| -> Result<Duration, String> {
                let t = std::time::Instant::now();
                for _ in 0..200 {
                    // SAFETY: local ranges inside the region.
                    unsafe { gc.copy(&mut ops) }.map_err(|e| e.to_string())?;
                    statuses(&ops)?;
                }
                Ok(t.elapsed() / (200 * 64))
            };
            let tp = time(&mut p)?;
            let tg = time(&mut g)?;
            let s = p.stats();
            Ok(format!(
                "per 1400-byte op: privcmd {tp:?}, gntdev {tg:?}; privcmd {:.1} ops per hypercall",
                s.ops_per_hypercall()
            ))
        })(),
    );

    c.report(
        "privcmd-fallback",
        (|| {
            let mut p = PrivcmdGrantCopy::new(vec![local.clone()]).map_err(|e| e.to_string())?;
            let mut heap = vec![0u8; 256];
            let mut ops = [
                op(dom, fg[3], 16, heap.as_mut_ptr(), 256, CopyDir::FromForeign),
                op(dom, fg[3], 16, local.as_ptr(), 256, CopyDir::FromForeign),
            ];
            // SAFETY: local ranges inside `heap` and the region.
            unsafe { p.copy(&mut ops) }.map_err(|e| e.to_string())?;
            statuses(&ops)?;
            if heap[..] != fpat[3 * PAGE + 16..3 * PAGE + 272]
                || region_bytes(&local, 0, 256) != heap
            {
                return Err("bytes differ".into());
            }
            let s = p.stats();
            if s.fallback_ops != 1 || s.hypercall_ops != 1 {
                return Err(format!("unexpected path counters {s:?}"));
            }
            Ok(format!(
                "heap op via gntdev, region op via hypercall: {s:?}"
            ))
        })(),
    );

    c.report(
        "privcmd-bad-gref",
        (|| {
            let mut p = PrivcmdGrantCopy::new(vec![local.clone()]).map_err(|e| e.to_string())?;
            let lb = local.as_ptr();
            let mut ops = [
                op(dom, 0x00ff_fff0, 0, lb, 64, CopyDir::FromForeign),
                // Split op whose second half is fine but first half names a bad gref.
                op(
                    dom,
                    0x00ff_fff1,
                    0,
                    lb.wrapping_add(PAGE - 32),
                    64,
                    CopyDir::FromForeign,
                ),
                op(dom, fg[0], 0, lb, 64, CopyDir::FromForeign),
            ];
            // SAFETY: local ranges inside the region.
            unsafe { p.copy(&mut ops) }.map_err(|e| format!("batch failed: {e}"))?;
            let st: Vec<i16> = ops.iter().map(|o| o.status).collect();
            if st != [gntst::BAD_GNTREF, gntst::BAD_GNTREF, gntst::OKAY] {
                return Err(format!("statuses {st:?}, want [-3, -3, 0]"));
            }
            Ok(format!("statuses {st:?}"))
        })(),
    );

    c.report("evtchn-loopback", evtchn_check(dom));
    c.report("evtchn-shared-drain", evtchn_drain_check(dom));

    c.report("mempool-gntalloc", mempool_check(dom, &foreign, &fpat));

    finish(c)
}

fn finish(c: Checks) -> ExitCode {
    if c.failed == 0 {
        println!("LINUX-CHECK: all ok");
        ExitCode::SUCCESS
    } else {
        println!("LINUX-CHECK: {} failed", c.failed);
        ExitCode::FAILURE
    }
}

fn evtchn_check(dom: u16) -> Result<String, String> {
    let e = |x: xen::XenError| x.to_string();
    let a = LinuxEvtchn::open().map_err(e)?;
    let mut b = LinuxEvtchn::open().map_err(e)?;
    let pa = a.bind_unbound_port(dom).map_err(e)?;
    let pb = b.bind_interdomain(dom, pa).map_err(e)?;
    if a.take_pending(pa) {
        return Err("pending before any notify".into());
    }
    b.notify(pb).map_err(e)?;
    a.wait(Duration::from_secs(5));
    if !a.take_pending(pa) {
        return Err(format!("port {pa} not pending after notify from {pb}"));
    }
    if a.take_pending(pa) {
        return Err("pending twice for one notify".into());
    }
    a.unmask(pa).map_err(e)?;
    // From another thread, through a clone of the same handle (how the engine's lcores
    // use it), while this thread waits.
    let a2 = a.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        a2.notify(pa)
    });
    b.wait(Duration::from_secs(5));
    t.join()
        .map_err(|_| "notify thread panicked".to_string())?
        .map_err(e)?;
    if !b.take_pending(pb) {
        return Err(format!(
            "port {pb} not pending after notify from another thread"
        ));
    }
    b.unmask(pb).map_err(e)?;
    // A second event after unmask is delivered again.
    b.notify(pb).map_err(e)?;
    a.wait(Duration::from_secs(5));
    if !a.take_pending(pa) {
        return Err("no event after unmask".into());
    }
    a.unmask(pa).map_err(e)?;
    b.unbind(pb).map_err(e)?;
    let mut a = a;
    a.unbind(pa).map_err(e)?;
    Ok(format!("dom{dom} port {pa} <-> port {pb} on two handles: notify both ways, once each, unmask, unbind"))
}

/// Two ports on one shared handle, owned by two threads: whichever thread drains the fd,
/// the other's event is kept for it (the engine's lcores share the handle this way).
fn evtchn_drain_check(dom: u16) -> Result<String, String> {
    let e = |x: xen::XenError| x.to_string();
    let a = LinuxEvtchn::open().map_err(e)?;
    let mut b = LinuxEvtchn::open().map_err(e)?;
    let p1 = a.bind_unbound_port(dom).map_err(e)?;
    let p2 = a.bind_unbound_port(dom).map_err(e)?;
    let q1 = b.bind_interdomain(dom, p1).map_err(e)?;
    let q2 = b.bind_interdomain(dom, p2).map_err(e)?;
    b.notify(q1).map_err(e)?;
    b.notify(q2).map_err(e)?;
    // Let both events reach the fd before anyone drains.
    std::thread::sleep(Duration::from_millis(200));
    let a1 = a.clone();
    let first = std::thread::spawn(move || a1.take_pending(p1))
        .join()
        .map_err(|_| "thread panicked".to_string())?;
    let a2 = a.clone();
    let second = std::thread::spawn(move || (a2.take_pending(p2), a2.take_pending(p2)))
        .join()
        .map_err(|_| "thread panicked".to_string())?;
    if !first || second != (true, false) {
        return Err(format!(
            "port {p1} taken {first}, port {p2} taken {second:?}; want true, (true, false)"
        ));
    }
    for p in [p1, p2] {
        a.unmask(p).map_err(e)?;
    }
    b.unbind(q1).map_err(e)?;
    b.unbind(q2).map_err(e)?;
    let mut a = a;
    a.unbind(p1).map_err(e)?;
    a.unbind(p2).map_err(e)?;
    Ok(format!(
        "ports {p1},{p2} on one handle, taken by two threads, each once"
    ))
}

fn mempool_check(dom: u16, foreign: &GntallocRegion, fpat: &[u8]) -> Result<String, String> {
    let eal = pmd::Eal::init(&[
        "linux-check",
        "--no-huge",
        "-m",
        "64",
        "--no-pci",
        "--file-prefix",
        "lc",
    ])
    .map_err(|e| format!("EAL: {e}"))?;
    let pages = 256;
    let mem = Arc::new(GntallocRegion::alloc(dom, pages).map_err(|e| e.to_string())?);
    // SAFETY: the region stays mapped until after the pool is dropped (below), and only
    // the pool uses it.
    let pool = unsafe {
        pmd::Mempool::from_memory("lc_pool", 200, 0, 2176, mem.as_ptr(), mem.len(), PAGE)
    }
    .map_err(|e| e.to_string())?;
    let r = (|| {
        let mut m = pmd::Mbuf::alloc(&pool).map_err(|e| e.to_string())?;
        let data = m.append(1400).ok_or("append")?.as_mut_ptr();
        let (lo, hi) = (mem.as_ptr() as usize, mem.as_ptr() as usize + mem.len());
        if (data as usize) < lo || data as usize + 1400 > hi {
            return Err(format!("mbuf data {data:p} outside the gntalloc region"));
        }
        let mut p = PrivcmdGrantCopy::new(vec![mem.clone()]).map_err(|e| e.to_string())?;
        let mut ops = [op(
            dom,
            foreign.pages().grefs()[1],
            300,
            data,
            1400,
            CopyDir::FromForeign,
        )];
        // SAFETY: the mbuf's data area, 1400 bytes, owned by `m` for the call.
        unsafe { p.copy(&mut ops) }.map_err(|e| e.to_string())?;
        statuses(&ops)?;
        if m.data() != &fpat[PAGE + 300..PAGE + 1700] {
            return Err("mbuf bytes differ".into());
        }
        let s = p.stats();
        if s.hypercall_ops == 0 || s.fallback_ops != 0 {
            return Err(format!("copy did not take the hypercall path: {s:?}"));
        }
        Ok(format!(
            "200 mbufs over {pages} gntalloc pages; 1400 B copied into an mbuf by hypercall: {s:?}"
        ))
    })();
    drop(pool);
    drop(mem);
    drop(eal);
    r
}
