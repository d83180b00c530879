//! A netfront for simulated guests, behaving like Linux's xen-netfront toward a backend:
//! same xenstore keys in the same order, same ring usage.
//!
//! Handshake (Linux `netback_changed` / `talk_to_netback`): the frontend waits for the
//! backend to reach InitWait, reads its features (`feature-rx-copy` required,
//! `multi-queue-max-queues`, `feature-split-event-channels`, `feature-sg`, GSO), allocates
//! and grants one TX and one RX ring page per queue, allocates event channels (two per
//! queue when split), writes everything in one transaction (flat keys for one queue,
//! `queue-N/...` and `multi-queue-num-queues` for several), switches to Connected and posts
//! its RX buffers. It closes when the backend goes Closing.
use dataplane::netif::{
    CtrlRequest, CtrlRing, ExtraInfo, FrontRing, RxRequest, RxResponse, RxRing, SharedPage,
    TxRequest, TxRing, NETRXF_EXTRA_INFO, NETRXF_GSO_PREFIX, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK,
    NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, RX_RING_SIZE, TX_RING_SIZE, XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_RSP_NULL,
};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use xen::sim::grant::{GTF_PERMIT_ACCESS, GTF_READONLY, PAGE};
use xen::sim::{DomainMem, SimEvtchn, SimLayout};
use xen::{EventChannel, Tx, XenStore};

/// Netfront errors.
#[derive(Debug, Error)]
pub enum FrontError {
    #[error("xen: {0}")]
    Xen(#[from] xen::XenError),
    #[error("backend: {0}")]
    Backend(String),
    #[error("out of guest memory or grant entries")]
    NoResources,
    #[error("ring: {0}")]
    Ring(#[from] dataplane::netif::RingError),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("packet of {0} bytes does not fit (max 65535 and {1} slots)")]
    TooBig(usize, usize),
}

/// What the frontend asks for.
#[derive(Clone, Debug)]
pub struct FrontConfig {
    pub domid: u16,
    pub devid: u32,
    /// Queues to request (capped at the backend's `multi-queue-max-queues`).
    pub queues: u32,
    /// Use split event channels when the backend offers them.
    pub split_evtchn: bool,
    /// Make a control ring when the backend offers one (`feature-ctrl-ring`), as Windows
    /// PV drivers do; Linux's netfront never does (default false).
    pub ctrl_ring: bool,
    /// Write `feature-sg` = 1 (default true): without it the backend sends no packet
    /// larger than one page.
    pub sg: bool,
    /// Write `feature-gso-tcpv4` and `-tcpv6` = 1 (default true), as Linux's netfront does
    /// with scatter-gather: the backend may then send TCP frames of up to 64 KiB.
    pub gso: bool,
}

impl FrontConfig {
    pub fn new(domid: u16, devid: u32) -> FrontConfig {
        FrontConfig {
            domid,
            devid,
            queues: 1,
            split_evtchn: true,
            ctrl_ring: false,
            sg: true,
            gso: true,
        }
    }
}

/// Index the rings of the next queues start at. A real frontend starts at 0; tests start
/// near `u32::MAX` to exercise index wrap in the backend.
static RING_START: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sets the ring start index for netfronts set up after this call in this process.
pub fn set_ring_start_for_tests(start: u32) {
    RING_START.store(start, std::sync::atomic::Ordering::Relaxed);
}

/// Features the backend advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendFeatures {
    pub max_queues: u32,
    pub split_evtchn: bool,
    pub sg: bool,
    pub gso_tcpv4: bool,
    pub gso_tcpv6: bool,
    pub ctrl_ring: bool,
}

/// Metadata of a packet to send.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxMeta {
    pub csum_blank: bool,
    pub data_validated: bool,
    /// (MSS, XEN_NETIF_GSO_TYPE_TCPV4/6)
    pub gso: Option<(u16, u8)>,
    /// Bytes per data slot (<= 4096); the first slot also starts at this page offset mod.
    pub slot_size: usize,
}

impl TxMeta {
    /// Bytes per data slot.
    fn slot_len(&self) -> usize {
        if self.slot_size == 0 {
            PAGE
        } else {
            self.slot_size.min(PAGE)
        }
    }

    /// NETTXF flags of the first slot (besides MORE_DATA).
    fn first_flags(&self) -> u16 {
        let mut f = 0;
        if self.csum_blank {
            f |= NETTXF_CSUM_BLANK;
        }
        if self.data_validated {
            f |= dataplane::netif::NETTXF_DATA_VALIDATED;
        }
        if self.gso.is_some() {
            f |= NETTXF_EXTRA_INFO;
        }
        f
    }
}

/// A received packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    pub data: Vec<u8>,
    /// First response's NETRXF flags.
    pub flags: u16,
    /// GSO extra, if the backend sent one: (size, type).
    pub gso: Option<(u16, u8)>,
    /// Hash extra, if the backend sent one: (hash type number, value).
    pub hash: Option<(u8, u32)>,
    /// Slots the packet used (data + extras).
    pub slots: usize,
}

/// Guest-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    /// TX responses whose id had no request outstanding: a response answered twice, or
    /// one for a request never posted (a backend bug; a restarted backend must not).
    pub tx_unexpected: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_errors: u64,
}

/// The guest's own memory: frames and grant references handed out first-come.
struct GuestAlloc {
    mem: Arc<DomainMem>,
    next_frame: u32,
    free_frames: Vec<u32>,
    next_gref: u32,
    free_grefs: Vec<u32>,
}

impl GuestAlloc {
    fn frame(&mut self) -> Result<u32, FrontError> {
        if let Some(f) = self.free_frames.pop() {
            return Ok(f);
        }
        if self.next_frame >= self.mem.frames() {
            return Err(FrontError::NoResources);
        }
        self.next_frame += 1;
        Ok(self.next_frame - 1)
    }
    fn grant(&mut self, frame: u32, to: u16, readonly: bool) -> Result<u32, FrontError> {
        let g = match self.free_grefs.pop() {
            Some(g) => g,
            None => {
                if self.next_gref >= self.mem.grant_entries() {
                    return Err(FrontError::NoResources);
                }
                self.next_gref += 1;
                self.next_gref - 1
            }
        };
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        self.mem.set_entry(g, flags, to, frame)?;
        Ok(g)
    }
    /// Grant references still available.
    fn grants_available(&self) -> usize {
        self.free_grefs.len() + self.mem.grant_entries().saturating_sub(self.next_gref) as usize
    }
    fn end_grant(&mut self, g: u32) {
        let _ = self.mem.set_entry(g, 0, 0, 0);
        self.free_grefs.push(g);
    }
}

struct TxBuf {
    frame: u32,
    gref: Option<u32>,
    /// What the page holds, for [`Netfront::send_burst`]: (generation of the burst frame
    /// << 16) | (slot index + 1); 0 = unknown (written by [`Netfront::send`]).
    tag: u64,
}

/// What [`Netfront::sink_rx_peek`] hands each packet's first bytes to.
type Peek<'a> = &'a mut dyn FnMut(&[u8]);

/// [`Netfront::sink_rx`]'s reassembly state across calls (a packet may straddle two).
#[derive(Clone, Copy, Debug, Default)]
struct SinkState {
    /// Inside a packet (its first slot seen).
    open: bool,
    /// Extra-info slots still to come (the previous slot had the EXTRA_INFO/MORE flag).
    extras: bool,
    /// Data slots still to come (the last data slot had NETRXF_MORE_DATA).
    more_data: bool,
    bytes: u64,
    err: bool,
}

/// The frame [`Netfront::send_burst`] last wrote, so buffers holding it are not rewritten.
#[derive(Debug, Default)]
struct BurstFrame {
    data: Vec<u8>,
    slot: usize,
    /// Generation, bumped whenever the frame or the slot size changes (starts at 1).
    gen: u64,
}

/// One queue's rings, channels and buffers.
pub struct FrontQueue {
    pub tx: FrontRing<TxRing>,
    pub rx: FrontRing<RxRing>,
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn_tx: u32,
    pub evtchn_rx: u32,
    tx_bufs: Vec<TxBuf>,
    tx_free_ids: Vec<u16>,
    rx_frames: Vec<u32>,
    rx_grefs: Vec<u32>,
    rx_partial: Vec<RxResponse>,
    rx_posted: u32,
    sink: SinkState,
    burst: BurstFrame,
}

/// A connected (or connecting) netfront.
pub struct Netfront {
    pub cfg: FrontConfig,
    xs: XenStore,
    alloc: GuestAlloc,
    ev: SimEvtchn,
    pub fe_path: String,
    pub be_path: String,
    pub backend_dom: u16,
    pub features: BackendFeatures,
    pub queues: Vec<FrontQueue>,
    pub stats: FrontStats,
    /// The control ring, when made.
    ctrl: Option<FrontCtrl>,
}

/// The frontend's side of a control ring.
struct FrontCtrl {
    ring: FrontRing<CtrlRing>,
    ring_ref: u32,
    evtchn: u32,
    next_id: u16,
}

fn ring_page(mem: &DomainMem, frame: u32) -> SharedPage {
    let p = mem.frame_ptr(frame).expect("frame allocated inside RAM");
    // SAFETY: the page lies in the guest's RAM mapping, kept alive by the Arc<DomainMem>
    // the Netfront holds for as long as its rings exist (rings are dropped with it).
    unsafe { SharedPage::from_raw(NonNull::new(p).expect("non-null"), None) }
}

/// Extra slots after the first response (chained with the MORE flag).
fn extra_slots(parts: &[RxResponse]) -> usize {
    if parts[0].flags & NETRXF_EXTRA_INFO == 0 {
        return 0;
    }
    let mut n = 0;
    for p in &parts[1..] {
        n += 1;
        if !ExtraInfo::from_rx_slot(p).more() {
            break;
        }
    }
    n
}

/// Whether the responses so far form a whole packet (Linux `xennet_get_responses`): the
/// first, its extras while `MORE`, then data slots while `more_data`.
fn packet_complete(parts: &[RxResponse]) -> bool {
    // A legacy GSO prefix slot comes before the packet proper.
    if parts[0].flags & NETRXF_GSO_PREFIX != 0 {
        return parts.len() > 1 && packet_complete(&parts[1..]);
    }
    let first = parts[0];
    let mut i = 1;
    if first.flags & NETRXF_EXTRA_INFO != 0 {
        loop {
            let Some(p) = parts.get(i) else {
                return false;
            };
            i += 1;
            if !ExtraInfo::from_rx_slot(p).more() {
                break;
            }
        }
    }
    let mut last = first;
    while last.flags & NETRXF_MORE_DATA != 0 {
        let Some(p) = parts.get(i) else {
            return false;
        };
        last = *p;
        i += 1;
    }
    true
}

impl Netfront {
    /// Attaches to vif `devid` of guest `domid` on the sim host at `layout`, using the
    /// xenstore connection `xs`. Does not connect yet: see [`Netfront::connect`].
    pub fn new(layout: &SimLayout, xs: XenStore, cfg: FrontConfig) -> Result<Netfront, FrontError> {
        let mem = Arc::new(DomainMem::open(layout, cfg.domid)?);
        let ev = SimEvtchn::new(layout.clone(), cfg.domid)?;
        let fe_path = format!("/local/domain/{}/device/vif/{}", cfg.domid, cfg.devid);
        let be_path = xs
            .read(Tx::NONE, &format!("{fe_path}/backend"))?
            .ok_or_else(|| FrontError::Backend(format!("{fe_path}/backend missing")))?;
        let backend_dom = xs
            .read(Tx::NONE, &format!("{fe_path}/backend-id"))?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Netfront {
            cfg,
            xs,
            alloc: GuestAlloc {
                mem,
                next_frame: 0,
                free_frames: Vec::new(),
                next_gref: 8, // Linux keeps the first grant references for itself
                free_grefs: Vec::new(),
            },
            ev,
            fe_path,
            be_path,
            backend_dom,
            features: BackendFeatures::default(),
            queues: Vec::new(),
            stats: FrontStats::default(),
            ctrl: None,
        })
    }

    pub fn xenstore(&self) -> &XenStore {
        &self.xs
    }

    fn be_read(&self, key: &str) -> Result<Option<String>, FrontError> {
        Ok(self.xs.read(Tx::NONE, &format!("{}/{key}", self.be_path))?)
    }

    fn be_flag(&self, key: &str) -> Result<bool, FrontError> {
        Ok(self.be_read(key)?.as_deref() == Some("1"))
    }

    /// The backend's xenbus state (0 when absent).
    pub fn backend_state(&self) -> Result<u32, FrontError> {
        Ok(self
            .be_read("state")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_state(&self, state: u32) -> Result<(), FrontError> {
        self.xs.write(
            Tx::NONE,
            &format!("{}/state", self.fe_path),
            &state.to_string(),
        )?;
        Ok(())
    }

    /// Waits until the backend reaches `state` (polling xenstore; bounded).
    pub fn wait_backend_state(&self, state: u32, timeout: Duration) -> Result<(), FrontError> {
        let t = Instant::now();
        loop {
            if self.backend_state()? == state {
                return Ok(());
            }
            if t.elapsed() > timeout {
                return Err(FrontError::Timeout(format!(
                    "backend state {state} (is {})",
                    self.backend_state()?
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The whole handshake up to Connected, with RX buffers posted. Waits (bounded) for the
    /// backend's InitWait first.
    pub fn connect(&mut self, timeout: Duration) -> Result<(), FrontError> {
        self.wait_backend_state(2, timeout)?;
        if !self.be_flag("feature-rx-copy")? {
            return Err(FrontError::Backend("backend lacks feature-rx-copy".into()));
        }
        self.features = BackendFeatures {
            max_queues: self
                .be_read("multi-queue-max-queues")?
                .and_then(|s| s.parse().ok())
                .unwrap_or(1)
                .max(1),
            split_evtchn: self.be_flag("feature-split-event-channels")?,
            sg: self.be_flag("feature-sg")?,
            gso_tcpv4: self.be_flag("feature-gso-tcpv4")?,
            gso_tcpv6: self.be_flag("feature-gso-tcpv6")?,
            ctrl_ring: self.be_flag("feature-ctrl-ring")?,
        };
        if self.cfg.ctrl_ring && self.features.ctrl_ring {
            let be = self.backend_dom;
            let frame = self.alloc.frame()?;
            let ring = FrontRing::<CtrlRing>::init(ring_page(&self.alloc.mem, frame));
            let ring_ref = self.alloc.grant(frame, be, false)?;
            let evtchn = self.ev.alloc_unbound(be)?;
            self.ctrl = Some(FrontCtrl {
                ring,
                ring_ref,
                evtchn,
                next_id: 0,
            });
        }
        let nq = self.cfg.queues.clamp(1, self.features.max_queues);
        let split = self.cfg.split_evtchn && self.features.split_evtchn;
        for _ in 0..nq {
            let q = self.setup_queue(split)?;
            self.queues.push(q);
        }
        self.write_keys(split)?;
        self.set_state(4)?;
        for i in 0..self.queues.len() {
            self.post_rx(i)?;
        }
        Ok(())
    }

    fn setup_queue(&mut self, split: bool) -> Result<FrontQueue, FrontError> {
        let be = self.backend_dom;
        let tx_frame = self.alloc.frame()?;
        let rx_frame = self.alloc.frame()?;
        let start = RING_START.load(std::sync::atomic::Ordering::Relaxed);
        let tx = FrontRing::<TxRing>::init_at(ring_page(&self.alloc.mem, tx_frame), start);
        let rx = FrontRing::<RxRing>::init_at(ring_page(&self.alloc.mem, rx_frame), start);
        let tx_ring_ref = self.alloc.grant(tx_frame, be, false)?;
        let rx_ring_ref = self.alloc.grant(rx_frame, be, false)?;
        let evtchn_tx = self.ev.alloc_unbound(be)?;
        let evtchn_rx = if split {
            self.ev.alloc_unbound(be)?
        } else {
            evtchn_tx
        };
        let mut tx_bufs = Vec::with_capacity(TX_RING_SIZE);
        for _ in 0..TX_RING_SIZE {
            tx_bufs.push(TxBuf {
                frame: self.alloc.frame()?,
                gref: None,
                tag: 0,
            });
        }
        let mut rx_frames = Vec::with_capacity(RX_RING_SIZE);
        let mut rx_grefs = Vec::with_capacity(RX_RING_SIZE);
        for _ in 0..RX_RING_SIZE {
            let f = self.alloc.frame()?;
            rx_grefs.push(self.alloc.grant(f, be, false)?);
            rx_frames.push(f);
        }
        Ok(FrontQueue {
            tx,
            rx,
            tx_ring_ref,
            rx_ring_ref,
            evtchn_tx,
            evtchn_rx,
            tx_bufs,
            tx_free_ids: (0..TX_RING_SIZE as u16).rev().collect(),
            rx_frames,
            rx_grefs,
            rx_partial: Vec::new(),
            rx_posted: 0,
            sink: SinkState::default(),
            burst: BurstFrame::default(),
        })
    }

    fn write_keys(&self, split: bool) -> Result<(), FrontError> {
        let xs = &self.xs;
        let fe = &self.fe_path;
        let multi = self.queues.len() > 1;
        xs.transaction(20, |t| {
            if multi {
                xs.write(
                    t,
                    &format!("{fe}/multi-queue-num-queues"),
                    &self.queues.len().to_string(),
                )?;
            }
            for (i, q) in self.queues.iter().enumerate() {
                let base = if multi {
                    format!("{fe}/queue-{i}")
                } else {
                    fe.clone()
                };
                xs.write(
                    t,
                    &format!("{base}/tx-ring-ref"),
                    &q.tx_ring_ref.to_string(),
                )?;
                xs.write(
                    t,
                    &format!("{base}/rx-ring-ref"),
                    &q.rx_ring_ref.to_string(),
                )?;
                if split {
                    xs.write(
                        t,
                        &format!("{base}/event-channel-tx"),
                        &q.evtchn_tx.to_string(),
                    )?;
                    xs.write(
                        t,
                        &format!("{base}/event-channel-rx"),
                        &q.evtchn_rx.to_string(),
                    )?;
                } else {
                    xs.write(
                        t,
                        &format!("{base}/event-channel"),
                        &q.evtchn_tx.to_string(),
                    )?;
                }
            }
            if let Some(c) = &self.ctrl {
                xs.write(t, &format!("{fe}/ctrl-ring-ref"), &c.ring_ref.to_string())?;
                xs.write(
                    t,
                    &format!("{fe}/event-channel-ctrl"),
                    &c.evtchn.to_string(),
                )?;
            }
            let sg = if self.cfg.sg { "1" } else { "0" };
            let gso = if self.cfg.gso { "1" } else { "0" };
            for (k, v) in [
                ("request-rx-copy", "1"),
                ("feature-rx-notify", "1"),
                ("feature-sg", sg),
                ("feature-gso-tcpv4", gso),
                ("feature-gso-tcpv6", gso),
                ("feature-ipv6-csum-offload", "1"),
            ] {
                xs.write(t, &format!("{fe}/{k}"), v)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Posts every free RX buffer of queue `qi`.
    pub fn post_rx(&mut self, qi: usize) -> Result<(), FrontError> {
        let q = &mut self.queues[qi];
        let mut pushed = false;
        while q.rx_posted < RX_RING_SIZE as u32 && q.rx.free_requests() > 0 {
            let idx = q.rx.req_prod_pvt() as usize % RX_RING_SIZE;
            q.rx.push_request(RxRequest {
                id: idx as u16,
                pad: 0,
                gref: q.rx_grefs[idx],
            })?;
            q.rx_posted += 1;
            pushed = true;
        }
        if pushed && q.rx.push_requests_and_check_notify() {
            self.ev.notify(q.evtchn_rx)?;
        }
        Ok(())
    }

    /// Queues a packet on queue `qi`'s TX ring (copying it into granted buffers, one per
    /// slot) and notifies when the ring asks. Err(NoResources) when the ring is full.
    pub fn send(&mut self, qi: usize, data: &[u8], meta: TxMeta) -> Result<(), FrontError> {
        self.reap_tx(qi)?;
        let nslots = data.len().div_ceil(meta.slot_len()).max(1);
        if data.len() > 0xFFFF {
            return Err(FrontError::TooBig(data.len(), nslots));
        }
        let extra = usize::from(meta.gso.is_some());
        let q = &self.queues[qi];
        if q.tx.free_requests() < (nslots + extra) as u32 || q.tx_free_ids.len() < nslots {
            return Err(FrontError::NoResources);
        }
        self.queue_packet(qi, data, meta, None)?;
        let q = &mut self.queues[qi];
        if q.tx.push_requests_and_check_notify() {
            self.ev.notify(q.evtchn_tx)?;
        }
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += data.len() as u64;
        Ok(())
    }

    /// Writes the requests of one packet (its slots, granted, and the GSO extra after the
    /// first) on queue `qi`'s TX ring, not yet pushed; the caller checked the ring and the
    /// free ids. With `gen`, a buffer page is rewritten only when it does not already hold
    /// this slot of frame generation `gen`; without, always.
    fn queue_packet(
        &mut self,
        qi: usize,
        frame: &[u8],
        meta: TxMeta,
        gen: Option<u64>,
    ) -> Result<(), FrontError> {
        let be = self.backend_dom;
        let slot = meta.slot_len();
        let len = frame.len();
        let q = &mut self.queues[qi];
        // A zero-length packet still takes one slot.
        for i in 0..len.div_ceil(slot).max(1) {
            let chunk = &frame[(i * slot).min(len)..((i + 1) * slot).min(len)];
            let id = q.tx_free_ids.pop().expect("checked by the caller");
            let buf = &mut q.tx_bufs[usize::from(id)];
            let tag = gen.map_or(0, |g| (g << 16) | (i as u64 + 1));
            if gen.is_none() || buf.tag != tag {
                self.alloc.mem.write_frame(buf.frame, 0, chunk)?;
                buf.tag = tag;
            }
            let gref = self.alloc.grant(buf.frame, be, true)?;
            buf.gref = Some(gref);
            let mut flags = if (i + 1) * slot >= len {
                0
            } else {
                NETTXF_MORE_DATA
            };
            let size = if i == 0 {
                flags |= meta.first_flags();
                len
            } else {
                chunk.len()
            } as u16;
            q.tx.push_request(TxRequest {
                gref,
                offset: 0,
                flags,
                id,
                size,
            })?;
            if i == 0 {
                if let Some((mss, ty)) = meta.gso {
                    q.tx.push_request(ExtraInfo::gso(mss, ty, false).to_tx_slot())?;
                }
            }
        }
        Ok(())
    }

    /// Generator fast path: queues up to `max` copies of `frame` on queue `qi` (each as
    /// [`Netfront::send`] would send it with `meta`) and makes them visible with ONE
    /// `push_requests_and_check_notify`, notifying if the ring asks. TX responses are
    /// reaped first, without allocating. Each slot is granted when queued and its grant
    /// ended when its response comes back (a grant-entry store per slot, as Linux netfront
    /// does). A buffer page is written only when it does not already hold this slot of this
    /// frame (a tag per buffer), so re-sending the same frame costs no copy in the guest.
    /// Returns the packets queued: fewer than `max` when the ring, the buffers or the grant
    /// entries run out (0 when full).
    pub fn send_burst(
        &mut self,
        qi: usize,
        frame: &[u8],
        meta: TxMeta,
        max: usize,
    ) -> Result<usize, FrontError> {
        self.reap_tx_count(qi)?;
        let slot = meta.slot_len();
        let len = frame.len();
        let nslots = len.div_ceil(slot).max(1);
        if len > 0xFFFF {
            return Err(FrontError::TooBig(len, nslots));
        }
        let extra = usize::from(meta.gso.is_some());
        let q = &mut self.queues[qi];
        if q.burst.gen == 0 || q.burst.slot != slot || q.burst.data != frame {
            q.burst.data.clear();
            q.burst.data.extend_from_slice(frame);
            q.burst.slot = slot;
            q.burst.gen += 1;
        }
        let gen = q.burst.gen;
        let mut sent = 0;
        while sent < max
            && self.queues[qi].tx.free_requests() as usize >= nslots + extra
            && self.queues[qi].tx_free_ids.len() >= nslots
            && self.alloc.grants_available() >= nslots
        {
            self.queue_packet(qi, frame, meta, Some(gen))?;
            sent += 1;
        }
        if sent > 0 {
            let q = &mut self.queues[qi];
            if q.tx.push_requests_and_check_notify() {
                self.ev.notify(q.evtchn_tx)?;
            }
            self.stats.tx_packets += sent as u64;
            self.stats.tx_bytes += (sent * len) as u64;
        }
        Ok(sent)
    }

    /// As [`Netfront::send_burst`] for a stream whose frames differ: `next` rewrites
    /// `frame` (sequence numbers, checksums) before each packet is queued.
    pub fn send_stream(
        &mut self,
        qi: usize,
        frame: &mut [u8],
        meta: TxMeta,
        max: usize,
        mut next: impl FnMut(&mut [u8]),
    ) -> Result<usize, FrontError> {
        self.reap_tx_count(qi)?;
        let len = frame.len();
        let nslots = len.div_ceil(meta.slot_len()).max(1);
        if len > 0xFFFF {
            return Err(FrontError::TooBig(len, nslots));
        }
        let extra = usize::from(meta.gso.is_some());
        let mut sent = 0;
        while sent < max
            && self.queues[qi].tx.free_requests() as usize >= nslots + extra
            && self.queues[qi].tx_free_ids.len() >= nslots
            && self.alloc.grants_available() >= nslots
        {
            next(frame);
            self.queue_packet(qi, frame, meta, None)?;
            sent += 1;
        }
        if sent > 0 {
            let q = &mut self.queues[qi];
            if q.tx.push_requests_and_check_notify() {
                self.ev.notify(q.evtchn_tx)?;
            }
            self.stats.tx_packets += sent as u64;
            self.stats.tx_bytes += (sent * len) as u64;
        }
        Ok(sent)
    }

    /// Collects TX responses of queue `qi` like [`Netfront::reap_tx`] without recording
    /// them; returns how many there were.
    pub fn reap_tx_count(&mut self, qi: usize) -> Result<usize, FrontError> {
        self.reap_tx_with(qi, |_, _| {})
    }

    /// Sink fast path: consumes queue `qi`'s RX responses, reassembling multi-slot packets
    /// by their flags (extra-info slots and a legacy GSO prefix skipped), counting packets
    /// and bytes without copying data out, then re-posts the buffers with one push.
    /// Returns (packets, bytes, errors) of the packets completed in this call. A packet
    /// may straddle two calls. Do not mix with [`Netfront::poll_rx`] on the same queue.
    pub fn sink_rx(&mut self, qi: usize) -> Result<(u64, u64, u64), FrontError> {
        self.sink_rx_inner(qi, None)
    }

    /// As [`Netfront::sink_rx`], and hands `peek` the first bytes (up to 64) of each
    /// completed, error-free packet's first data slot (checking a sequence field, say).
    pub fn sink_rx_peek(
        &mut self,
        qi: usize,
        peek: &mut dyn FnMut(&[u8]),
    ) -> Result<(u64, u64, u64), FrontError> {
        self.sink_rx_inner(qi, Some(peek))
    }

    fn sink_rx_inner(
        &mut self,
        qi: usize,
        mut peek: Option<Peek<'_>>,
    ) -> Result<(u64, u64, u64), FrontError> {
        const PEEK: usize = 64;
        let (mut pkts, mut bytes, mut errs) = (0u64, 0u64, 0u64);
        let mut head = [0u8; PEEK];
        let mut head_len = 0;
        let q = &mut self.queues[qi];
        loop {
            let pos = q.rx.rsp_cons();
            let Some(r) = q.rx.next_response()? else {
                break;
            };
            q.rx_posted = q.rx_posted.saturating_sub(1);
            let st = &mut q.sink;
            let data_slot = if !st.open {
                if r.flags & NETRXF_GSO_PREFIX != 0 {
                    // A legacy prefix slot (GSO size in `offset`, no data): the packet
                    // proper starts with the next slot.
                    continue;
                }
                *st = SinkState {
                    open: true,
                    extras: r.flags & NETRXF_EXTRA_INFO != 0,
                    more_data: r.flags & NETRXF_MORE_DATA != 0,
                    bytes: 0,
                    err: false,
                };
                head_len = 0;
                true
            } else if st.extras {
                st.extras = ExtraInfo::from_rx_slot(&r).more();
                false
            } else {
                st.more_data = r.flags & NETRXF_MORE_DATA != 0;
                true
            };
            if data_slot {
                let off = usize::from(r.offset);
                if r.status < 0 || off + r.status as usize > PAGE {
                    st.err = true;
                } else {
                    let n = r.status as usize;
                    st.bytes += n as u64;
                    if peek.is_some() && head_len == 0 && n > 0 {
                        // The packet's first data slot with data.
                        let frame = q.rx_frames[pos as usize % RX_RING_SIZE];
                        let p = self.alloc.mem.frame_ptr(frame).expect("RX frames in RAM");
                        head_len = n.min(PEEK);
                        // SAFETY: off + n <= PAGE (checked above), so the bytes lie in
                        // this RAM page, which the backend handed back with the response
                        // and no longer writes.
                        unsafe {
                            std::ptr::copy_nonoverlapping(p.add(off), head.as_mut_ptr(), head_len)
                        };
                    }
                }
            }
            if !st.extras && !st.more_data {
                st.open = false;
                if st.err {
                    errs += 1;
                } else {
                    pkts += 1;
                    bytes += st.bytes;
                    if let Some(f) = peek.as_mut() {
                        f(&head[..head_len]);
                    }
                }
            }
        }
        self.stats.rx_packets += pkts;
        self.stats.rx_bytes += bytes;
        self.stats.rx_errors += errs;
        self.post_rx(qi)?;
        Ok((pkts, bytes, errs))
    }

    /// Pushes raw requests exactly as given (for tests of a backend's input checks); the
    /// caller owns the consequences.
    pub fn send_raw(&mut self, qi: usize, reqs: &[TxRequest]) -> Result<(), FrontError> {
        let q = &mut self.queues[qi];
        for r in reqs {
            q.tx.push_request(*r)?;
        }
        if q.tx.push_requests_and_check_notify() {
            self.ev.notify(q.evtchn_tx)?;
        }
        Ok(())
    }

    /// Overwrites the TX ring's shared `req_prod` (a hostile frontend's trick, for tests).
    pub fn poke_tx_req_prod(&mut self, qi: usize, v: u32) {
        let p = self.queues[qi].tx.page().as_ptr() as *mut u32;
        // SAFETY: offset 0 of the mapped ring page is req_prod (4-aligned, in the page).
        unsafe { std::ptr::write_volatile(p, v) };
    }

    /// Writes the control ring's shared `req_prod` directly (a hostile frontend's move);
    /// false without a control ring.
    pub fn poke_ctrl_req_prod(&mut self, v: u32) -> bool {
        let Some(c) = self.ctrl.as_ref() else {
            return false;
        };
        let p = c.ring.page().as_ptr() as *mut u32;
        // SAFETY: offset 0 of the mapped ring page is req_prod (4-aligned, in the page).
        unsafe { std::ptr::write_volatile(p, v) };
        true
    }

    /// Grants a guest page holding `data` read-only to the backend (for raw requests).
    pub fn grant_data(&mut self, data: &[u8]) -> Result<u32, FrontError> {
        let f = self.alloc.frame()?;
        self.alloc.mem.write_frame(f, 0, data)?;
        self.alloc.grant(f, self.backend_dom, true)
    }

    /// Revokes a grant (the guest ending access).
    pub fn revoke(&mut self, gref: u32) {
        self.alloc.end_grant(gref);
    }

    /// Collects TX responses of queue `qi`: frees buffers and grants; counts errors.
    /// Returns the responses seen (id, status), NULL ones included.
    pub fn reap_tx(&mut self, qi: usize) -> Result<Vec<(u16, i16)>, FrontError> {
        let mut seen = Vec::new();
        self.reap_tx_with(qi, |id, status| seen.push((id, status)))?;
        Ok(seen)
    }

    /// The reaping itself: `seen(id, status)` for every response; returns their number.
    fn reap_tx_with(
        &mut self,
        qi: usize,
        mut seen: impl FnMut(u16, i16),
    ) -> Result<usize, FrontError> {
        let mut n = 0;
        let q = &mut self.queues[qi];
        while let Some(r) = q.tx.next_response()? {
            n += 1;
            seen(r.id, r.status);
            if r.status == XEN_NETIF_RSP_NULL {
                continue;
            }
            if r.status < 0 {
                self.stats.tx_errors += 1;
            }
            match q
                .tx_bufs
                .get_mut(usize::from(r.id))
                .and_then(|b| b.gref.take())
            {
                Some(g) => {
                    self.alloc.end_grant(g);
                    q.tx_free_ids.push(r.id);
                }
                None => self.stats.tx_unexpected += 1,
            }
        }
        Ok(n)
    }

    /// Collects RX responses like [`Netfront::poll_rx`] but posts no buffers back (a guest
    /// that stopped refilling its RX ring, for tests of the backend's stall handling).
    pub fn poll_rx_no_refill(&mut self, qi: usize) -> Result<Vec<RxPacket>, FrontError> {
        self.collect_rx(qi)
    }

    /// Collects RX responses of queue `qi` into packets (reassembling multi-slot ones and
    /// their GSO extras), re-posting the buffers. Returns completed packets.
    pub fn poll_rx(&mut self, qi: usize) -> Result<Vec<RxPacket>, FrontError> {
        let out = self.collect_rx(qi)?;
        self.post_rx(qi)?;
        Ok(out)
    }

    fn collect_rx(&mut self, qi: usize) -> Result<Vec<RxPacket>, FrontError> {
        let mut out = Vec::new();
        loop {
            let q = &mut self.queues[qi];
            let Some(r) = q.rx.next_response()? else {
                break;
            };
            q.rx_posted -= 1;
            q.rx_partial.push(r);
            if !packet_complete(&q.rx_partial) {
                continue;
            }
            let parts = std::mem::take(&mut q.rx_partial);
            let base = q.rx.rsp_cons().wrapping_sub(parts.len() as u32);
            let mut data = Vec::new();
            let mut gso = None;
            let mut hash = None;
            let mut err = false;
            // A legacy prefix slot carries the GSO size in `offset` and no data.
            let skip = usize::from(parts[0].flags & NETRXF_GSO_PREFIX != 0);
            if skip == 1 {
                gso = Some((parts[0].offset, dataplane::netif::XEN_NETIF_GSO_TYPE_TCPV4));
            }
            let n_extras = extra_slots(&parts[skip..]);
            for (k, p) in parts.iter().enumerate().skip(skip) {
                let slot = base.wrapping_add(k as u32) as usize % RX_RING_SIZE;
                if (skip + 1..=skip + n_extras).contains(&k) {
                    let e = ExtraInfo::from_rx_slot(p);
                    if e.ty == XEN_NETIF_EXTRA_TYPE_GSO {
                        let g = e.as_gso();
                        gso = Some((g.size, g.gso_type));
                    } else if e.ty == XEN_NETIF_EXTRA_TYPE_HASH {
                        let h = e.as_hash();
                        hash = Some((h.hash_type, u32::from_le_bytes(h.value)));
                    }
                    continue;
                }
                if p.status < 0 {
                    err = true;
                    continue;
                }
                let len = p.status as usize;
                let off = usize::from(p.offset);
                if off + len > PAGE {
                    err = true;
                    continue;
                }
                data.extend_from_slice(&self.alloc.mem.read_frame(q.rx_frames[slot], off, len)?);
            }
            if err {
                self.stats.rx_errors += 1;
            } else {
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += data.len() as u64;
                out.push(RxPacket {
                    data,
                    flags: parts[skip].flags,
                    gso,
                    hash,
                    slots: parts.len(),
                });
            }
        }
        Ok(out)
    }

    /// Waits (bounded) for an event on any of this guest's channels.
    pub fn wait_event(&self, timeout: Duration) {
        self.ev.wait(timeout);
        for q in &self.queues {
            self.ev.take_pending(q.evtchn_tx);
            self.ev.take_pending(q.evtchn_rx);
        }
    }

    /// Whether the control ring was made (the backend offered it and the config asked).
    pub fn has_ctrl_ring(&self) -> bool {
        self.ctrl.is_some()
    }

    /// Sends one control request and waits (bounded) for its answer: (status, data).
    /// Requests go one at a time, as Windows' xenvif controller sends them.
    pub fn ctrl_request(
        &mut self,
        ty: u16,
        data: [u32; 3],
        timeout: Duration,
    ) -> Result<(u32, u32), FrontError> {
        let c = self
            .ctrl
            .as_mut()
            .ok_or_else(|| FrontError::Backend("no control ring".into()))?;
        let id = c.next_id;
        c.next_id = c.next_id.wrapping_add(1);
        c.ring.push_request(CtrlRequest { id, ty, data })?;
        if c.ring.push_requests_and_check_notify() {
            self.ev.notify(c.evtchn)?;
        }
        let t = Instant::now();
        loop {
            let c = self.ctrl.as_mut().expect("checked above");
            if let Some(r) = c.ring.next_response()? {
                if (r.id, r.ty) != (id, ty) {
                    return Err(FrontError::Backend(format!(
                        "control response {}/{} for request {id}/{ty}",
                        r.id, r.ty
                    )));
                }
                return Ok((r.status, r.data));
            }
            if t.elapsed() > timeout {
                return Err(FrontError::Timeout(format!(
                    "control response to type {ty}"
                )));
            }
            self.ev.wait(Duration::from_millis(5));
            self.ev.take_pending(c.evtchn);
        }
    }

    /// Configures Toeplitz hashing as a Windows frontend does: algorithm, hash types,
    /// key (granted read-only), then the mapping table (size, entries). Every request must
    /// succeed.
    pub fn set_toeplitz(
        &mut self,
        key: &[u8],
        flags: u32,
        mapping: &[u32],
    ) -> Result<(), FrontError> {
        use dataplane::netif::{
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
        };
        let t = Duration::from_secs(5);
        let key_ref = self.grant_data(key)?;
        let mut table = Vec::with_capacity(mapping.len() * 4);
        for e in mapping {
            table.extend_from_slice(&e.to_le_bytes());
        }
        let map_ref = self.grant_data(&table)?;
        let n = mapping.len() as u32;
        let steps: [(u16, [u32; 3]); 5] = [
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
                [XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, 0, 0],
            ),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [flags, 0, 0]),
            (
                XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
                [key_ref, key.len() as u32, 0],
            ),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [n, 0, 0]),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [map_ref, n, 0]),
        ];
        let mut result = Ok(());
        for (ty, data) in steps {
            if ty == XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING && n == 0 {
                continue;
            }
            let (status, _) = self.ctrl_request(ty, data, t)?;
            if status != XEN_NETIF_CTRL_STATUS_SUCCESS {
                result = Err(FrontError::Backend(format!(
                    "control request type {ty} answered status {status}"
                )));
                break;
            }
        }
        self.revoke(key_ref);
        self.revoke(map_ref);
        result
    }

    /// Frontend side of a close (Linux `xenbus_frontend_closed`): state Closing then
    /// Closed, then rings, channels and grants are released.
    pub fn close(&mut self) -> Result<(), FrontError> {
        self.set_state(5)?;
        self.set_state(6)?;
        let mut ev = self.ev.clone();
        if let Some(c) = self.ctrl.take() {
            let _ = ev.unbind(c.evtchn);
            self.alloc.end_grant(c.ring_ref);
        }
        for q in self.queues.drain(..) {
            let _ = ev.unbind(q.evtchn_tx);
            if q.evtchn_rx != q.evtchn_tx {
                let _ = ev.unbind(q.evtchn_rx);
            }
            for g in [q.tx_ring_ref, q.rx_ring_ref].into_iter().chain(q.rx_grefs) {
                self.alloc.end_grant(g);
            }
            for b in q.tx_bufs {
                if let Some(g) = b.gref {
                    self.alloc.end_grant(g);
                }
            }
        }
        Ok(())
    }
}

/// A netfront as a [`crate::stack::FrameLink`]: frames go out on queue `queue` as single-
/// or multi-slot packets without offloads; received packets come back whole from every
/// queue (the backend picks a multi-queue vif's queue by flow).
pub struct NetfrontLink {
    pub nf: Netfront,
    pub queue: usize,
    rx: std::collections::VecDeque<Vec<u8>>,
    /// Received packets that came with a GSO extra (coalesced or TSO frames).
    pub rx_gso_frames: u64,
    /// Largest frame received.
    pub rx_max_frame: usize,
}

impl NetfrontLink {
    pub fn new(nf: Netfront, queue: usize) -> Self {
        NetfrontLink {
            nf,
            queue,
            rx: std::collections::VecDeque::new(),
            rx_gso_frames: 0,
            rx_max_frame: 0,
        }
    }
}

impl crate::stack::FrameLink for NetfrontLink {
    fn recv(&mut self) -> Option<Vec<u8>> {
        if self.rx.is_empty() {
            let n = self.nf.queues.len();
            for k in 0..n {
                if let Ok(pkts) = self.nf.poll_rx((self.queue + k) % n) {
                    for mut p in pkts {
                        self.rx_gso_frames += u64::from(p.gso.is_some());
                        self.rx_max_frame = self.rx_max_frame.max(p.data.len());
                        if p.flags & dataplane::netif::NETRXF_CSUM_BLANK != 0 {
                            // As Linux's stack does with CHECKSUM_PARTIAL before it hands
                            // the frame to a layer that checks: complete the checksum from
                            // the partial (pseudo-header) sum in its field.
                            crate::pktgen::complete_partial_checksum(&mut p.data);
                        }
                        self.rx.push_back(p.data);
                    }
                }
            }
        }
        self.rx.pop_front()
    }

    fn send(&mut self, frame: &[u8]) -> bool {
        let _ = self.nf.reap_tx(self.queue);
        self.nf.send(self.queue, frame, TxMeta::default()).is_ok()
    }
}
