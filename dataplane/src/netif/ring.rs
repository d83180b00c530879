//! Xen shared rings (`xen/io/ring.h`) over a 4096-byte page shared with another party.
//!
//! This is the one module that touches shared ring memory. The other side (a guest, another
//! process, another thread) may write any bytes at any time, so:
//! - indices are read and written as atomics with the barriers ring.h prescribes;
//! - a request is copied out of its slot exactly once (a volatile read of the whole entry)
//!   and only the copy is handed out (`RING_COPY_REQUEST`, XSA-155);
//! - indices are wrapping `u32`s, and an impossible producer index is reported, never
//!   trusted (`req_prod - req_cons > size`).
//!
//! Layout: `req_prod`@0, `req_event`@4, `rsp_prod`@8, `rsp_event`@12, padding to 64, then
//! `SIZE` entries, each the size of the larger of request and response (they share a slot).
use super::abi::{
    CtrlRequest, CtrlResponse, RxRequest, RxResponse, TxRequest, TxResponse, CTRL_ENTRY_SIZE,
    CTRL_RING_SIZE, PAGE_SIZE, RING_HEADER_SIZE, RX_ENTRY_SIZE, RX_RING_SIZE, TX_ENTRY_SIZE,
    TX_RING_SIZE,
};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, fence, AtomicU32, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// Ring protocol violations by the other side.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The producer index is further ahead than the ring can hold: only a broken or
    /// hostile peer does this (fatal for the vif).
    #[error("impossible ring index: prod {prod}, cons {cons}, size {size}")]
    ImpossibleIndex { prod: u32, cons: u32, size: u32 },
    /// No free slot to place a request in.
    #[error("ring full")]
    Full,
}

/// A ring type: its request and response types and geometry.
pub trait RingKind {
    type Req: Copy;
    type Rsp: Copy;
    /// Entries in the ring (a power of two).
    const SIZE: u32;
    /// Bytes per slot (requests and responses share it).
    const ENTRY: usize;
}

/// The netif TX ring (guest -> backend packets).
pub struct TxRing;
/// The netif RX ring (backend -> guest packets).
pub struct RxRing;
/// The netif control ring.
pub struct CtrlRing;

impl RingKind for TxRing {
    type Req = TxRequest;
    type Rsp = TxResponse;
    const SIZE: u32 = TX_RING_SIZE as u32;
    const ENTRY: usize = TX_ENTRY_SIZE;
}
impl RingKind for RxRing {
    type Req = RxRequest;
    type Rsp = RxResponse;
    const SIZE: u32 = RX_RING_SIZE as u32;
    const ENTRY: usize = RX_ENTRY_SIZE;
}
impl RingKind for CtrlRing {
    type Req = CtrlRequest;
    type Rsp = CtrlResponse;
    const SIZE: u32 = CTRL_RING_SIZE as u32;
    const ENTRY: usize = CTRL_ENTRY_SIZE;
}

/// A page-aligned 4096-byte heap page, for tests and the simulated guest's own use.
#[repr(C, align(4096))]
struct PageBox([u8; PAGE_SIZE]);

/// A handle to one 4096-byte page of shared memory. Cloning shares the same page.
#[derive(Clone)]
pub struct SharedPage {
    ptr: NonNull<u8>,
    /// Keeps the memory alive when this handle owns it (heap page, or a mapping object).
    _keep: Option<Arc<dyn Send + Sync>>,
}

// SAFETY: the page is only accessed through atomics and volatile copies, which are sound
// under concurrent access from any thread; the pointer stays valid while any handle lives
// (owned) or for the lifetime promised to `from_raw`.
unsafe impl Send for SharedPage {}
// SAFETY: as above: no method hands out references into the page.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    /// A fresh zeroed page owned by the handle (and its clones).
    pub fn new_owned() -> SharedPage {
        let b: Arc<PageBox> = Arc::new(PageBox([0; PAGE_SIZE]));
        let ptr = NonNull::from(&b.0).cast::<u8>();
        SharedPage {
            ptr,
            _keep: Some(b),
        }
    }

    /// Wraps memory someone else owns, e.g. a grant mapping; `keep` (if any) is held to
    /// keep that mapping alive as long as this handle.
    ///
    /// # Safety
    /// `ptr` must be 4-byte aligned (page aligned in practice) and point to `PAGE_SIZE`
    /// bytes that stay mapped and writable while this handle or a clone exists (e.g.
    /// because `keep` owns the mapping). Other parties may write them concurrently.
    pub unsafe fn from_raw(ptr: NonNull<u8>, keep: Option<Arc<dyn Send + Sync>>) -> SharedPage {
        SharedPage { ptr, _keep: keep }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(4) && off < RING_HEADER_SIZE);
        // SAFETY: `off` is within the page, 4-aligned (page alignment >= 4); AtomicU32 has
        // the layout of u32 and atomic access is sound even if the peer writes concurrently.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    /// Copies slot `idx` (masked) out as a `T` with one volatile read.
    fn read_slot<K: RingKind, T: Copy>(&self, idx: u32) -> T {
        let off = RING_HEADER_SIZE + (idx & (K::SIZE - 1)) as usize * K::ENTRY;
        debug_assert!(std::mem::size_of::<T>() <= K::ENTRY && off + K::ENTRY <= PAGE_SIZE);
        // SAFETY: the slot lies inside the page; T is one of the netif plain-integer
        // repr(C) types (every bit pattern valid) whose alignment (<= 4) divides the slot
        // offset; a volatile read copies it even while the peer writes.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(off) as *const T) }
    }

    fn write_slot<K: RingKind, T: Copy>(&self, idx: u32, v: T) {
        let off = RING_HEADER_SIZE + (idx & (K::SIZE - 1)) as usize * K::ENTRY;
        debug_assert!(std::mem::size_of::<T>() <= K::ENTRY && off + K::ENTRY <= PAGE_SIZE);
        // SAFETY: as in read_slot; the page is writable by contract.
        unsafe { std::ptr::write_volatile(self.ptr.as_ptr().add(off) as *mut T, v) }
    }
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Whether a peer waiting for index `event` must be notified when the producer moves from
/// `old` to `new` (ring.h: `new - event < new - old`, wrapping).
pub fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Where [`BackRing::resume`] found a ring: requests `rsp_prod..req_prod` were the ones
/// not answered yet, the first `replayed` of them by the previous backend's journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub req_prod: u32,
    pub rsp_prod: u32,
    /// Responses the previous backend wrote but never published, published from its
    /// journal.
    pub replayed: u32,
    /// The frontend asked to be notified of the replayed responses.
    pub notify: bool,
}

impl ResumePoint {
    /// Requests posted and not answered when the ring was found.
    pub fn outstanding(&self) -> u32 {
        self.req_prod.wrapping_sub(self.rsp_prod)
    }
}

/// The backend's view of a ring: consumes requests, produces responses.
pub struct BackRing<K: RingKind> {
    page: SharedPage,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// `rsp_prod` as this backend last published it.
    rsp_prod_pub: u32,
    /// The producer index as read and checked by the last `begin_batch`.
    batch_prod: u32,
    /// Where every response is written first (see [`Journal`]).
    journal: Option<SharedPage>,
    _k: PhantomData<K>,
}

/// Offsets in a journal page's header (the slots follow at the ring's own offsets).
const J_MAGIC: usize = 0;
const J_TAG_LO: usize = 4;
/// `rsp_prod_pvt` after the last response written (slots below it are complete).
const J_PVT: usize = 8;
/// `rsp_prod` as last published by the backend.
const J_PUB: usize = 12;
const J_TAG_HI: usize = 16;
const JOURNAL_MAGIC: u32 = 0x4e42_4a31;

/// A page of the backend's own (a file in tmpfs, which outlives the process) where each
/// response is written before it goes into the shared ring. A response overwrites its
/// request's slot; a backend killed after writing responses and before publishing them
/// leaves slots that are neither requests nor visible responses, which a successor must
/// not read as requests (an RX GSO extra read so would name grant reference 1 or 2, the
/// guest's xenstore ring on Linux). The successor publishes those responses from the
/// journal instead: each request is answered exactly once, as the killed backend meant.
#[derive(Clone)]
pub struct Journal {
    pub page: SharedPage,
    /// What ring the journal belongs to (frontend domain and ring grant): a journal of
    /// another ring is never replayed.
    pub tag: u64,
}

impl Journal {
    fn tag_of(page: &SharedPage) -> Option<u64> {
        (page.index(J_MAGIC).load(Ordering::Acquire) == JOURNAL_MAGIC).then(|| {
            u64::from(page.index(J_TAG_LO).load(Ordering::Relaxed))
                | u64::from(page.index(J_TAG_HI).load(Ordering::Relaxed)) << 32
        })
    }

    /// Starts the journal over for a ring served from `at`.
    fn init(&self, at: u32) {
        let p = &self.page;
        p.index(J_MAGIC).store(0, Ordering::Relaxed);
        p.index(J_TAG_LO).store(self.tag as u32, Ordering::Relaxed);
        p.index(J_TAG_HI)
            .store((self.tag >> 32) as u32, Ordering::Relaxed);
        p.index(J_PVT).store(at, Ordering::Relaxed);
        p.index(J_PUB).store(at, Ordering::Relaxed);
        p.index(J_MAGIC).store(JOURNAL_MAGIC, Ordering::Release);
    }
}

impl<K: RingKind> BackRing<K> {
    /// Attaches to a ring the frontend initialised (`BACK_RING_ATTACH` at its `rsp_prod`).
    pub fn attach(page: SharedPage) -> Self {
        let start = page.index(RSP_PROD).load(Ordering::Acquire);
        BackRing {
            page,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            batch_prod: start,
            journal: None,
            _k: PhantomData,
        }
    }

    /// `attach`, writing every response to `journal` first (started over for this ring).
    pub fn attach_journaled(page: SharedPage, journal: Journal) -> Self {
        let mut r = Self::attach(page);
        journal.init(r.rsp_prod_pvt);
        r.journal = Some(journal.page);
        r
    }

    /// Attaches to a ring that a previous backend served and left without closing it (a
    /// restarted daemon): resumes at the frontend-visible `rsp_prod`. The previous
    /// backend's `req_cons` was private; resuming there answers each request the frontend
    /// has not seen answered exactly once (those consumed but unanswered are read again),
    /// never one it did not post. `req_prod` and `rsp_prod` are read once each; more than a
    /// ring apart they are impossible (a broken or hostile frontend) and refused.
    ///
    /// With the previous backend's `journal` of this ring, responses it wrote and did
    /// not publish are published first (`ResumePoint::replayed`; the frontend is due a
    /// notification when `ResumePoint::notify`), and the ring is journaled from then on.
    pub fn resume(
        page: SharedPage,
        journal: Option<Journal>,
    ) -> Result<(Self, ResumePoint), RingError> {
        let rsp_prod = page.index(RSP_PROD).load(Ordering::Acquire);
        let req_prod = page.index(REQ_PROD).load(Ordering::Acquire);
        let outstanding = req_prod.wrapping_sub(rsp_prod);
        if outstanding > K::SIZE {
            return Err(RingError::ImpossibleIndex {
                prod: req_prod,
                cons: rsp_prod,
                size: K::SIZE,
            });
        }
        let mut at = ResumePoint {
            req_prod,
            rsp_prod,
            replayed: 0,
            notify: false,
        };
        if let Some(j) = &journal {
            let p = &j.page;
            let pvt = p.index(J_PVT).load(Ordering::Acquire);
            let unpublished = pvt.wrapping_sub(rsp_prod);
            // Only a journal of this very ring, last published exactly where the ring's
            // rsp_prod is, and with no more unpublished responses than requests posted.
            if Journal::tag_of(p) == Some(j.tag)
                && p.index(J_PUB).load(Ordering::Acquire) == rsp_prod
                && unpublished <= outstanding
            {
                for i in 0..unpublished {
                    let idx = rsp_prod.wrapping_add(i);
                    page.write_slot::<K, K::Rsp>(idx, p.read_slot::<K, K::Rsp>(idx));
                }
                if unpublished > 0 {
                    let new = rsp_prod.wrapping_add(unpublished);
                    page.index(RSP_PROD).store(new, Ordering::Release);
                    fence(Ordering::SeqCst);
                    let event = page.index(RSP_EVENT).load(Ordering::Relaxed);
                    at.notify = needs_notify(rsp_prod, new, event);
                    at.replayed = unpublished;
                }
            }
        }
        let start = rsp_prod.wrapping_add(at.replayed);
        let mut ring = BackRing {
            page,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_prod_pub: start,
            batch_prod: start,
            journal: None,
            _k: PhantomData,
        };
        if let Some(j) = journal {
            j.init(start);
            ring.journal = Some(j.page);
        }
        Ok((ring, at))
    }

    pub fn page(&self) -> &SharedPage {
        &self.page
    }

    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The frontend's producer index (with the read barrier that orders the slot reads
    /// after it).
    pub fn req_prod(&self) -> u32 {
        self.page.index(REQ_PROD).load(Ordering::Acquire)
    }

    /// Fails when the frontend claims more outstanding requests than the ring holds.
    pub fn check_indices(&self) -> Result<(), RingError> {
        self.checked_prod().map(|_| ())
    }

    /// The producer index, read once and checked against the ring size.
    fn checked_prod(&self) -> Result<u32, RingError> {
        let prod = self.req_prod();
        if prod.wrapping_sub(self.req_cons) > K::SIZE {
            return Err(RingError::ImpossibleIndex {
                prod,
                cons: self.req_cons,
                size: K::SIZE,
            });
        }
        Ok(prod)
    }

    /// Requests available up to producer `prod`, bounded also by the slots our unpushed
    /// responses still occupy.
    fn available(&self, prod: u32) -> u32 {
        let req = prod.wrapping_sub(self.req_cons);
        let rsp = K::SIZE - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        req.min(rsp)
    }

    /// Copies request `req_cons + i` out if it is below `avail`.
    fn read_request(&self, i: u32, avail: u32) -> Option<K::Req> {
        (i < avail).then(|| {
            self.page
                .read_slot::<K, K::Req>(self.req_cons.wrapping_add(i))
        })
    }

    /// Requests available to consume (`RING_HAS_UNCONSUMED_REQUESTS`): bounded also by the
    /// slots our unpushed responses still occupy.
    pub fn unconsumed(&self) -> u32 {
        self.available(self.req_prod())
    }

    /// Reads the frontend's producer index once, checks it like `check_indices` and keeps
    /// it for a batch: the `batch_*` calls then work from this snapshot, as Linux netback
    /// reads `req_prod` once per batch (`rp = req_prod; rmb()`), instead of touching the
    /// shared index line (which the frontend keeps writing) for every request.
    pub fn begin_batch(&mut self) -> Result<(), RingError> {
        self.batch_prod = self.checked_prod()?;
        Ok(())
    }

    /// `unconsumed` as of the last `begin_batch` (never more than the ring holds: the
    /// snapshot was checked). Consuming through the live calls (`next_request`,
    /// `advance`) can take `req_cons` past the snapshot; the snapshot then offers nothing,
    /// not the slots beyond the producer that the wrapped difference would count.
    pub fn batch_unconsumed(&self) -> u32 {
        if self.batch_prod.wrapping_sub(self.req_cons) > K::SIZE {
            return 0;
        }
        self.available(self.batch_prod)
    }

    /// `copy_request` within the batch snapshot.
    pub fn batch_request(&self, i: u32) -> Option<K::Req> {
        self.read_request(i, self.batch_unconsumed())
    }

    /// `next_request` within the batch snapshot.
    #[inline]
    pub fn next_batch_request(&mut self) -> Option<K::Req> {
        let r = self.batch_request(0)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(r)
    }

    /// Copies request `req_cons + i` out of the ring without consuming it, if available.
    /// Each slot should be copied once per decision; the copy is what gets validated.
    pub fn copy_request(&self, i: u32) -> Option<K::Req> {
        self.read_request(i, self.unconsumed())
    }

    /// Marks `n` requests consumed (after copying them with `copy_request`).
    pub fn advance(&mut self, n: u32) {
        debug_assert!(n <= K::SIZE);
        self.req_cons = self.req_cons.wrapping_add(n);
    }

    /// Copies out and consumes the next request.
    pub fn next_request(&mut self) -> Option<K::Req> {
        let r = self.copy_request(0)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(r)
    }

    /// Responses that can still be written: one per consumed, unanswered request.
    pub fn pending_responses(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Writes a response into the next response slot (not yet visible to the frontend).
    /// Answering a request that was never consumed is a bug in the engine, not an input.
    pub fn push_response(&mut self, rsp: K::Rsp) {
        assert!(
            self.pending_responses() > 0,
            "response without a consumed request (engine bug)"
        );
        if let Some(j) = &self.journal {
            j.write_slot::<K, K::Rsp>(self.rsp_prod_pvt, rsp);
            j.index(J_PVT)
                .store(self.rsp_prod_pvt.wrapping_add(1), Ordering::Release);
            // The journal holds the response before the ring slot is overwritten, also
            // as a process killed between the two leaves them.
            compiler_fence(Ordering::SeqCst);
        }
        self.page.write_slot::<K, K::Rsp>(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publishes the written responses (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`); true when
    /// the frontend asked to be notified of them. The previous index is the one this
    /// backend published (not read back from the page, where the frontend could have
    /// written anything); with nothing new the shared line is not written at all (a
    /// store of the same value would still take the line from the polling frontend).
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_pub, self.rsp_prod_pvt);
        if new == old {
            // Nothing new: the shared index line (which the frontend polls) is left alone.
            return false;
        }
        self.rsp_prod_pub = new;
        // Release: the slot writes are visible before the index (wmb).
        self.page.index(RSP_PROD).store(new, Ordering::Release);
        if let Some(j) = &self.journal {
            j.index(J_PUB).store(new, Ordering::Release);
        }
        // mb: the index store is visible before we read the frontend's event index.
        fence(Ordering::SeqCst);
        let event = self.page.index(RSP_EVENT).load(Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: when idle, ask for a notification on the next
    /// request, then re-check to close the race. True when there is work.
    pub fn final_check_for_requests(&mut self) -> bool {
        if self.unconsumed() > 0 {
            return true;
        }
        self.page
            .index(REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.unconsumed() > 0
    }

    /// Current `req_event` (what the frontend compares against to decide to notify).
    pub fn req_event(&self) -> u32 {
        self.page.index(REQ_EVENT).load(Ordering::Relaxed)
    }
}

/// The frontend's view of a ring: produces requests, consumes responses. Used by the
/// simulated guest and tests; a frontend may also be hostile to it, so it checks too.
pub struct FrontRing<K: RingKind> {
    page: SharedPage,
    req_prod_pvt: u32,
    rsp_cons: u32,
    _k: PhantomData<K>,
}

impl<K: RingKind> FrontRing<K> {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT`: zero the header, events at 1.
    pub fn init(page: SharedPage) -> Self {
        Self::init_at(page, 0)
    }

    /// Initialises with all indices at `start` (a real frontend starts at 0; starting near
    /// `u32::MAX` exercises index wrap).
    pub fn init_at(page: SharedPage, start: u32) -> Self {
        for off in (0..RING_HEADER_SIZE).step_by(4) {
            page.index(off).store(0, Ordering::Relaxed);
        }
        page.index(REQ_PROD).store(start, Ordering::Relaxed);
        page.index(RSP_PROD).store(start, Ordering::Relaxed);
        page.index(REQ_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        page.index(RSP_EVENT)
            .store(start.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        FrontRing {
            page,
            req_prod_pvt: start,
            rsp_cons: start,
            _k: PhantomData,
        }
    }

    pub fn page(&self) -> &SharedPage {
        &self.page
    }

    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        K::SIZE - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Writes a request into the next slot (not yet visible).
    pub fn push_request(&mut self, req: K::Req) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        self.page.write_slot::<K, K::Req>(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.page.index(REQ_PROD).load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        self.page.index(REQ_PROD).store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.page.index(REQ_EVENT).load(Ordering::Relaxed);
        needs_notify(old, new, event)
    }

    /// Responses available; an impossible backend index is an error.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.page.index(RSP_PROD).load(Ordering::Acquire);
        let n = prod.wrapping_sub(self.rsp_cons);
        if n > self.req_prod_pvt.wrapping_sub(self.rsp_cons) {
            return Err(RingError::ImpossibleIndex {
                prod,
                cons: self.rsp_cons,
                size: K::SIZE,
            });
        }
        Ok(n)
    }

    /// Copies out and consumes the next response.
    pub fn next_response(&mut self) -> Result<Option<K::Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let r = self.page.read_slot::<K, K::Rsp>(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(r))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.page
            .index(RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tx(id: u16) -> TxRequest {
        TxRequest {
            gref: u32::from(id) * 3,
            offset: 0,
            flags: 0,
            id,
            size: 60,
        }
    }

    #[test]
    fn needs_notify_matches_ring_h() {
        assert!(needs_notify(0, 1, 1));
        assert!(!needs_notify(1, 2, 1));
        assert!(needs_notify(1, 5, 3));
        assert!(!needs_notify(1, 5, 6));
        assert!(!needs_notify(5, 5, 5));
        // Across the wrap.
        assert!(needs_notify(u32::MAX - 1, 2, 0));
        assert!(needs_notify(u32::MAX - 1, 2, u32::MAX));
        assert!(!needs_notify(u32::MAX - 1, 2, 3));
    }

    #[test]
    fn batch_works_from_one_checked_snapshot() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page.clone());
        f.push_request(tx(1)).unwrap();
        f.push_requests_and_check_notify();
        b.begin_batch().unwrap();
        // Requests produced after the snapshot wait for the next batch.
        f.push_request(tx(2)).unwrap();
        f.push_requests_and_check_notify();
        assert_eq!(b.batch_unconsumed(), 1);
        assert_eq!(b.next_batch_request(), Some(tx(1)));
        assert_eq!(b.next_batch_request(), None);
        b.begin_batch().unwrap();
        assert_eq!(b.batch_request(0), Some(tx(2)));
        // An impossible producer is refused and the old snapshot kept.
        page.index(REQ_PROD)
            .store(b.req_cons() + 300, Ordering::Release);
        assert!(b.begin_batch().is_err());
        assert_eq!(b.batch_unconsumed(), 1);
    }

    /// Found by the `ring` fuzz target: a snapshot taken before requests were consumed
    /// through the live calls offered up to a ring's worth of slots the frontend never
    /// published (the difference to `req_cons` wrapped).
    #[test]
    fn stale_batch_snapshot_offers_nothing() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page.clone());
        b.begin_batch().unwrap();
        for id in 0..3 {
            f.push_request(tx(id)).unwrap();
        }
        f.push_requests_and_check_notify();
        assert_eq!(b.next_request(), Some(tx(0)));
        assert_eq!(b.batch_unconsumed(), 0);
        assert_eq!(b.next_batch_request(), None);
        assert_eq!(b.batch_request(0), None);
        b.advance(1);
        assert_eq!(b.batch_unconsumed(), 0);
        // A new snapshot sees the one request left.
        b.begin_batch().unwrap();
        assert_eq!(b.batch_unconsumed(), 1);
        assert_eq!(b.next_batch_request(), Some(tx(2)));
    }

    #[test]
    fn request_response_cycle_and_notifications() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page);
        assert_eq!(b.unconsumed(), 0);
        f.push_request(tx(1)).unwrap();
        // req_event starts at 1: the first request notifies, later ones don't.
        assert!(f.push_requests_and_check_notify());
        f.push_request(tx(2)).unwrap();
        assert!(!f.push_requests_and_check_notify());
        assert_eq!(b.unconsumed(), 2);
        assert_eq!(b.next_request(), Some(tx(1)));
        assert_eq!(b.next_request(), Some(tx(2)));
        assert_eq!(b.next_request(), None);
        // Idle: final check arms req_event = req_cons + 1.
        assert!(!b.final_check_for_requests());
        assert_eq!(b.req_event(), 3);
        f.push_request(tx(3)).unwrap();
        assert!(f.push_requests_and_check_notify());
        b.push_response(TxResponse { id: 1, status: 0 });
        b.push_response(TxResponse { id: 2, status: 0 });
        // rsp_event starts at 1: notify.
        assert!(b.push_responses_and_check_notify());
        assert_eq!(
            f.next_response().unwrap(),
            Some(TxResponse { id: 1, status: 0 })
        );
        assert_eq!(
            f.next_response().unwrap(),
            Some(TxResponse { id: 2, status: 0 })
        );
        assert!(!f.final_check_for_responses().unwrap());
        assert!(b.next_request().is_some());
        b.push_response(TxResponse { id: 3, status: -1 });
        assert!(b.push_responses_and_check_notify());
    }

    #[test]
    fn publishing_nothing_new_leaves_the_shared_index_alone() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page.clone());
        for i in 1..=2 {
            f.push_request(tx(i)).unwrap();
        }
        f.push_requests_and_check_notify();
        assert!(b.next_request().is_some());
        b.push_response(TxResponse { id: 1, status: 0 });
        assert!(b.push_responses_and_check_notify());
        assert_eq!(page.index(RSP_PROD).load(Ordering::Relaxed), 1);
        // The frontend scribbles over rsp_prod and asks for an event at 5. With nothing
        // new to publish the backend writes nothing (the scribble stays).
        page.index(RSP_PROD).store(3, Ordering::Relaxed);
        page.index(RSP_EVENT).store(5, Ordering::Relaxed);
        assert!(!b.push_responses_and_check_notify());
        assert_eq!(page.index(RSP_PROD).load(Ordering::Relaxed), 3);
        // The next response is published from the backend's own index (1 -> 2): no event
        // is due before 5. Read back from the page (3 -> 2) it would have notified.
        assert!(b.next_request().is_some());
        b.push_response(TxResponse { id: 2, status: 0 });
        assert!(!b.push_responses_and_check_notify());
        assert_eq!(page.index(RSP_PROD).load(Ordering::Relaxed), 2);
    }

    #[test]
    #[should_panic(expected = "engine bug")]
    fn response_without_request_is_a_bug() {
        let page = SharedPage::new_owned();
        let _f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page);
        b.push_response(TxResponse::default());
    }

    #[test]
    fn impossible_index_is_reported_not_trusted() {
        let page = SharedPage::new_owned();
        let _f = FrontRing::<TxRing>::init(page.clone());
        let b = BackRing::<TxRing>::attach(page.clone());
        page.index(REQ_PROD).store(1000, Ordering::Release);
        assert_eq!(
            b.check_indices(),
            Err(RingError::ImpossibleIndex {
                prod: 1000,
                cons: 0,
                size: 256
            })
        );
        // Even unchecked, never more than a ring's worth is offered.
        assert!(b.unconsumed() <= 256);
        page.index(REQ_PROD).store(256, Ordering::Release);
        assert_eq!(b.check_indices(), Ok(()));
        page.index(REQ_PROD).store(u32::MAX, Ordering::Release);
        assert!(b.check_indices().is_err());
    }

    /// A backend killed after consuming requests it never answered: its successor resumes
    /// at `rsp_prod`, answers each outstanding request once (the unanswered ones again, the
    /// answered ones never), and refuses impossible indices, also across the wrap.
    #[test]
    fn resume_answers_each_request_once() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init_at(page.clone(), u32::MAX - 2);
        let mut old = BackRing::<TxRing>::attach(page.clone());
        for id in 0..6 {
            f.push_request(tx(id)).unwrap();
        }
        f.push_requests_and_check_notify();
        for _ in 0..4 {
            old.next_request().unwrap();
        }
        old.push_response(TxResponse { id: 0, status: 0 });
        old.push_response(TxResponse { id: 1, status: 0 });
        old.push_responses_and_check_notify();
        // Killed here: 2 and 3 consumed, unanswered; 4 and 5 not consumed.
        drop(old);
        let (mut new, at) = BackRing::<TxRing>::resume(page.clone(), None).unwrap();
        assert_eq!(at.outstanding(), 4);
        assert_eq!(at.rsp_prod, (u32::MAX - 2).wrapping_add(2));
        let mut ids = Vec::new();
        while let Some(r) = new.next_request() {
            ids.push(r.id);
            new.push_response(TxResponse {
                id: r.id,
                status: 0,
            });
        }
        assert_eq!(ids, [2, 3, 4, 5]);
        new.push_responses_and_check_notify();
        let mut seen = Vec::new();
        while let Some(r) = f.next_response().unwrap() {
            seen.push(r.id);
        }
        assert_eq!(seen, [0, 1, 2, 3, 4, 5], "each answered once, in order");
        // A producer more than a ring ahead of rsp_prod: refused, nothing attached.
        let rsp = page.index(RSP_PROD).load(Ordering::Relaxed);
        page.index(REQ_PROD)
            .store(rsp.wrapping_add(257), Ordering::Release);
        assert_eq!(
            BackRing::<TxRing>::resume(page.clone(), None).err(),
            Some(RingError::ImpossibleIndex {
                prod: rsp.wrapping_add(257),
                cons: rsp,
                size: 256
            })
        );
        // Behind rsp_prod (a response for an unposted request would follow): refused.
        page.index(REQ_PROD)
            .store(rsp.wrapping_sub(1), Ordering::Release);
        assert!(BackRing::<TxRing>::resume(page.clone(), None).is_err());
        page.index(REQ_PROD)
            .store(rsp.wrapping_add(256), Ordering::Release);
        assert_eq!(
            BackRing::<TxRing>::resume(page, None).map(|r| r.1.outstanding()),
            Ok(256)
        );
    }

    /// Killed after writing responses it never published (their slots no longer hold the
    /// requests): the successor publishes them from the journal, once, and goes on after
    /// them; a journal of another ring, or one the ring's rsp_prod disagrees with, is
    /// never replayed.
    #[test]
    fn journal_publishes_what_a_killed_backend_wrote() {
        let page = SharedPage::new_owned();
        let jpage = SharedPage::new_owned();
        let journal = |tag| Journal {
            page: jpage.clone(),
            tag,
        };
        let mut f = FrontRing::<TxRing>::init_at(page.clone(), u32::MAX - 1);
        let mut old = BackRing::<TxRing>::attach_journaled(page.clone(), journal(77));
        for id in 0..5 {
            f.push_request(tx(id)).unwrap();
        }
        f.push_requests_and_check_notify();
        for id in 0..4 {
            assert_eq!(old.next_request().map(|r| r.id), Some(id));
        }
        old.push_response(TxResponse { id: 0, status: 0 });
        old.push_responses_and_check_notify();
        assert_eq!(f.next_response().unwrap().map(|r| r.id), Some(0));
        // The frontend waits for the next response.
        assert!(!f.final_check_for_responses().unwrap());
        old.push_response(TxResponse { id: 1, status: 0 });
        old.push_response(TxResponse { id: 2, status: -1 });
        // Killed after the journal got response 3 and before its ring slot did.
        let j = old.journal.clone().unwrap();
        let at = old.rsp_prod_pvt;
        j.write_slot::<TxRing, TxResponse>(at, TxResponse { id: 3, status: 0 });
        j.index(J_PVT).store(at.wrapping_add(1), Ordering::Release);
        drop(old);
        let saved: Vec<u8> = (0..PAGE_SIZE)
            // SAFETY: reading the owned page byte by byte.
            .map(|i| unsafe { *page.as_ptr().add(i) })
            .collect();
        let restore = || {
            for (i, b) in saved.iter().enumerate() {
                // SAFETY: writing the owned page byte by byte.
                unsafe { *page.as_ptr().add(i) = *b };
            }
        };
        // Another ring's journal: not replayed (the slots would be read as requests).
        let (_, at) = BackRing::<TxRing>::resume(page.clone(), Some(journal(78))).unwrap();
        assert_eq!((at.replayed, at.notify), (0, false));
        restore();
        jpage.index(J_TAG_LO).store(77, Ordering::Relaxed);
        // rsp_prod is not where the journal last published: not replayed either.
        let pubd = jpage.index(J_PUB).load(Ordering::Relaxed);
        jpage
            .index(J_PUB)
            .store(pubd.wrapping_add(1), Ordering::Relaxed);
        let (_, at) = BackRing::<TxRing>::resume(page.clone(), Some(journal(77))).unwrap();
        assert_eq!(at.replayed, 0);
        restore();
        jpage.index(J_TAG_LO).store(77, Ordering::Relaxed);
        jpage.index(J_PUB).store(pubd, Ordering::Relaxed);
        jpage
            .index(J_PVT)
            .store(pubd.wrapping_add(3), Ordering::Relaxed);
        for (i, r) in [(1, 0), (2, -1), (3, 0)] {
            jpage.write_slot::<TxRing, TxResponse>(
                pubd.wrapping_add(i - 1),
                TxResponse {
                    id: i as u16,
                    status: r,
                },
            );
        }
        let (mut new, at) = BackRing::<TxRing>::resume(page.clone(), Some(journal(77))).unwrap();
        assert_eq!((at.outstanding(), at.replayed, at.notify), (4, 3, true));
        let mut seen = Vec::new();
        while let Some(r) = f.next_response().unwrap() {
            seen.push((r.id, r.status));
        }
        assert_eq!(seen, [(1, 0), (2, -1), (3, 0)]);
        // Only request 4 is left to answer.
        assert_eq!(new.next_request().map(|r| r.id), Some(4));
        assert_eq!(new.next_request(), None);
        new.push_response(TxResponse { id: 4, status: 0 });
        new.push_responses_and_check_notify();
        assert_eq!(f.next_response().unwrap().map(|r| r.id), Some(4));
        assert_eq!(f.next_response().unwrap(), None);
        // The journal started over where the new backend serves from.
        assert_eq!(
            jpage.index(J_PUB).load(Ordering::Relaxed),
            pubd.wrapping_add(4)
        );
    }

    #[test]
    fn copy_is_immune_to_later_rewrites() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<TxRing>::init(page.clone());
        let mut b = BackRing::<TxRing>::attach(page.clone());
        f.push_request(tx(7)).unwrap();
        f.push_requests_and_check_notify();
        let got = b.next_request().unwrap();
        // The frontend rewrites the slot after the backend copied it.
        page.write_slot::<TxRing, TxRequest>(
            0,
            TxRequest {
                size: 0xFFFF,
                ..tx(9)
            },
        );
        assert_eq!(got, tx(7));
    }

    #[test]
    fn hostile_backend_index_is_reported_to_frontend() {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<RxRing>::init(page.clone());
        page.index(RSP_PROD).store(5, Ordering::Release);
        assert!(f.next_response().is_err());
    }

    /// ring.h written out as literally as possible, for comparison.
    #[derive(Clone, Debug)]
    struct Model {
        req_prod: u32,
        req_event: u32,
        rsp_prod: u32,
        rsp_event: u32,
        req_prod_pvt: u32,
        rsp_cons: u32,
        req_cons: u32,
        rsp_prod_pvt: u32,
        size: u32,
    }

    impl Model {
        fn new(start: u32, size: u32) -> Model {
            Model {
                req_prod: start,
                req_event: start.wrapping_add(1),
                rsp_prod: start,
                rsp_event: start.wrapping_add(1),
                req_prod_pvt: start,
                rsp_cons: start,
                req_cons: start,
                rsp_prod_pvt: start,
                size,
            }
        }
        fn free_requests(&self) -> u32 {
            self.size - (self.req_prod_pvt.wrapping_sub(self.rsp_cons))
        }
        fn unconsumed_requests(&self) -> u32 {
            let req = self.req_prod.wrapping_sub(self.req_cons);
            let rsp = self.size - (self.req_cons.wrapping_sub(self.rsp_prod_pvt));
            if req < rsp {
                req
            } else {
                rsp
            }
        }
        fn push_requests_and_check_notify(&mut self) -> bool {
            let old = self.req_prod;
            let new = self.req_prod_pvt;
            self.req_prod = new;
            new.wrapping_sub(self.req_event) < new.wrapping_sub(old)
        }
        fn push_responses_and_check_notify(&mut self) -> bool {
            let old = self.rsp_prod;
            let new = self.rsp_prod_pvt;
            self.rsp_prod = new;
            new.wrapping_sub(self.rsp_event) < new.wrapping_sub(old)
        }
        fn final_check_for_requests(&mut self) -> bool {
            let mut w = self.unconsumed_requests() > 0;
            if !w {
                self.req_event = self.req_cons.wrapping_add(1);
                w = self.unconsumed_requests() > 0;
            }
            w
        }
        fn final_check_for_responses(&mut self) -> bool {
            let mut w = self.rsp_prod.wrapping_sub(self.rsp_cons) > 0;
            if !w {
                self.rsp_event = self.rsp_cons.wrapping_add(1);
                w = self.rsp_prod.wrapping_sub(self.rsp_cons) > 0;
            }
            w
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u8),
        FrontNotify,
        Consume(u8),
        Respond(u8),
        BackNotify,
        BackFinal,
        TakeResponses(u8),
        FrontFinal,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40).prop_map(Op::Push),
            Just(Op::FrontNotify),
            (0u8..40).prop_map(Op::Consume),
            (0u8..40).prop_map(Op::Respond),
            Just(Op::BackNotify),
            Just(Op::BackFinal),
            (0u8..40).prop_map(Op::TakeResponses),
            Just(Op::FrontFinal),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Every operation gives the same notify decision and indices as the model, and
        /// requests/responses arrive exactly once, in order, across index wrap.
        #[test]
        fn matches_ring_h_model(
            start in prop_oneof![Just(0u32), Just(u32::MAX - 3), Just(u32::MAX - 300), any::<u32>()],
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let page = SharedPage::new_owned();
            let mut f = FrontRing::<TxRing>::init_at(page.clone(), start);
            let mut b = BackRing::<TxRing>::attach(page.clone());
            let mut m = Model::new(start, 256);
            let mut next_id: u16 = 0;
            let mut expect_req: u16 = 0;
            let mut expect_rsp: u16 = 0;
            let mut answered: u16 = 0;
            for o in ops {
                match o {
                    Op::Push(k) => for _ in 0..k {
                        let free = m.free_requests();
                        let r = f.push_request(tx(next_id));
                        if free == 0 { prop_assert_eq!(r, Err(RingError::Full)); break; }
                        prop_assert!(r.is_ok());
                        m.req_prod_pvt = m.req_prod_pvt.wrapping_add(1);
                        next_id = next_id.wrapping_add(1);
                    },
                    Op::FrontNotify => prop_assert_eq!(f.push_requests_and_check_notify(), m.push_requests_and_check_notify()),
                    Op::Consume(k) => for _ in 0..k {
                        prop_assert_eq!(b.unconsumed(), m.unconsumed_requests());
                        match b.next_request() {
                            Some(r) => {
                                prop_assert_eq!(r.id, expect_req);
                                expect_req = expect_req.wrapping_add(1);
                                m.req_cons = m.req_cons.wrapping_add(1);
                            }
                            None => { prop_assert_eq!(m.unconsumed_requests(), 0); break; }
                        }
                    },
                    Op::Respond(k) => for _ in 0..k {
                        if b.pending_responses() == 0 { break; }
                        b.push_response(TxResponse { id: answered, status: 0 });
                        answered = answered.wrapping_add(1);
                        m.rsp_prod_pvt = m.rsp_prod_pvt.wrapping_add(1);
                    },
                    Op::BackNotify => prop_assert_eq!(b.push_responses_and_check_notify(), m.push_responses_and_check_notify()),
                    Op::BackFinal => prop_assert_eq!(b.final_check_for_requests(), m.final_check_for_requests()),
                    Op::TakeResponses(k) => for _ in 0..k {
                        match f.next_response().unwrap() {
                            Some(r) => {
                                prop_assert_eq!(r.id, expect_rsp);
                                expect_rsp = expect_rsp.wrapping_add(1);
                                m.rsp_cons = m.rsp_cons.wrapping_add(1);
                            }
                            None => { prop_assert_eq!(m.rsp_prod, m.rsp_cons); break; }
                        }
                    },
                    Op::FrontFinal => prop_assert_eq!(f.final_check_for_responses().unwrap(), m.final_check_for_responses()),
                }
                prop_assert_eq!(b.req_cons(), m.req_cons);
                prop_assert_eq!(b.rsp_prod_pvt(), m.rsp_prod_pvt);
                prop_assert_eq!(f.req_prod_pvt(), m.req_prod_pvt);
                prop_assert_eq!(f.rsp_cons(), m.rsp_cons);
                prop_assert_eq!(b.req_event(), m.req_event);
                prop_assert!(b.check_indices().is_ok());
            }
        }
    }

    /// Frontend and backend in two threads on one page (control ring: 32-bit sequence
    /// numbers both ways), starting near the wrap: nothing lost, duplicated or reordered.
    fn two_threads(start: u32, count: u32) {
        let page = SharedPage::new_owned();
        let mut f = FrontRing::<CtrlRing>::init_at(page.clone(), start);
        let mut b = BackRing::<CtrlRing>::attach(page);
        let backend = std::thread::spawn(move || {
            let mut expect = 0u32;
            while expect < count {
                b.check_indices().expect("honest frontend");
                let mut did = false;
                while let Some(r) = b.next_request() {
                    assert_eq!(r.data, [expect, !expect, expect.wrapping_mul(7)]);
                    b.push_response(CtrlResponse {
                        id: r.id,
                        ty: r.ty,
                        status: 0,
                        data: expect,
                    });
                    expect += 1;
                    did = true;
                }
                if did {
                    b.push_responses_and_check_notify();
                } else {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
            }
        });
        let mut sent = 0u32;
        let mut got = 0u32;
        while got < count {
            while sent < count && f.free_requests() > 0 {
                f.push_request(CtrlRequest {
                    id: sent as u16,
                    ty: 1,
                    data: [sent, !sent, sent.wrapping_mul(7)],
                })
                .unwrap();
                sent += 1;
            }
            f.push_requests_and_check_notify();
            let mut did = false;
            while let Some(r) = f.next_response().unwrap() {
                assert_eq!((r.data, r.id), (got, got as u16));
                got += 1;
                did = true;
            }
            if !did {
                std::thread::yield_now();
            }
        }
        backend.join().unwrap();
        assert_eq!(f.req_prod_pvt(), start.wrapping_add(count));
    }

    #[test]
    fn two_threads_across_wrap() {
        for start in [0, u32::MAX - 100, u32::MAX - 1, 1 << 31] {
            two_threads(start, 20_000);
        }
    }
}
