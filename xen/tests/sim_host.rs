//! The simulated host against its contract: Xen's grant checks and status codes, grant
//! maps, event channels (also across processes), the real xenstored (reads, writes,
//! permissions, watches, transactions), the toolstack helper, and clean start/stop.
use std::process::Command;
use std::time::{Duration, Instant};
use xen::iface::gntst;
use xen::sim::grant::{GTF_PERMIT_ACCESS, GTF_READONLY};
use xen::sim::toolstack::{self, VifOptions};
use xen::sim::{SimHost, SimOptions};
use xen::{
    Access, CopyDir, CopyOp, EventChannel, GrantCopy, GrantMap, Mapping, Perm, Tx, XenStore,
};

const D: u16 = 7;

/// Tests of this file run one at a time so the fd-leak check sees only its own fds.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn host() -> SimHost {
    let h = SimHost::start(SimOptions::default()).expect("sim host");
    h.add_domain(D, "guest7", 64, 128).unwrap();
    h
}

/// The guest's own view of its memory and grant table.
fn guest_mem(h: &SimHost) -> xen::sim::DomainMem {
    xen::sim::DomainMem::open(h.layout(), D).unwrap()
}

fn op(gref: u32, offset: u16, len: u16, dir: CopyDir, local: *mut u8) -> CopyOp {
    CopyOp {
        domid: D,
        gref,
        offset,
        local,
        len,
        dir,
        status: 99,
    }
}

#[test]
fn grant_copy_status_cases() {
    let _serial = serial();
    let h = host();
    let g = guest_mem(&h);
    // Guest: frame 3 holds a pattern; gref 5 grants it to dom0, gref 6 read-only, gref 7
    // to another domain, gref 8 a frame beyond RAM.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    g.write_frame(3, 0, &pattern).unwrap();
    g.set_entry(5, GTF_PERMIT_ACCESS, 0, 3).unwrap();
    g.set_entry(6, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 3)
        .unwrap();
    g.set_entry(7, GTF_PERMIT_ACCESS, 9, 3).unwrap();
    g.set_entry(8, GTF_PERMIT_ACCESS, 0, 1000).unwrap();
    let mut be = h.grants(0);
    let mut buf = vec![0u8; 4096];
    let mut small = [0u8; 16];
    let p = buf.as_mut_ptr();
    let mut ops = vec![
        op(5, 0, 4096, CopyDir::FromForeign, p), // okay, whole page
        op(6, 100, 16, CopyDir::FromForeign, small.as_mut_ptr()), // read-only read: okay
        op(6, 0, 16, CopyDir::ToForeign, p),     // read-only write
        op(7, 0, 16, CopyDir::FromForeign, p),   // granted to dom9
        op(4, 0, 16, CopyDir::FromForeign, p),   // not granted at all
        op(128, 0, 16, CopyDir::FromForeign, p), // beyond the table
        op(u32::MAX, 0, 16, CopyDir::FromForeign, p),
        op(8, 0, 16, CopyDir::FromForeign, p), // frame beyond RAM
        op(5, 4000, 97, CopyDir::FromForeign, p), // offset+len > 4096
        CopyOp {
            domid: 42,
            ..op(5, 0, 16, CopyDir::FromForeign, p)
        }, // no such domain
    ];
    // SAFETY: every local pointer covers at least `len` bytes of a live buffer.
    unsafe { be.copy(&mut ops).unwrap() };
    let st: Vec<i16> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        vec![
            gntst::OKAY,
            gntst::OKAY,
            gntst::GENERAL_ERROR,
            gntst::GENERAL_ERROR,
            gntst::GENERAL_ERROR,
            gntst::BAD_GNTREF,
            gntst::BAD_GNTREF,
            gntst::BAD_PAGE,
            gntst::BAD_COPY_ARG,
            gntst::BAD_DOMAIN,
        ]
    );
    assert_eq!(buf, pattern, "bytes copied out of the guest");
    assert_eq!(&small[..], &pattern[100..116]);
    // Write into the guest, then revoke: the next copy fails from that moment.
    let msg = b"hello guest";
    let mut w = [op(
        5,
        10,
        msg.len() as u16,
        CopyDir::ToForeign,
        msg.as_ptr() as *mut u8,
    )];
    // SAFETY: msg outlives the call and is only read (ToForeign).
    unsafe { be.copy(&mut w).unwrap() };
    assert_eq!(w[0].status, gntst::OKAY);
    assert_eq!(&g.read_frame(3, 10, msg.len()).unwrap()[..], msg);
    g.set_entry(5, 0, 0, 3).unwrap();
    let mut again = [op(5, 0, 16, CopyDir::FromForeign, p)];
    // SAFETY: as above.
    unsafe { be.copy(&mut again).unwrap() };
    assert_eq!(again[0].status, gntst::GENERAL_ERROR, "revoked grant");
}

#[test]
fn grant_map() {
    let _serial = serial();
    let h = host();
    let g = guest_mem(&h);
    g.write_frame(10, 0, b"ring page A").unwrap();
    g.write_frame(11, 0, b"ring page B").unwrap();
    g.set_entry(20, GTF_PERMIT_ACCESS, 0, 10).unwrap();
    g.set_entry(21, GTF_PERMIT_ACCESS, 0, 11).unwrap();
    g.set_entry(22, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 11)
        .unwrap();
    let be = h.grants(0);
    let m = be.map(D, &[20, 21], true).unwrap();
    assert_eq!(m.len(), 8192);
    // SAFETY: the mapping covers 8192 bytes and lives until the end of this block.
    unsafe {
        assert_eq!(std::slice::from_raw_parts(m.as_ptr(), 11), b"ring page A");
        assert_eq!(
            std::slice::from_raw_parts(m.as_ptr().add(4096), 11),
            b"ring page B"
        );
        // The backend writes through the mapping; the guest sees it.
        m.as_ptr().add(100).write_volatile(0x5a);
    }
    assert_eq!(g.read_frame(10, 100, 1).unwrap(), vec![0x5a]);
    drop(m);
    assert!(
        be.map(D, &[22], true).is_err(),
        "read-only grant mapped writable"
    );
    let ro = be.map(D, &[22], false).unwrap();
    assert_eq!(
        // SAFETY: one mapped page, alive for this statement.
        unsafe { std::slice::from_raw_parts(ro.as_ptr(), 11) },
        b"ring page B"
    );
    assert!(be.map(D, &[99], false).is_err(), "ungranted");
    assert!(be.map(42, &[20], false).is_err(), "no such domain");
    assert!(be.map(D, &[], false).is_err());
}

#[test]
fn event_channels_in_process() {
    let _serial = serial();
    let h = host();
    let guest = h.evtchn(D).unwrap();
    let mut dom0 = h.evtchn(0).unwrap();
    let gport = guest.alloc_unbound(0).unwrap();
    assert!(dom0.bind_interdomain(D, 999).is_err());
    assert!(dom0.bind_interdomain(D, 0).is_err());
    let bport = dom0.bind_interdomain(D, gport).unwrap();
    assert!(dom0.bind_interdomain(D, gport).is_err(), "already bound");
    assert!(guest.is_connected(gport));
    dom0.notify(bport).unwrap();
    assert!(guest.take_pending(gport));
    assert!(!guest.take_pending(gport));
    // Wait returns at once when something is pending, else after the timeout.
    let g2 = guest.clone();
    g2.notify(gport).unwrap();
    let t = Instant::now();
    dom0.wait(Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(dom0.take_pending(bport));
    let t = Instant::now();
    dom0.wait(Duration::from_millis(50));
    assert!(t.elapsed() >= Duration::from_millis(40));
    dom0.unbind(bport).unwrap();
    assert!(!guest.is_connected(gport));
    assert!(dom0.notify(bport).is_err());
}

/// A second process (this test binary re-run) is the guest: it offers a port, waits for
/// dom0's event and answers; the parent sleeps on its futex until then.
#[test]
fn event_channels_across_processes() {
    let _serial = serial();
    if let Ok(root) = std::env::var("NBD_EVTCHN_CHILD") {
        let layout = xen::sim::SimLayout::new(&root);
        let mut g = xen::sim::SimEvtchn::new(layout, D).unwrap();
        let port = g.alloc_unbound(0).unwrap();
        // Publish the port the way a guest would in xenstore; a file is enough here.
        let tmp = std::path::Path::new(&root).join("child.port.tmp");
        std::fs::write(&tmp, port.to_string()).unwrap();
        std::fs::rename(&tmp, std::path::Path::new(&root).join("child.port")).unwrap();
        let t = Instant::now();
        while !g.take_pending(port) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "child: no event from dom0"
            );
            g.wait(Duration::from_millis(100));
        }
        g.notify(port).unwrap();
        let _ = g.unbind(port);
        return;
    }
    let h = host();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "event_channels_across_processes",
            "--test-threads=1",
        ])
        .env("NBD_EVTCHN_CHILD", h.root())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pf = h.root().join("child.port");
    let t = Instant::now();
    let port: u32 = loop {
        if let Ok(s) = std::fs::read_to_string(&pf) {
            break s.trim().parse().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "child published no port"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut dom0 = h.evtchn(0).unwrap();
    let b = dom0.bind_interdomain(D, port).unwrap();
    dom0.notify(b).unwrap();
    let t = Instant::now();
    while !dom0.take_pending(b) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "parent: no answer from the child"
        );
        dom0.wait(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn xenstore_real_daemon() {
    let _serial = serial();
    let h = host();
    let s = h.store();
    s.write(Tx::NONE, "/test/a", "1").unwrap();
    assert_eq!(s.read(Tx::NONE, "/test/a").unwrap().as_deref(), Some("1"));
    assert_eq!(s.read(Tx::NONE, "/test/missing").unwrap(), None);
    s.mkdir(Tx::NONE, "/test/dir").unwrap();
    let mut d = s.directory(Tx::NONE, "/test").unwrap().unwrap();
    d.sort();
    assert_eq!(d, vec!["a".to_string(), "dir".to_string()]);
    s.set_perms(
        Tx::NONE,
        "/test/a",
        &[Perm::new(D, Access::None), Perm::new(0, Access::Read)],
    )
    .unwrap();
    assert_eq!(
        s.get_perms(Tx::NONE, "/test/a").unwrap(),
        vec![Perm::new(D, Access::None), Perm::new(0, Access::Read)]
    );
    // Watches: the initial event, then one per change (order vs the write's reply is not
    // relied upon).
    let w = h.connect().unwrap();
    w.watch("/test/dir", "tok").unwrap();
    let first = w.read_watch_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(
        (first.path.as_str(), first.token.as_str()),
        ("/test/dir", "tok")
    );
    s.write(Tx::NONE, "/test/dir/x", "y").unwrap();
    let ev = w.read_watch_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(ev.path, "/test/dir/x");
    w.unwatch("/test/dir", "tok").unwrap();
    // Transactions: a conflicting commit from another connection forces a retry.
    let other = h.connect().unwrap();
    let mut tries = 0;
    let v = s
        .transaction(5, |t| {
            tries += 1;
            let cur: u32 = s.read(t, "/test/a")?.unwrap().parse().unwrap();
            if tries == 1 {
                other.write(Tx::NONE, "/test/a", "10").unwrap();
            }
            s.write(t, "/test/a", &(cur + 1).to_string())?;
            Ok(cur + 1)
        })
        .unwrap();
    assert_eq!(
        (tries, v),
        (2, 11),
        "EAGAIN retried once, second try saw the other write"
    );
    assert_eq!(s.read(Tx::NONE, "/test/a").unwrap().as_deref(), Some("11"));
    s.rm(Tx::NONE, "/test").unwrap();
    s.rm(Tx::NONE, "/test").unwrap(); // missing is fine
    assert!(XenStore::open_at("/nonexistent/socket").is_err());
}

#[test]
fn toolstack_creates_libxl_layout() {
    let _serial = serial();
    let h = host();
    let s = h.store();
    let opts = VifOptions {
        rate: Some("1000000,20000".into()),
        ..Default::default()
    };
    toolstack::add_vif(s, 0, D, 0, "00:16:3e:00:00:07", &opts).unwrap();
    let fe = toolstack::frontend_path(D, 0);
    let be = toolstack::backend_path(0, D, 0);
    let r = |p: &str| {
        s.read(Tx::NONE, p)
            .unwrap()
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(r(&format!("{fe}/backend")), be);
    assert_eq!(r(&format!("{fe}/backend-id")), "0");
    assert_eq!(r(&format!("{fe}/state")), "1");
    assert_eq!(r(&format!("{fe}/mac")), "00:16:3e:00:00:07");
    assert_eq!(r(&format!("{fe}/handle")), "0");
    assert_eq!(r(&format!("{be}/frontend")), fe);
    assert_eq!(r(&format!("{be}/frontend-id")), D.to_string());
    assert_eq!(r(&format!("{be}/online")), "1");
    assert_eq!(r(&format!("{be}/state")), "1");
    assert_eq!(r(&format!("{be}/script")), "vif-bridge");
    assert_eq!(r(&format!("{be}/type")), "vif");
    assert_eq!(r(&format!("{be}/rate")), "1000000,20000");
    assert_eq!(
        s.get_perms(Tx::NONE, &fe).unwrap(),
        vec![Perm::new(D, Access::None), Perm::new(0, Access::Read)]
    );
    assert_eq!(
        s.get_perms(Tx::NONE, &be).unwrap(),
        vec![Perm::new(0, Access::None), Perm::new(D, Access::Read)]
    );
    // The real CLI tools see the same store.
    let out = Command::new("xenstore-ls")
        .args(["-p", &be])
        .env("XENSTORED_PATH", h.xenstore_path())
        .output()
        .unwrap();
    let txt = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && txt.contains("frontend-id = \"7\"")
            && txt.contains("rate = \"1000000,20000\""),
        "{txt}"
    );
    toolstack::request_detach(s, 0, D, 0).unwrap();
    assert_eq!(r(&format!("{be}/online")), "0");
    assert_eq!(r(&format!("{be}/state")), "5");
    toolstack::remove_vif(s, 0, D, 0).unwrap();
    assert_eq!(s.read(Tx::NONE, &fe).unwrap(), None);
    assert_eq!(s.read(Tx::NONE, &be).unwrap(), None);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn xenstoreds_for(root: &std::path::Path) -> usize {
    let needle = format!("XENSTORED_RUNDIR={}/xenstored", root.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

/// 50 start/stop cycles: no xenstored, file or fd left; and a root left by a dead process
/// is reaped by the next start.
#[test]
fn start_stop_50_times_no_leftovers() {
    let _serial = serial();
    let parent = std::env::temp_dir().join(format!("nbd-simcycles-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let opts = SimOptions {
        parent: parent.clone(),
        root: None,
    };
    // Warm-up (libraries loaded, lazily opened fds settled).
    SimHost::start(opts.clone()).unwrap().stop().unwrap();
    let fds = open_fds();
    let t = Instant::now();
    for i in 0..50 {
        let h = SimHost::start(opts.clone()).unwrap();
        h.add_domain(1, "g", 16, 32).unwrap();
        let root = h.root().to_path_buf();
        assert_eq!(xenstoreds_for(&root), 1, "cycle {i}");
        h.stop().unwrap();
        assert!(!root.exists(), "cycle {i}: root left");
        assert_eq!(xenstoreds_for(&root), 0, "cycle {i}: xenstored left");
    }
    eprintln!("50 sim host start/stop cycles in {:?}", t.elapsed());
    assert_eq!(open_fds(), fds, "fds leaked");
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);

    // A crashed owner: a root whose owner pid is dead and whose xenstored still runs.
    let h = SimHost::start(opts.clone()).unwrap();
    let root = h.root().to_path_buf();
    std::fs::write(root.join("owner.pid"), "999999999").unwrap();
    std::mem::forget(h); // simulate the crash: nothing cleaned up
    assert_eq!(xenstoreds_for(&root), 1);
    let h2 = SimHost::start(opts).unwrap();
    let t = Instant::now();
    while xenstoreds_for(&root) > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!root.exists(), "stale root reaped");
    assert_eq!(xenstoreds_for(&root), 0, "stale xenstored killed");
    h2.stop().unwrap();
    std::fs::remove_dir(&parent).unwrap();
}

/// The sim ABI from another language: a Python frontend (standard library only, following
/// docs/sim-abi.md) grants a page and publishes the gref; Rust copies it out through the
/// sim's checked grant copy.
#[test]
fn python_frontend_attaches_by_the_documented_abi() {
    let _serial = serial();
    let h = host();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sim_abi.py");
    let out = Command::new("python3")
        .args([script, "17", "42"])
        .env("SIM_ROOT", h.root())
        .env("DOMID", D.to_string())
        .env("XENSTORED_PATH", h.xenstore_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gref: u32 = h
        .store()
        .read(Tx::NONE, &format!("/local/domain/{D}/data/gref"))
        .unwrap()
        .expect("gref published")
        .parse()
        .unwrap();
    assert_eq!(gref, 42);
    let mut page = vec![0u8; 4096];
    let mut ops = [op(gref, 0, 4096, CopyDir::FromForeign, page.as_mut_ptr())];
    // SAFETY: `page` covers the 4096 bytes written.
    unsafe { h.grants(0).copy(&mut ops).unwrap() };
    assert_eq!(ops[0].status, gntst::OKAY);
    let expect: Vec<u8> = (0..4096usize)
        .map(|i| ((i * 13 + 17) % 256) as u8)
        .collect();
    assert_eq!(page, expect);
}

/// Several processes starting and stopping sim hosts in one parent directory at once: a
/// start reaping stale roots must never take another process's root being created.
#[test]
fn concurrent_starts_across_processes() {
    let _serial = serial();
    if let Ok(parent) = std::env::var("NBD_SIM_CHURN_PARENT") {
        let opts = SimOptions {
            parent: parent.into(),
            root: None,
        };
        for _ in 0..40 {
            let h = SimHost::start(opts.clone()).expect("start while others churn");
            h.add_domain(3, "x", 16, 32)
                .expect("domain while others churn");
            h.stop().expect("stop");
        }
        return;
    }
    let parent = std::env::temp_dir().join(format!("nbd-churn-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let exe = std::env::current_exe().unwrap();
    let kids: Vec<_> = (0..4)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "concurrent_starts_across_processes",
                    "--test-threads=1",
                ])
                .env("NBD_SIM_CHURN_PARENT", &parent)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success(), "a concurrent start failed");
    }
    assert_eq!(
        std::fs::read_dir(&parent).unwrap().count(),
        0,
        "nothing left"
    );
    std::fs::remove_dir(&parent).unwrap();
}

/// A backend process killed with SIGKILL (this test binary re-run as the child): its
/// event channels die with it as on a Linux dom0 (the guest's end goes back to unbound,
/// offered to dom0), so a new backend process binds the same guest port again; while the
/// old one lives, its binding holds.
#[test]
fn a_dead_backend_process_loses_its_channels() {
    let _serial = serial();
    if let Ok(root) = std::env::var("NBD_HOLDER_CHILD") {
        let layout = xen::sim::SimLayout::new(&root);
        let port: u32 = std::env::var("NBD_HOLDER_PORT").unwrap().parse().unwrap();
        let mut ev = xen::sim::SimEvtchn::device(layout, 0).unwrap();
        let local = ev.bind_interdomain(D, port).unwrap();
        let tmp = std::path::Path::new(&root).join("holder.tmp");
        std::fs::write(&tmp, local.to_string()).unwrap();
        std::fs::rename(&tmp, std::path::Path::new(&root).join("holder")).unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let h = host();
    let guest = h.evtchn(D).unwrap();
    let gport = guest.alloc_unbound(0).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "a_dead_backend_process_loses_its_channels",
            "--test-threads=1",
        ])
        .env("NBD_HOLDER_CHILD", h.root())
        .env("NBD_HOLDER_PORT", gport.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pf = h.root().join("holder");
    let t = Instant::now();
    let old: u32 = loop {
        if let Ok(s) = std::fs::read_to_string(&pf) {
            break s.trim().parse().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "child bound nothing");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(guest.is_connected(gport));
    // The holder lives: a second backend process (here a device handle of ours) is refused.
    let mut again = xen::sim::SimEvtchn::device(h.layout().clone(), 0).unwrap();
    assert!(again.bind_interdomain(D, gport).is_err(), "still bound");
    assert!(
        guest.is_connected(gport),
        "a live process's binding is kept"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    // The host notices within its reaping period, without anyone binding.
    let t = Instant::now();
    while guest.is_connected(gport) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the dead process's channel stays bound"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("dead backend's channel closed after {:?}", t.elapsed());
    // A notify from the guest meanwhile is dropped, as on an unbound port.
    guest.notify(gport).unwrap();
    let b = again.bind_interdomain(D, gport).unwrap();
    assert!(guest.is_connected(gport));
    assert!(
        !again.take_pending(b),
        "nothing carried over from the dead binding"
    );
    guest.notify(gport).unwrap();
    assert!(again.take_pending(b));
    again.notify(b).unwrap();
    assert!(guest.take_pending(gport));
    let _ = old;
    // A kernel-owned (SimEvtchn::new) binding is not a process's: it is never reaped.
    let g2 = guest.alloc_unbound(0).unwrap();
    let mut kernel = h.evtchn(0).unwrap();
    let kb = kernel.bind_interdomain(D, g2).unwrap();
    assert_eq!(xen::sim::evtchn::reap_dead(h.layout(), 0), 0);
    assert!(guest.is_connected(g2));
    kernel.unbind(kb).unwrap();
    again.unbind(b).unwrap();
    assert!(!guest.is_connected(gport));
}
