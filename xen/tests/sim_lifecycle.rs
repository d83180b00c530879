//! The simulated host beyond the basics, with tests running in parallel threads (each
//! with its own sim root): Xen's order of grant checks, domain creation as libxl does it
//! (permissions, store channel, XS_INTRODUCE) and destruction (bad_domain, peer channels
//! unbound, @releaseDomain, id reuse), RAII unbinding, blocking watches, concurrent hosts,
//! start-up time and stale-root rules.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use xen::iface::gntst;
use xen::sim::grant::{GTF_PERMIT_ACCESS, GTF_READONLY};
use xen::sim::toolstack::{self, VifOptions};
use xen::sim::{DomainMem, SimHost, SimOptions};
use xen::{
    Access, BoundPort, CopyDir, CopyOp, EventChannel, GnttabStatus, GrantCopy, GrantMap, Mapping,
    Perm, Tx,
};

fn op(domid: u16, gref: u32, offset: u16, len: u16, dir: CopyDir, local: *mut u8) -> CopyOp {
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

fn copy_status(h: &SimHost, mut o: CopyOp) -> i16 {
    let mut ops = [o];
    // SAFETY: callers pass a local buffer of at least `len` bytes that outlives the call.
    unsafe { h.grants(0).copy(&mut ops).unwrap() };
    o.status = ops[0].status;
    o.status
}

#[test]
fn status_names_round_trip() {
    for v in 0..=13i16 {
        let s = GnttabStatus::from_raw(-v).unwrap();
        assert_eq!(s.raw(), -v);
    }
    assert_eq!(GnttabStatus::from_raw(-14), None);
    assert_eq!(GnttabStatus::from_raw(1), None);
    assert_eq!(GnttabStatus::BadGntref.name(), "GNTST_bad_gntref");
    assert_eq!(
        GnttabStatus::from_raw(gntst::BAD_COPY_ARG),
        Some(GnttabStatus::BadCopyArg)
    );
    assert_eq!(
        GnttabStatus::PermissionDenied.to_string(),
        "GNTST_permission_denied (-8)"
    );
}

/// Several faults in one op: Xen 4.17 finds the domain, then acquires the grant, and only
/// then checks offset + len (gnttab_copy_buf), so the grant's fault is reported.
#[test]
fn grant_checks_in_xen_order() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(3, "g", 8, 16).unwrap();
    let g = DomainMem::open(h.layout(), 3).unwrap();
    g.set_entry(1, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 2)
        .unwrap();
    g.set_entry(2, GTF_PERMIT_ACCESS, 0, 2).unwrap();
    let mut buf = vec![0u8; 8192];
    let p = buf.as_mut_ptr();
    let fd = CopyDir::FromForeign;
    assert_eq!(
        copy_status(&h, op(3, 16, 4000, 200, fd, p)),
        gntst::BAD_GNTREF
    );
    assert_eq!(
        copy_status(&h, op(3, 1, 4000, 200, CopyDir::ToForeign, p)),
        gntst::GENERAL_ERROR
    );
    assert_eq!(
        copy_status(&h, op(9, 16, 4000, 200, fd, p)),
        gntst::BAD_DOMAIN
    );
    assert_eq!(
        copy_status(&h, op(3, 2, 4000, 200, fd, p)),
        gntst::BAD_COPY_ARG
    );
    assert_eq!(copy_status(&h, op(3, 2, 0, 4096, fd, p)), gntst::OKAY);
    // Zero-length copies at the page end are fine, as in Xen.
    assert_eq!(copy_status(&h, op(3, 2, 4096, 0, fd, p)), gntst::OKAY);
    assert_eq!(
        copy_status(&h, op(3, 2, 4095, 2, fd, p)),
        gntst::BAD_COPY_ARG
    );
    // u16 offsets and lengths can't overflow the check (65535 + 65535).
    assert_eq!(
        copy_status(&h, op(3, 2, u16::MAX, u16::MAX, fd, p)),
        gntst::BAD_COPY_ARG
    );
    // Type bits other than permit_access (e.g. accept_transfer = 2) are refused.
    g.set_entry(2, 2, 0, 2).unwrap();
    assert_eq!(
        copy_status(&h, op(3, 2, 0, 16, fd, p)),
        gntst::GENERAL_ERROR
    );
}

fn maps_of(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(&needle))
        .map(String::from)
        .collect()
}

/// A mapping exists in the address space while held, with the right protection, and is
/// gone after drop.
#[test]
fn grant_map_unmaps_on_drop() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(4, "g", 8, 16).unwrap();
    let g = DomainMem::open(h.layout(), 4).unwrap();
    g.set_entry(1, GTF_PERMIT_ACCESS, 0, 5).unwrap();
    g.set_entry(2, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 6)
        .unwrap();
    let mem = h.layout().dom_dir(4).join("memory");
    let be = h.grants(0);
    // The first use maps the domain's RAM whole into the backend's cache (kept for the
    // domain's life); count from there.
    drop(be.map(4, &[1], false).unwrap());
    let before = maps_of(&mem);
    let rw = be.map(4, &[1], true).unwrap();
    let ro = be.map(4, &[2], false).unwrap();
    let during = maps_of(&mem);
    let find = |m: &dyn Mapping| {
        let start = format!("{:x}-", m.as_ptr() as usize);
        during
            .iter()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("{start} not in {during:?}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(find(&rw), "rw-s");
    assert_eq!(find(&ro), "r--s");
    drop(rw);
    drop(ro);
    assert_eq!(maps_of(&mem), before, "mappings left after drop");
    // A read-only grant can't be mapped writable; nothing is left mapped by the failure.
    assert!(be.map(4, &[2], true).is_err());
    assert!(be.map(4, &[1, 2], true).is_err());
    assert_eq!(maps_of(&mem), before);
}

fn wait_watch(w: &xen::XenStore, path: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(e) = w.read_watch_timeout(Duration::from_millis(100)) {
            if e.path == path {
                return true;
            }
        }
    }
    false
}

/// add_domain writes libxl's layout and introduces the domain; remove_domain destroys it
/// as `xl destroy` does.
#[test]
fn domain_create_and_destroy_like_xl() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    let s = h.store();
    let w = h.connect().unwrap();
    w.watch("@introduceDomain", "in").unwrap();
    w.watch("@releaseDomain", "out").unwrap();
    // The initial events of both watches.
    assert!(wait_watch(&w, "@introduceDomain"));
    assert!(wait_watch(&w, "@releaseDomain"));

    h.add_domain(5, "five", 32, 64).unwrap();
    assert!(wait_watch(&w, "@introduceDomain"), "@introduceDomain fired");
    assert!(s.is_domain_introduced(5));
    assert!(!s.is_domain_introduced(6));
    let ro = vec![Perm::new(0, Access::None), Perm::new(5, Access::Read)];
    let rw = vec![Perm::new(5, Access::None)];
    for p in [
        "", "/device", "/control", "/memory", "/cpu", "/name", "/domid",
    ] {
        assert_eq!(
            s.get_perms(Tx::NONE, &format!("/local/domain/5{p}"))
                .unwrap(),
            ro,
            "{p}"
        );
    }
    for p in [
        "/data",
        "/drivers",
        "/feature",
        "/attr",
        "/error",
        "/control/shutdown",
    ] {
        assert_eq!(
            s.get_perms(Tx::NONE, &format!("/local/domain/5{p}"))
                .unwrap(),
            rw,
            "{p}"
        );
    }
    let r = |p: &str| s.read(Tx::NONE, &format!("/local/domain/5/{p}")).unwrap();
    assert_eq!(r("name").as_deref(), Some("five"));
    assert_eq!(r("domid").as_deref(), Some("5"));
    assert_eq!(r("memory/static-max").as_deref(), Some("128"));
    // The store channel is a real unbound port of the guest offered to dom0.
    let store_port: u32 = r("store/port").unwrap().parse().unwrap();
    let mut dom0 = h.evtchn(0).unwrap();
    let sp = dom0.bind_interdomain(5, store_port).unwrap();
    dom0.unbind(sp).unwrap();

    // Live traffic state before the destruction: a bound channel, a grant, a vif.
    let guest = h.evtchn(5).unwrap();
    let gport = guest.alloc_unbound(0).unwrap();
    let bport = dom0.bind_interdomain(5, gport).unwrap();
    let g = DomainMem::open(h.layout(), 5).unwrap();
    g.write_frame(3, 0, b"old").unwrap();
    g.set_entry(7, GTF_PERMIT_ACCESS, 0, 3).unwrap();
    let mut buf = [0u8; 3];
    let p = buf.as_mut_ptr();
    let mut be = h.grants(0);
    let mut ops = [op(5, 7, 0, 3, CopyDir::FromForeign, p)];
    // SAFETY: buf covers 3 bytes.
    unsafe { be.copy(&mut ops).unwrap() };
    assert_eq!((ops[0].status, &buf), (gntst::OKAY, b"old"));
    toolstack::add_vif(s, 0, 5, 0, "00:16:3e:00:00:05", &VifOptions::default()).unwrap();
    drop(g);

    h.remove_domain(5).unwrap();
    assert!(wait_watch(&w, "@releaseDomain"), "@releaseDomain fired");
    assert!(!s.is_domain_introduced(5));
    assert_eq!(s.read(Tx::NONE, "/local/domain/5").unwrap(), None);
    assert_eq!(
        s.read(Tx::NONE, &toolstack::backend_path(0, 5, 0)).unwrap(),
        None
    );
    assert!(!h.layout().dom_dir(5).exists());
    // The backend's cached view fails from now on, as on Xen.
    let mut ops = [op(5, 7, 0, 3, CopyDir::FromForeign, p)];
    // SAFETY: as above.
    unsafe { be.copy(&mut ops).unwrap() };
    assert_eq!(ops[0].status, gntst::BAD_DOMAIN);
    assert!(be.map(5, &[7], false).is_err());
    // The backend's port went back to unbound: notifying it is dropped, not an error.
    assert!(!dom0.is_connected(bport));
    dom0.notify(bport).unwrap();
    dom0.unbind(bport).unwrap();
    assert!(h.remove_domain(5).is_err(), "already gone");
    assert!(h.remove_domain(0).is_err(), "dom0 stays");

    // The id can be reused; the backend's caches see the new domain, not the old memory.
    h.add_domain(5, "five-again", 8, 16).unwrap();
    let g = DomainMem::open(h.layout(), 5).unwrap();
    g.write_frame(3, 0, b"new").unwrap();
    g.set_entry(7, GTF_PERMIT_ACCESS, 0, 3).unwrap();
    let mut ops = [op(5, 7, 0, 3, CopyDir::FromForeign, p)];
    // SAFETY: as above.
    unsafe { be.copy(&mut ops).unwrap() };
    assert_eq!((ops[0].status, &buf), (gntst::OKAY, b"new"));
    let guest = h.evtchn(5).unwrap();
    let gport = guest.alloc_unbound(0).unwrap();
    let b2 = dom0.bind_interdomain(5, gport).unwrap();
    dom0.notify(b2).unwrap();
    assert!(guest.take_pending(gport));
    assert_eq!(h.domains(), vec![0, 5]);

    assert!(h.add_domain(5, "dup", 8, 16).is_err());
    assert!(h.add_domain(0, "zero", 8, 16).is_err());
    assert!(h.add_domain(6, "no-ram", 0, 16).is_err());
    assert!(h.add_domain(6, "no-grants", 8, 0).is_err());
    assert!(!h.layout().dom_dir(6).exists());
}

#[test]
fn bound_port_unbinds_on_drop() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(8, "g", 8, 16).unwrap();
    let guest = h.evtchn(8).unwrap();
    let dom0 = h.evtchn(0).unwrap();
    let gport = guest.alloc_unbound(0).unwrap();
    let b = BoundPort::bind(dom0.clone(), 8, gport).unwrap();
    assert!(guest.is_connected(gport) && dom0.is_connected(b.port()));
    b.notify().unwrap();
    assert!(guest.take_pending(gport));
    guest.notify(gport).unwrap();
    assert!(b.take_pending());
    let port = b.port();
    drop(b);
    assert!(!dom0.is_connected(port));
    assert!(!guest.is_connected(gport), "guest end back to unbound");
    // into_port keeps the binding.
    let b = BoundPort::bind(dom0.clone(), 8, gport).unwrap();
    let kept = b.into_port();
    assert!(dom0.is_connected(kept));
}

#[test]
fn blocking_read_watch() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    let w = h.connect().unwrap();
    w.watch("/blocking", "b").unwrap();
    let first = w.read_watch().unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        ("/blocking", "b")
    );
    let t = std::thread::spawn(move || w.read_watch().map(|e| e.path));
    std::thread::sleep(Duration::from_millis(50));
    h.store().write(Tx::NONE, "/blocking/k", "v").unwrap();
    assert_eq!(t.join().unwrap().unwrap(), "/blocking/k");
    assert_eq!(
        h.store().read(Tx::NONE, "/blocking/k").unwrap().as_deref(),
        Some("v")
    );
}

/// The frontend keys as the real CLI sees them, and the exact key sets.
#[test]
fn toolstack_exact_keys_and_cli() {
    let h = SimHost::start(SimOptions::default()).unwrap();
    h.add_domain(9, "g", 8, 16).unwrap();
    let s = h.store();
    let opts = VifOptions {
        bridge: Some("xenbr0".into()),
        script: Some("vif-nbd".into()),
        ..Default::default()
    };
    toolstack::add_vif(s, 0, 9, 2, "00:16:3e:00:00:09", &opts).unwrap();
    let fe = toolstack::frontend_path(9, 2);
    let be = toolstack::backend_path(0, 9, 2);
    let keys = |p: &str| {
        let mut v = s.directory(Tx::NONE, p).unwrap().unwrap();
        v.sort();
        v
    };
    assert_eq!(
        keys(&fe),
        ["backend", "backend-id", "handle", "mac", "state"]
    );
    assert_eq!(
        keys(&be),
        [
            "bridge",
            "frontend",
            "frontend-id",
            "handle",
            "mac",
            "online",
            "script",
            "state",
            "type"
        ]
    );
    for k in ["backend-id", "handle", "mac", "state"] {
        assert_eq!(
            s.get_perms(Tx::NONE, &format!("{fe}/{k}")).unwrap(),
            vec![Perm::new(9, Access::None), Perm::new(0, Access::Read)],
            "{k} inherits the frontend's permissions"
        );
    }
    let cli = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("XENSTORED_PATH", h.xenstore_path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        cli(&["xenstore-read", &format!("{fe}/mac")]).trim(),
        "00:16:3e:00:00:09"
    );
    assert_eq!(cli(&["xenstore-read", &format!("{fe}/backend")]).trim(), be);
    assert_eq!(
        cli(&["xenstore-read", &format!("{be}/script")]).trim(),
        "vif-nbd"
    );
    assert_eq!(
        cli(&["xenstore-read", &format!("{be}/bridge")]).trim(),
        "xenbr0"
    );
    // xenstore-ls -p prints the permissions as "(n9,r0)": owner 9 no access, dom0 read.
    let ls = cli(&["xenstore-ls", "-p", "/local/domain/9/device/vif"]);
    assert!(ls.contains("(n9,r0)"), "{ls}");
    toolstack::remove_vif(s, 0, 9, 2).unwrap();
    assert_eq!(s.read(Tx::NONE, &fe).unwrap(), None);
}

/// Hosts started from several threads at once each get their own root and daemon.
#[test]
fn concurrent_hosts() {
    let threads: Vec<_> = (0..4u16)
        .map(|i| {
            std::thread::spawn(move || {
                let h = SimHost::start(SimOptions::default()).unwrap();
                let d = 10 + i;
                h.add_domain(d, "c", 8, 16).unwrap();
                h.store()
                    .write(Tx::NONE, "/local/domain/0/data-test", &d.to_string())
                    .unwrap();
                let g = DomainMem::open(h.layout(), d).unwrap();
                g.write_frame(1, 0, &[d as u8; 8]).unwrap();
                g.set_entry(0, GTF_PERMIT_ACCESS, 0, 1).unwrap();
                let mut b = [0u8; 8];
                let o = op(d, 0, 0, 8, CopyDir::FromForeign, b.as_mut_ptr());
                assert_eq!(copy_status(&h, o), gntst::OKAY);
                assert_eq!(b, [d as u8; 8]);
                let v = h
                    .store()
                    .read(Tx::NONE, "/local/domain/0/data-test")
                    .unwrap();
                assert_eq!(v, Some(d.to_string()), "each host has its own store");
                let root = h.root().to_path_buf();
                h.stop().unwrap();
                root
            })
        })
        .collect();
    let roots: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &roots {
        assert!(!r.exists());
    }
    let mut uniq = roots.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), roots.len());
}

/// How long a test pays for a host: `SimHost::start` and `add_domain`.
#[test]
fn start_and_add_domain_time() {
    let n = 10u32;
    let (mut start, mut add) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        let h = SimHost::start(SimOptions::default()).unwrap();
        start += t.elapsed();
        let t = Instant::now();
        h.add_domain(1, "t", 4096, 8192).unwrap();
        add += t.elapsed();
    }
    eprintln!(
        "SimHost::start {:?}, add_domain (16 MiB RAM, 8192 grants) {:?} (mean of {n})",
        start / n,
        add / n
    );
    assert!(start / n < Duration::from_secs(2) && add / n < Duration::from_secs(1));
}

/// Stale-root rules: a root is reaped only when its owner is gone; a root being created
/// (no owner file yet) by a live process is left alone; a reused pid does not keep a dead
/// owner's root alive.
#[test]
fn stale_root_rules() {
    let parent = std::env::temp_dir().join(format!("nbd-stale-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let opts = SimOptions {
        parent: parent.clone(),
        root: None,
    };
    let me = std::process::id();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let being_created = parent.join(format!("netbackd-sim-{me}-999999"));
    let dead_by_name = parent.join(format!("netbackd-sim-{dead}-0"));
    let reused_pid = parent.join(format!("netbackd-sim-{me}-999998"));
    for d in [&being_created, &dead_by_name, &reused_pid] {
        std::fs::create_dir_all(d.join("dom1")).unwrap();
    }
    // Our pid, but a start time that isn't ours: the owner died and the pid was reused.
    std::fs::write(reused_pid.join("owner.pid"), format!("{me} 1\n")).unwrap();
    let h = SimHost::start(opts.clone()).unwrap();
    assert!(being_created.exists(), "a live creator's root is kept");
    assert!(!dead_by_name.exists(), "a dead creator's root is reaped");
    assert!(!reused_pid.exists(), "a reused pid doesn't keep a root");
    // The running host's own root survives another start.
    let h2 = SimHost::start(opts.clone()).unwrap();
    assert!(h.root().exists());
    drop(h2);
    drop(h);
    std::fs::remove_dir_all(&being_created).unwrap();
    // A root given explicitly that a live host uses is refused.
    let h = SimHost::start(opts.clone()).unwrap();
    let clash = SimOptions {
        root: Some(h.root().to_path_buf()),
        ..opts.clone()
    };
    assert!(SimHost::start(clash).is_err());
    drop(h);
    // A root whose socket path can't fit a unix socket is refused before anything starts.
    let long = SimOptions {
        root: Some(parent.join("x".repeat(100))),
        ..opts
    };
    assert!(matches!(
        SimHost::start(long),
        Err(xen::XenError::Invalid(_))
    ));
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
    std::fs::remove_dir(&parent).unwrap();
}
