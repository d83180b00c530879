//! Event channels of the simulated host, in shared memory so any process can use them.
//!
//! `dom<D>/evtchn`: a 64-byte header whose first u32 is the domain's wake-up futex word
//! (incremented on every event delivered to D) and whose second u32 is the domain's life
//! state (0 being built, 1 running, 2 destroyed), then `PORTS` entries of 16 bytes:
//! `u32 state` (0 free, 1 unbound, 2 interdomain), `u32 remote_dom`, `u32 remote_port`,
//! `u32 flags` (bit 0 pending, bit 1 masked). Port 0 is never used, as in Xen. Notify sets
//! the peer's pending bit and, unless masked, bumps and wakes the peer domain's futex.
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
}

impl SimEvtchn {
    pub fn new(layout: SimLayout, local_dom: u16) -> Result<SimEvtchn, XenError> {
        let e = SimEvtchn {
            layout,
            local_dom,
            tables: Arc::new(Mutex::new(HashMap::new())),
        };
        e.table(local_dom)?;
        Ok(e)
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
        self.local()
            .alloc(UNBOUND, remote_dom, 0)
            .ok_or(XenError::Evtchn {
                op: "alloc_unbound",
                msg: "no free port".into(),
            })
    }

    /// Whether `port` is bound to a peer (state interdomain).
    pub fn is_connected(&self, port: u32) -> bool {
        PortTable::valid(port) && self.local().state(port).load(Ordering::Acquire) == INTERDOMAIN
    }

    fn err(op: &'static str, msg: String) -> XenError {
        XenError::Evtchn { op, msg }
    }
}

/// What Xen does to event channels when domain `domid` is destroyed: every peer port bound
/// to one of its ports goes back to unbound (a notify on it is then dropped), and the
/// domain's own ports are closed. Called by the sim host after marking the domain destroyed.
pub(crate) fn close_domain(layout: &SimLayout, domid: u16) {
    let Ok(table) = PortTable::open(layout, domid) else {
        return;
    };
    let mut peers: HashMap<u16, Option<PortTable>> = HashMap::new();
    for p in 1..PORTS {
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
