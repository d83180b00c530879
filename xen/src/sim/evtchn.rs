//! Event channels of the simulated host, in shared memory so any process can use them.
//!
//! `dom<D>/evtchn`: a 64-byte header whose first u32 is the domain's wake-up futex word
//! (incremented on every event delivered to D) and whose second u32 is the domain's life
//! state (0 being built, 1 running, 2 destroyed), then `PORTS` entries of 16 bytes:
//! `u32 state` (0 free, 1 unbound, 2 interdomain), `u32 remote_dom`, `u32 remote_port`,
//! `u32 flags` (bit 0 pending, bit 1 masked). Port 0 is never used, as in Xen. Notify sets
//! the peer's pending bit and, unless masked, bumps and wakes the peer domain's futex.
//!
//! `dom<D>/evtchn-owner`: per port, the process that owns it when it was bound or allocated
//! through a [`SimEvtchn::device`] handle (a dom0 process's `/dev/xen/evtchn`): `u32 pid`,
//! `u32` reserved, `u64 start time`; pid 0 is "the domain's kernel". A Linux dom0 closes a
//! process's channels when its evtchn fd closes, also when it is killed; the sim does it
//! when it notices the owner is gone ([`reap_dead`]).
use super::shm::{futex_wait, futex_wake, ShmFile};
use super::SimLayout;
use crate::iface::EventChannel;
use crate::XenError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PORTS: u32 = 1024;
const HDR: usize = 64;
const ENTRY: usize = 16;
pub const FILE_SIZE: usize = HDR + PORTS as usize * ENTRY;
const FREE: u32 = 0;
const UNBOUND: u32 = 1;
const INTERDOMAIN: u32 = 2;
const PENDING: u32 = 1;
const MASKED: u32 = 2;
/// Byte offset of the domain's life state in the header.
const DOM_STATE: usize = 4;
/// Life states of a domain.
pub const DOM_BUILDING: u32 = 0;
pub const DOM_RUNNING: u32 = 1;
pub const DOM_DESTROYED: u32 = 2;

/// Bytes per entry of `dom<D>/evtchn-owner`.
const OWNER_ENTRY: usize = 16;
pub const OWNER_FILE_SIZE: usize = PORTS as usize * OWNER_ENTRY;

/// A process named so that a reused pid is not taken for it: pid and start time (field
/// 22 of `/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    /// The calling process.
    pub fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start: super::start_time(pid as i32).unwrap_or(0),
        }
    }

    /// Whether the process still runs (start time 0: unknown, judged by the pid alone).
    pub fn alive(&self) -> bool {
        super::owner_alive(self.pid as i32, (self.start != 0).then_some(self.start))
    }
}

/// One domain's `evtchn-owner` table.
pub(crate) struct OwnerTable(ShmFile);

impl OwnerTable {
    pub(crate) fn create(layout: &SimLayout, domid: u16) -> Result<OwnerTable, XenError> {
        Ok(OwnerTable(ShmFile::create(
            &layout.dom_dir(domid).join("evtchn-owner"),
            OWNER_FILE_SIZE,
        )?))
    }
    fn open(layout: &SimLayout, domid: u16) -> Result<OwnerTable, XenError> {
        Ok(OwnerTable(ShmFile::open(
            &layout.dom_dir(domid).join("evtchn-owner"),
            Some(OWNER_FILE_SIZE),
        )?))
    }
    fn pid(&self, port: u32) -> &AtomicU32 {
        self.0.u32_at(port as usize * OWNER_ENTRY)
    }
    fn start(&self, port: u32) -> &std::sync::atomic::AtomicU64 {
        self.0.u64_at(port as usize * OWNER_ENTRY + 8)
    }
    /// The pid is written last: a reaper that sees it sees the start time too.
    fn set(&self, port: u32, o: Owner) {
        self.start(port).store(o.start, Ordering::Relaxed);
        self.pid(port).store(o.pid, Ordering::Release);
    }
    fn clear(&self, port: u32) {
        self.pid(port).store(0, Ordering::Release);
    }
    /// Who owns `port`, if a process does.
    pub(crate) fn owner(&self, port: u32) -> Option<Owner> {
        let pid = self.pid(port).load(Ordering::Acquire);
        (pid != 0).then(|| Owner {
            pid,
            start: self.start(port).load(Ordering::Relaxed),
        })
    }
}

/// One domain's port table.
pub struct PortTable(ShmFile);

impl PortTable {
    /// Creates the table of a domain being built (life state 0).
    pub(crate) fn create(layout: &SimLayout, domid: u16) -> Result<PortTable, XenError> {
        Ok(PortTable(ShmFile::create(
            &layout.dom_dir(domid).join("evtchn"),
            FILE_SIZE,
        )?))
    }
    pub fn open(layout: &SimLayout, domid: u16) -> Result<PortTable, XenError> {
        Ok(PortTable(ShmFile::open(
            &layout.dom_dir(domid).join("evtchn"),
            Some(FILE_SIZE),
        )?))
    }
    fn futex(&self) -> &AtomicU32 {
        self.0.u32_at(0)
    }
    /// Whether the domain is running (not being built, not destroyed).
    pub fn is_alive(&self) -> bool {
        self.0.u32_at(DOM_STATE).load(Ordering::Acquire) == DOM_RUNNING
    }
    pub(crate) fn set_state(&self, state: u32) {
        self.0.u32_at(DOM_STATE).store(state, Ordering::Release);
    }
    fn field(&self, port: u32, i: usize) -> &AtomicU32 {
        self.0.u32_at(HDR + port as usize * ENTRY + i * 4)
    }
    fn state(&self, port: u32) -> &AtomicU32 {
        self.field(port, 0)
    }
    fn remote_dom(&self, port: u32) -> &AtomicU32 {
        self.field(port, 1)
    }
    fn remote_port(&self, port: u32) -> &AtomicU32 {
        self.field(port, 2)
    }
    fn flags(&self, port: u32) -> &AtomicU32 {
        self.field(port, 3)
    }

    fn valid(port: u32) -> bool {
        port > 0 && port < PORTS
    }

    /// Claims a free port (state FREE -> `state`), masked-off and not pending.
    fn alloc(&self, state: u32, remote_dom: u16, remote_port: u32) -> Option<u32> {
        (1..PORTS).find(|&p| {
            if self
                .state(p)
                .compare_exchange(FREE, state, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.remote_dom(p)
                    .store(u32::from(remote_dom), Ordering::Relaxed);
                self.remote_port(p).store(remote_port, Ordering::Relaxed);
                self.flags(p).store(0, Ordering::Release);
                true
            } else {
                false
            }
        })
    }

    /// Marks `port` pending and wakes the domain unless it is masked.
    fn raise(&self, port: u32) {
        let old = self.flags(port).fetch_or(PENDING, Ordering::AcqRel);
        if old & MASKED == 0 {
            self.futex().fetch_add(1, Ordering::Release);
            futex_wake(self.futex());
        }
    }
}

/// Event channels as seen by one domain (the backend's dom0 or a simulated guest).
#[derive(Clone)]
pub struct SimEvtchn {
    layout: SimLayout,
    local_dom: u16,
    tables: Arc<Mutex<HashMap<u16, Arc<PortTable>>>>,
    /// Set for a [`SimEvtchn::device`] handle: the ports it binds are this process's.
    owner: Option<(Owner, Arc<OwnerTable>)>,
}

impl SimEvtchn {
    /// The domain's own channels, as its kernel uses them: they live until unbound or
    /// the domain is destroyed (a simulated guest, or a backend in a test process).
    pub fn new(layout: SimLayout, local_dom: u16) -> Result<SimEvtchn, XenError> {
        let e = SimEvtchn {
            layout,
            local_dom,
            tables: Arc::new(Mutex::new(HashMap::new())),
            owner: None,
        };
        e.table(local_dom)?;
        Ok(e)
    }

    /// The channels of a process in `local_dom`, as `/dev/xen/evtchn` gives them: every
    /// port this handle binds or allocates is the calling process's, and is closed (the
    /// peer's end back to unbound) once that process is gone, however it ended. Closes the
    /// ports of the domain's dead processes first, as their kernel would have already.
    /// A root made by a sim without `evtchn-owner` tables gives the kernel's view.
    pub fn device(layout: SimLayout, local_dom: u16) -> Result<SimEvtchn, XenError> {
        reap_dead(&layout, local_dom);
        let owners = OwnerTable::open(&layout, local_dom).ok();
        let mut e = SimEvtchn::new(layout, local_dom)?;
        e.owner = owners.map(|t| (Owner::me(), Arc::new(t)));
        Ok(e)
    }

    fn own(&self, port: u32) {
        if let Some((o, t)) = &self.owner {
            t.set(port, *o);
        }
    }

    fn disown(&self, port: u32) {
        if let Some((_, t)) = &self.owner {
            t.clear(port);
        }
    }

    fn table(&self, domid: u16) -> Result<Arc<PortTable>, XenError> {
        let mut g = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = g.get(&domid) {
            // A destroyed domain's table is dropped: a new domain may reuse the id.
            if domid == self.local_dom || t.is_alive() {
                return Ok(t.clone());
            }
            g.remove(&domid);
        }
        let t = Arc::new(
            PortTable::open(&self.layout, domid).map_err(|_| XenError::Evtchn {
                op: "open",
                msg: format!("no domain {domid}"),
            })?,
        );
        g.insert(domid, t.clone());
        Ok(t)
    }

    fn local(&self) -> Arc<PortTable> {
        self.table(self.local_dom)
            .expect("local table opened in new()")
    }

    /// Allocates an unbound port that `remote_dom` may bind to (guest side of a device).
    pub fn alloc_unbound(&self, remote_dom: u16) -> Result<u32, XenError> {
        let p = self
            .local()
            .alloc(UNBOUND, remote_dom, 0)
            .ok_or(XenError::Evtchn {
                op: "alloc_unbound",
                msg: "no free port".into(),
            })?;
        self.own(p);
        Ok(p)
    }

    /// Whether `port` is bound to a peer (state interdomain).
    pub fn is_connected(&self, port: u32) -> bool {
        PortTable::valid(port) && self.local().state(port).load(Ordering::Acquire) == INTERDOMAIN
    }

    fn err(op: &'static str, msg: String) -> XenError {
        XenError::Evtchn { op, msg }
    }
}

/// Closes port `p` of domain `domid` as `EVTCHNOP_close` does: an interdomain peer goes
/// back to unbound (still offered to `domid`, `remote_port` 0), so it can be bound again;
/// the port itself is freed.
fn close_port(
    layout: &SimLayout,
    table: &PortTable,
    domid: u16,
    p: u32,
    peers: &mut HashMap<u16, Option<PortTable>>,
) {
    if table.state(p).load(Ordering::Acquire) == INTERDOMAIN {
        let rd = table.remote_dom(p).load(Ordering::Acquire) as u16;
        let rp = table.remote_port(p).load(Ordering::Acquire);
        let peer = peers
            .entry(rd)
            .or_insert_with(|| PortTable::open(layout, rd).ok());
        if let Some(peer) = peer.as_ref().filter(|_| PortTable::valid(rp)) {
            if peer.remote_dom(rp).load(Ordering::Acquire) == u32::from(domid)
                && peer.remote_port(rp).load(Ordering::Acquire) == p
                && peer
                    .state(rp)
                    .compare_exchange(INTERDOMAIN, UNBOUND, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                peer.remote_port(rp).store(0, Ordering::Release);
            }
        }
    }
    table.flags(p).store(0, Ordering::Relaxed);
    table.state(p).store(FREE, Ordering::Release);
}

/// What Xen does to event channels when domain `domid` is destroyed: every peer port bound
/// to one of its ports goes back to unbound (a notify on it is then dropped), and the
/// domain's own ports are closed. Called by the sim host after marking the domain destroyed.
pub(crate) fn close_domain(layout: &SimLayout, domid: u16) {
    let Ok(table) = PortTable::open(layout, domid) else {
        return;
    };
    let owners = OwnerTable::open(layout, domid).ok();
    let mut peers = HashMap::new();
    for p in 1..PORTS {
        if let Some(o) = &owners {
            o.clear(p);
        }
        close_port(layout, &table, domid, p, &mut peers);
    }
}

/// What a dom0 kernel does when a process using `/dev/xen/evtchn` exits: closes every
/// port of domain `domid` that a process now gone bound or allocated through a
/// [`SimEvtchn::device`] handle (its guest peers go back to unbound and can be bound
/// again). Returns the ports closed. The sim host runs it periodically; a new device
/// handle and a refused bind run it too, so nobody depends on that timing.
pub fn reap_dead(layout: &SimLayout, domid: u16) -> usize {
    let (Ok(table), Ok(owners)) = (
        PortTable::open(layout, domid),
        OwnerTable::open(layout, domid),
    ) else {
        return 0;
    };
    let mut peers = HashMap::new();
    let mut closed = 0;
    for p in 1..PORTS {
        let Some(o) = owners.owner(p) else {
            continue;
        };
        if o.alive() && table.state(p).load(Ordering::Acquire) != FREE {
            continue;
        }
        // One reaper wins the port (two processes may reap at once).
        if owners
            .pid(p)
            .compare_exchange(o.pid, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        // A stale record on a port freed by another handle: only forgotten.
        if table.state(p).load(Ordering::Acquire) != FREE {
            close_port(layout, &table, domid, p, &mut peers);
            closed += 1;
        }
    }
    closed
}

impl EventChannel for SimEvtchn {
    fn bind_interdomain(&mut self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError> {
        if !PortTable::valid(remote_port) {
            return Err(Self::err(
                "bind_interdomain",
                format!("invalid remote port {remote_port}"),
            ));
        }
        let remote = self.table(remote_dom)?;
        // Still bound to a port of a process that is gone (its kernel would have closed
        // it by now): close that first.
        if remote.state(remote_port).load(Ordering::Acquire) == INTERDOMAIN {
            let holder = remote.remote_dom(remote_port).load(Ordering::Acquire);
            if let Ok(holder) = u16::try_from(holder) {
                reap_dead(&self.layout, holder);
            }
        }
        // The remote port must be unbound and offered to us (Xen: -EINVAL otherwise).
        if remote.state(remote_port).load(Ordering::Acquire) != UNBOUND
            || remote.remote_dom(remote_port).load(Ordering::Acquire) != u32::from(self.local_dom)
        {
            return Err(Self::err(
                "bind_interdomain",
                format!(
                    "dom{remote_dom} port {remote_port} is not unbound for dom{}",
                    self.local_dom
                ),
            ));
        }
        let local = self.local();
        let port = local
            .alloc(INTERDOMAIN, remote_dom, remote_port)
            .ok_or_else(|| Self::err("bind_interdomain", "no free port".into()))?;
        if remote
            .state(remote_port)
            .compare_exchange(UNBOUND, INTERDOMAIN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            local.state(port).store(FREE, Ordering::Release);
            return Err(Self::err(
                "bind_interdomain",
                "remote port changed meanwhile".into(),
            ));
        }
        remote
            .remote_port(remote_port)
            .store(port, Ordering::Release);
        self.own(port);
        Ok(port)
    }

    fn notify(&self, port: u32) -> Result<(), XenError> {
        let local = self.local();
        if !PortTable::valid(port) {
            return Err(Self::err("notify", format!("invalid port {port}")));
        }
        match local.state(port).load(Ordering::Acquire) {
            INTERDOMAIN => {}
            // Xen drops a notification on an unbound port silently (the peer has not bound
            // yet); netfront relies on that when it posts buffers before the backend binds.
            UNBOUND => return Ok(()),
            _ => return Err(Self::err("notify", format!("port {port} is not allocated"))),
        }
        let rd = local.remote_dom(port).load(Ordering::Acquire) as u16;
        let rp = local.remote_port(port).load(Ordering::Acquire);
        let remote = self.table(rd)?;
        if PortTable::valid(rp) {
            remote.raise(rp);
        }
        Ok(())
    }

    fn take_pending(&self, port: u32) -> bool {
        PortTable::valid(port)
            && self
                .local()
                .flags(port)
                .fetch_and(!PENDING, Ordering::AcqRel)
                & PENDING
                != 0
    }

    fn unmask(&self, port: u32) -> Result<(), XenError> {
        if !PortTable::valid(port) {
            return Err(Self::err("unmask", format!("invalid port {port}")));
        }
        let local = self.local();
        let old = local.flags(port).fetch_and(!MASKED, Ordering::AcqRel);
        if old & PENDING != 0 {
            local.futex().fetch_add(1, Ordering::Release);
            futex_wake(local.futex());
        }
        Ok(())
    }

    fn unbind(&mut self, port: u32) -> Result<(), XenError> {
        if !PortTable::valid(port) {
            return Err(Self::err("unbind", format!("invalid port {port}")));
        }
        let local = self.local();
        if local.state(port).load(Ordering::Acquire) == INTERDOMAIN {
            // The peer's end goes back to unbound (offered to us again), as in Xen.
            let rd = local.remote_dom(port).load(Ordering::Acquire) as u16;
            let rp = local.remote_port(port).load(Ordering::Acquire);
            if let Ok(remote) = self.table(rd) {
                if PortTable::valid(rp) {
                    let _ = remote.state(rp).compare_exchange(
                        INTERDOMAIN,
                        UNBOUND,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        self.disown(port);
        local.flags(port).store(0, Ordering::Relaxed);
        local.state(port).store(FREE, Ordering::Release);
        Ok(())
    }

    fn wait(&self, timeout: Duration) {
        let local = self.local();
        let seen = local.futex().load(Ordering::Acquire);
        // Anything already pending and unmasked: don't sleep.
        for p in 1..PORTS {
            if local.state(p).load(Ordering::Relaxed) == INTERDOMAIN
                && local.flags(p).load(Ordering::Acquire) & (PENDING | MASKED) == PENDING
            {
                return;
            }
        }
        futex_wait(local.futex(), seen, timeout);
    }
}
