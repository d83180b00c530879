//! A hostile frontend, for tests of a backend's defences: it speaks the simulated host's
//! ABI (`docs/sim-abi.md`) directly and writes whatever it is told: any xenstore key,
//! any grant entry, any ring slot and any ring index, at any time, and notifies as often
//! as it likes. Nothing here checks anything; the well-behaved frontend is
//! [`crate::Netfront`].
//!
//! Several hostile vifs of one domain share its RAM and grant table: each is given its own
//! range of frames and grant references.
use crate::FrontError;
use dataplane::netif::{
    RxRequest, RxResponse, TxRequest, TxResponse, RING_HEADER_SIZE, RX_RING_SIZE, TX_RING_SIZE,
};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xen::sim::grant::{GTF_PERMIT_ACCESS, PAGE};
use xen::sim::{DomainMem, SimEvtchn, SimLayout};
use xen::{EventChannel, Tx, XenStore};

/// Shared-ring header fields (byte offsets in the ring page).
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;
/// Bytes of one TX and one RX ring entry (the union of request and response).
const TX_ENTRY: usize = 12;
const RX_ENTRY: usize = 8;

/// One hostile vif of a simulated guest.
pub struct Hostile {
    pub domid: u16,
    pub devid: u32,
    pub backend_dom: u16,
    pub fe: String,
    pub be: String,
    mem: Arc<DomainMem>,
    ev: SimEvtchn,
    xs: XenStore,
    evtchn_file: std::path::PathBuf,
    frames: Range<u32>,
    grefs: Range<u32>,
    pub tx_frame: u32,
    pub rx_frame: u32,
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn_tx: u32,
    pub evtchn_rx: u32,
    /// Private producer indices (published by `tx_push`/`rx_push`).
    pub tx_prod: u32,
    pub rx_prod: u32,
    tx_rsp_cons: u32,
    rx_rsp_cons: u32,
}

impl Hostile {
    /// Vif `devid` of `domid` (its xenstore directories made by the toolstack), using the
    /// guest frames `frames` and grant references `grefs` only. Allocates and grants (to
    /// the backend, writable) a TX and an RX ring page and two unbound event channels; writes
    /// nothing to xenstore yet.
    pub fn new(
        layout: &SimLayout,
        xs: XenStore,
        domid: u16,
        devid: u32,
        frames: Range<u32>,
        grefs: Range<u32>,
    ) -> Result<Hostile, FrontError> {
        let mem = Arc::new(DomainMem::open(layout, domid)?);
        let ev = SimEvtchn::new(layout.clone(), domid)?;
        let fe = format!("/local/domain/{domid}/device/vif/{devid}");
        let be = xs
            .read(Tx::NONE, &format!("{fe}/backend"))?
            .ok_or_else(|| FrontError::Backend(format!("{fe}/backend missing")))?;
        let backend_dom = xs
            .read(Tx::NONE, &format!("{fe}/backend-id"))?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut h = Hostile {
            domid,
            devid,
            backend_dom,
            fe,
            be,
            mem,
            ev,
            xs,
            evtchn_file: layout.dom_dir(domid).join("evtchn"),
            frames,
            grefs,
            tx_frame: 0,
            rx_frame: 0,
            tx_ring_ref: 0,
            rx_ring_ref: 0,
            evtchn_tx: 0,
            evtchn_rx: 0,
            tx_prod: 0,
            rx_prod: 0,
            tx_rsp_cons: 0,
            rx_rsp_cons: 0,
        };
        h.tx_frame = h.frame()?;
        h.rx_frame = h.frame()?;
        for f in [h.tx_frame, h.rx_frame] {
            h.mem.write_frame(f, 0, &[0u8; PAGE])?;
        }
        let be_dom = h.backend_dom;
        h.tx_ring_ref = h.grant(h.tx_frame, GTF_PERMIT_ACCESS, be_dom)?;
        h.rx_ring_ref = h.grant(h.rx_frame, GTF_PERMIT_ACCESS, be_dom)?;
        // The front ring's event indices start at 1, as FRONT_RING_INIT leaves them.
        h.index(h.tx_frame, RSP_PROD + 4)
            .store(1, Ordering::Release);
        h.index(h.rx_frame, RSP_PROD + 4)
            .store(1, Ordering::Release);
        h.evtchn_tx = h.ev.alloc_unbound(be_dom)?;
        h.evtchn_rx = h.ev.alloc_unbound(be_dom)?;
        Ok(h)
    }

    pub fn xenstore(&self) -> &XenStore {
        &self.xs
    }

    /// The next frame of this vif's range.
    pub fn frame(&mut self) -> Result<u32, FrontError> {
        let f = self.frames.next().ok_or(FrontError::NoResources)?;
        if f >= self.mem.frames() {
            return Err(FrontError::NoResources);
        }
        Ok(f)
    }

    /// The next grant reference of this vif's range, its entry written as given (raw
    /// flags: read-only, revoked, wrong type; any domid).
    pub fn grant(&mut self, frame: u32, flags: u16, domid: u16) -> Result<u32, FrontError> {
        let g = self.grefs.next().ok_or(FrontError::NoResources)?;
        self.set_grant(g, flags, domid, frame)?;
        Ok(g)
    }

    /// Writes grant entry `gref` (revoke: flags 0).
    pub fn set_grant(
        &self,
        gref: u32,
        flags: u16,
        domid: u16,
        frame: u32,
    ) -> Result<(), FrontError> {
        Ok(self.mem.set_entry(gref, flags, domid, frame)?)
    }

    /// A new frame holding `data`, granted to the backend with `flags`; returns the gref.
    pub fn grant_data(&mut self, data: &[u8], flags: u16) -> Result<(u32, u32), FrontError> {
        let f = self.frame()?;
        self.mem.write_frame(f, 0, data)?;
        let be = self.backend_dom;
        Ok((self.grant(f, flags, be)?, f))
    }

    pub fn write_page(&self, frame: u32, offset: usize, data: &[u8]) -> Result<(), FrontError> {
        Ok(self.mem.write_frame(frame, offset, data)?)
    }

    pub fn read_page(&self, frame: u32, offset: usize, len: usize) -> Result<Vec<u8>, FrontError> {
        Ok(self.mem.read_frame(frame, offset, len)?)
    }

    /// The keys a well-behaved single-queue frontend with split channels writes.
    pub fn standard_keys(&self) -> Vec<(String, String)> {
        [
            ("tx-ring-ref", self.tx_ring_ref.to_string()),
            ("rx-ring-ref", self.rx_ring_ref.to_string()),
            ("event-channel-tx", self.evtchn_tx.to_string()),
            ("event-channel-rx", self.evtchn_rx.to_string()),
            ("request-rx-copy", "1".into()),
            ("feature-rx-notify", "1".into()),
            ("feature-sg", "1".into()),
            ("feature-gso-tcpv4", "1".into()),
            ("feature-gso-tcpv6", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Writes `key` (relative to the frontend directory) = `value`.
    pub fn write(&self, key: &str, value: &str) -> Result<(), FrontError> {
        Ok(self
            .xs
            .write(Tx::NONE, &format!("{}/{key}", self.fe), value)?)
    }

    pub fn write_keys(&self, keys: &[(String, String)]) -> Result<(), FrontError> {
        for (k, v) in keys {
            self.write(k, v)?;
        }
        Ok(())
    }

    /// Removes `key` of the frontend directory ("" removes the directory itself).
    pub fn rm(&self, key: &str) -> Result<(), FrontError> {
        let p = if key.is_empty() {
            self.fe.clone()
        } else {
            format!("{}/{key}", self.fe)
        };
        Ok(self.xs.rm(Tx::NONE, &p)?)
    }

    pub fn set_state(&self, state: u32) -> Result<(), FrontError> {
        self.write("state", &state.to_string())
    }

    /// A key of the backend directory.
    pub fn backend(&self, key: &str) -> Option<String> {
        self.xs
            .read(Tx::NONE, &format!("{}/{key}", self.be))
            .ok()
            .flatten()
    }

    /// Waits (bounded) for the backend's state to be `state`.
    pub fn wait_backend(&self, state: u32, timeout: Duration) -> bool {
        let t = Instant::now();
        let want = state.to_string();
        while t.elapsed() < timeout {
            if self.backend("state").as_deref() == Some(want.as_str()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// The handshake of a well-behaved frontend: InitWait awaited, `keys` written, state 4;
    /// waits for the backend to be Connected.
    pub fn connect_with(
        &self,
        keys: &[(String, String)],
        timeout: Duration,
    ) -> Result<(), FrontError> {
        if !self.wait_backend(2, timeout) {
            return Err(FrontError::Timeout("backend InitWait".into()));
        }
        self.write_keys(keys)?;
        self.set_state(4)?;
        if !self.wait_backend(4, timeout) {
            return Err(FrontError::Timeout(format!(
                "backend Connected (state {:?}, error {:?})",
                self.backend("state"),
                self.backend("error")
            )));
        }
        Ok(())
    }

    pub fn connect(&self, timeout: Duration) -> Result<(), FrontError> {
        self.connect_with(&self.standard_keys(), timeout)
    }

    fn index(&self, frame: u32, off: usize) -> &AtomicU32 {
        let p = self.mem.frame_ptr(frame).expect("ring frame inside RAM");
        // SAFETY: `off` is 0..16 (a 4-aligned ring header field) of a page of the guest's
        // RAM mapping, which lives as long as `self.mem`; the word is shared with the
        // backend, so it is only accessed atomically.
        unsafe { &*(p.add(off) as *const AtomicU32) }
    }

    /// Writes TX slot `idx` (mod the ring size) without publishing it.
    pub fn tx_write_slot(&self, idx: u32, req: TxRequest) {
        let at = RING_HEADER_SIZE + (idx as usize % TX_RING_SIZE) * TX_ENTRY;
        self.mem
            .write_frame(self.tx_frame, at, &req.to_bytes())
            .expect("in the ring page");
    }

    /// Writes requests at the private producer and advances it (not published).
    pub fn tx_put(&mut self, reqs: &[TxRequest]) {
        for r in reqs {
            self.tx_write_slot(self.tx_prod, *r);
            self.tx_prod = self.tx_prod.wrapping_add(1);
        }
    }

    /// Publishes the private TX producer and notifies.
    pub fn tx_push(&mut self) {
        self.set_tx_req_prod(self.tx_prod);
        self.notify_tx();
    }

    /// Writes the shared TX `req_prod` (any value).
    pub fn set_tx_req_prod(&self, v: u32) {
        self.index(self.tx_frame, REQ_PROD)
            .store(v, Ordering::Release);
    }

    pub fn tx_rsp_prod(&self) -> u32 {
        self.index(self.tx_frame, RSP_PROD).load(Ordering::Acquire)
    }

    /// TX responses written since the last call.
    pub fn tx_responses(&mut self) -> Vec<TxResponse> {
        let prod = self.tx_rsp_prod();
        let mut out = Vec::new();
        while self.tx_rsp_cons != prod && out.len() < TX_RING_SIZE {
            let at = RING_HEADER_SIZE + (self.tx_rsp_cons as usize % TX_RING_SIZE) * TX_ENTRY;
            let b = self.mem.read_frame(self.tx_frame, at, 4).expect("ring");
            out.push(TxResponse::from_bytes([b[0], b[1], b[2], b[3]]));
            self.tx_rsp_cons = self.tx_rsp_cons.wrapping_add(1);
        }
        out
    }

    /// Waits (bounded) until the backend has answered `n` TX requests in all; returns
    /// every response seen meanwhile.
    pub fn wait_tx_responses(&mut self, n: usize, timeout: Duration) -> Vec<TxResponse> {
        let t = Instant::now();
        let mut all = Vec::new();
        while all.len() < n && t.elapsed() < timeout {
            all.extend(self.tx_responses());
            std::thread::sleep(Duration::from_millis(1));
        }
        all.extend(self.tx_responses());
        all
    }

    /// Posts RX requests at the private producer (not published).
    pub fn rx_put(&mut self, reqs: &[RxRequest]) {
        for r in reqs {
            let at = RING_HEADER_SIZE + (self.rx_prod as usize % RX_RING_SIZE) * RX_ENTRY;
            self.mem
                .write_frame(self.rx_frame, at, &r.to_bytes())
                .expect("in the ring page");
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
    }

    /// Publishes the private RX producer and notifies.
    pub fn rx_push(&mut self) {
        self.set_rx_req_prod(self.rx_prod);
        self.notify_rx();
    }

    /// Writes the shared RX `req_prod` (any value).
    pub fn set_rx_req_prod(&self, v: u32) {
        self.index(self.rx_frame, REQ_PROD)
            .store(v, Ordering::Release);
    }

    /// RX responses written since the last call.
    pub fn rx_responses(&mut self) -> Vec<RxResponse> {
        let prod = self.index(self.rx_frame, RSP_PROD).load(Ordering::Acquire);
        let mut out = Vec::new();
        while self.rx_rsp_cons != prod && out.len() < RX_RING_SIZE {
            let at = RING_HEADER_SIZE + (self.rx_rsp_cons as usize % RX_RING_SIZE) * RX_ENTRY;
            let b = self.mem.read_frame(self.rx_frame, at, 8).expect("ring");
            out.push(RxResponse::from_bytes(b.try_into().expect("8 bytes")));
            self.rx_rsp_cons = self.rx_rsp_cons.wrapping_add(1);
        }
        out
    }

    pub fn notify_tx(&self) {
        let _ = self.ev.notify(self.evtchn_tx);
    }

    pub fn notify_rx(&self) {
        let _ = self.ev.notify(self.evtchn_rx);
    }

    /// The state of one of this domain's event-channel ports as the sim's table holds it:
    /// 0 free, 1 unbound, 2 bound by a peer.
    pub fn port_state(&self, port: u32) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        std::fs::File::open(&self.evtchn_file)
            .and_then(|f| f.read_exact_at(&mut b, 64 + 16 * u64::from(port)))
            .map(|_| u32::from_le_bytes(b))
            .unwrap_or(u32::MAX)
    }
}
