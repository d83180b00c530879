//! The backend side of one vif's netif control ring: the receive-side hashing a frontend
//! configures (algorithm, hash types, Toeplitz key, hash-to-queue mapping table) and the
//! queue each frame for the guest goes to.
//!
//! Each request is answered as Linux's xen-netback answers it (`netback.c`
//! `process_ctrl_request`, `hash.c`), status code for status code, so frontends written
//! against Linux (Linux netfront does not use the ring; Windows PV drivers do) see no
//! difference. Where a request fails the state is left exactly as it was: keys and mapping
//! entries are grant-copied into staging buffers, validated, and only then published
//! (XSA-270: the mapping table was once written before its entries were checked).
//!
//! Requests arrive already copied out of the shared ring ([`BackRing`] does that, once per
//! request); nothing here reads shared memory. Guest memory is read only through
//! [`GrantCopy`], which checks the grant like Xen does.
use crate::netif::abi::{
    CtrlRequest, CtrlResponse, PAGE_SIZE, XEN_NETIF_CTRL_HASH_ALGORITHM_NONE,
    XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
    XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, XEN_NETIF_CTRL_STATUS_SUCCESS,
    XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
    XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS,
    XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING,
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
};
use crate::netif::ring::{BackRing, CtrlRing, RingError, RingKind};
use crate::toeplitz::{self, FrameHash, HashFlags, ToeplitzKey, MAX_KEY_LEN};
use thiserror::Error;
use xen::iface::gntst;
use xen::{CopyDir, CopyOp, GrantCopy};

/// Longest key a frontend may set (`XEN_NETBK_MAX_HASH_KEY_SIZE`).
pub const MAX_HASH_KEY_SIZE: u32 = MAX_KEY_LEN as u32;
/// Entries of the largest mapping table (`XEN_NETBK_MAX_HASH_MAPPING_SIZE`), what
/// GET_HASH_MAPPING_SIZE answers.
pub const MAX_HASH_MAPPING_SIZE: u32 = 128;
/// Bytes of one mapping table entry (a `uint32_t` queue number).
const MAPPING_ENTRY: usize = 4;

/// The hash algorithm a frontend selected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// No hashing configured: the backend steers as it likes (see [`HashState::queue_for`]).
    #[default]
    None,
    Toeplitz,
}

/// Why a control request failed; [`CtrlError::status`] is the status Linux answers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CtrlError {
    #[error("control request type {0} is not supported")]
    UnknownType(u16),
    #[error("hash algorithm {0} is not supported")]
    BadAlgorithm(u32),
    #[error("hash flags queried with no hash algorithm selected")]
    NoAlgorithm,
    #[error("hash flags set with no hash algorithm selected")]
    FlagsWithoutAlgorithm,
    #[error("hash flags {0:#x} name unknown hash types")]
    BadFlags(u32),
    #[error("hash key of {0} bytes is longer than {MAX_HASH_KEY_SIZE}")]
    KeyTooLong(u32),
    #[error("mapping table size {0} is larger than {MAX_HASH_MAPPING_SIZE}")]
    MappingSizeTooLarge(u32),
    #[error("mapping entries {off}..{off}+{len} lie outside the table of {size}")]
    MappingOutOfRange { off: u32, len: u32, size: u32 },
    #[error("mapping of {0} entries does not fit the granted page")]
    MappingBeyondPage(u32),
    #[error("mapping entry {index} names queue {queue} of {num_queues}")]
    BadQueue {
        index: u32,
        queue: u32,
        num_queues: u32,
    },
    #[error("grant copy from gref {gref} failed: status {status}")]
    GrantCopy { gref: u32, status: i16 },
    #[error("grant copy could not be submitted: {0}")]
    Submit(String),
}

impl CtrlError {
    /// The `XEN_NETIF_CTRL_STATUS_*` Linux answers for this failure.
    pub fn status(&self) -> u32 {
        match self {
            CtrlError::UnknownType(_) | CtrlError::NoAlgorithm => {
                XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED
            }
            // Linux answers INVALID_PARAMETER for an over-long key and an over-long mapping
            // too, where netif.h suggests BUFFER_OVERFLOW.
            _ => XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        }
    }
}

/// Where a frame for the guest goes: the queue, and the hash to report with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Queue index, below the vif's number of queues.
    pub queue: u32,
    /// The Toeplitz hash and type to send the frontend in a hash extra
    /// ([`FrameHash::to_extra`]); None when the frontend configured no hashing or no
    /// enabled hash type applies to the frame (Linux then sends no hash extra).
    pub hash: Option<FrameHash>,
}

/// One vif's hash configuration, as set over its control ring.
///
/// A vif's queue count is fixed while it is connected (it bounds every mapping entry), so
/// a state is made per connection; a reconnecting frontend starts from the defaults, as
/// with Linux.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashState {
    domid: u16,
    num_queues: u32,
    alg: HashAlgorithm,
    flags: HashFlags,
    key: ToeplitzKey,
    /// Entries `..size` are the table; every one is below `num_queues`.
    mapping: [u32; MAX_HASH_MAPPING_SIZE as usize],
    size: u32,
    /// Bumped by every request that changed something (successful SET_*).
    generation: u64,
}

/// Outcome of [`HashState::serve`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Requests answered.
    pub handled: u32,
    /// The frontend asked to be notified of the responses: signal its event channel.
    pub notify: bool,
    /// More requests are waiting (the per-call bound was reached, or new ones arrived).
    pub more: bool,
}

impl HashState {
    /// The defaults for a vif of `domid` with `num_queues` queues: no algorithm, no hash
    /// types, an all-zero key, no mapping table.
    pub fn new(domid: u16, num_queues: u32) -> HashState {
        HashState {
            domid,
            num_queues,
            alg: HashAlgorithm::None,
            flags: HashFlags::NONE,
            key: ToeplitzKey::ZERO,
            mapping: [0; MAX_HASH_MAPPING_SIZE as usize],
            size: 0,
            generation: 0,
        }
    }

    pub fn domid(&self) -> u16 {
        self.domid
    }
    pub fn num_queues(&self) -> u32 {
        self.num_queues
    }
    pub fn algorithm(&self) -> HashAlgorithm {
        self.alg
    }
    pub fn flags(&self) -> HashFlags {
        self.flags
    }
    pub fn key(&self) -> &ToeplitzKey {
        &self.key
    }
    /// The mapping table (empty when none is set: queues by hash modulo queue count).
    pub fn mapping(&self) -> &[u32] {
        &self.mapping[..self.size as usize]
    }
    /// Changes so far: an owner that mirrors the state to the lcores compares this to
    /// decide whether to publish a new copy.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Answers one request (id and type echoed; Linux's status and data). `req` is the
    /// caller's copy of the ring slot; key and mapping bytes come through `gc`.
    pub fn handle<G: GrantCopy + ?Sized>(&mut self, gc: &mut G, req: CtrlRequest) -> CtrlResponse {
        let (status, data) = match self.apply(gc, req) {
            Ok(data) => (XEN_NETIF_CTRL_STATUS_SUCCESS, data),
            Err(e) => (e.status(), 0),
        };
        CtrlResponse {
            id: req.id,
            ty: req.ty,
            status,
            data,
        }
    }

    /// [`handle`](Self::handle) with the failure as a typed error (to log or count it):
    /// Ok(response data) on success.
    pub fn apply<G: GrantCopy + ?Sized>(
        &mut self,
        gc: &mut G,
        req: CtrlRequest,
    ) -> Result<u32, CtrlError> {
        let [d0, d1, d2] = req.data;
        let data = match req.ty {
            XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM => self.set_algorithm(d0).map(|_| 0),
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS => self.get_flags(),
            XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => self.set_flags(d0).map(|_| 0),
            XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => self.set_key(gc, d0, d1).map(|_| 0),
            XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE => Ok(MAX_HASH_MAPPING_SIZE),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE => self.set_mapping_size(d0).map(|_| 0),
            XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => self.set_mapping(gc, d0, d1, d2).map(|_| 0),
            // INVALID, the gref-mapping requests and anything newer.
            other => Err(CtrlError::UnknownType(other)),
        }?;
        if !matches!(
            req.ty,
            XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS | XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE
        ) {
            self.generation += 1;
        }
        Ok(data)
    }

    /// NONE or TOEPLITZ; anything else is INVALID_PARAMETER. The enabled types are kept
    /// (Linux keeps them too; they apply again once Toeplitz is selected).
    fn set_algorithm(&mut self, alg: u32) -> Result<(), CtrlError> {
        self.alg = match alg {
            XEN_NETIF_CTRL_HASH_ALGORITHM_NONE => HashAlgorithm::None,
            XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ => HashAlgorithm::Toeplitz,
            other => return Err(CtrlError::BadAlgorithm(other)),
        };
        Ok(())
    }

    /// Every type netif.h defines, once an algorithm is selected (else NOT_SUPPORTED).
    fn get_flags(&self) -> Result<u32, CtrlError> {
        match self.alg {
            HashAlgorithm::None => Err(CtrlError::NoAlgorithm),
            HashAlgorithm::Toeplitz => Ok(HashFlags::ALL.bits()),
        }
    }

    /// Unknown bits are checked first, then that an algorithm is selected (Linux's order;
    /// both are INVALID_PARAMETER). Zero disables hashing.
    fn set_flags(&mut self, bits: u32) -> Result<(), CtrlError> {
        let flags = HashFlags::from_bits(bits).ok_or(CtrlError::BadFlags(bits))?;
        if self.alg == HashAlgorithm::None {
            return Err(CtrlError::FlagsWithoutAlgorithm);
        }
        self.flags = flags;
        Ok(())
    }

    /// `len` bytes from the start of `gref`; the rest of the key becomes zero, so length 0
    /// clears the key (netif.h: every hash is then zero). Longer than 40 bytes, or a failed
    /// copy: INVALID_PARAMETER and the old key stays.
    fn set_key<G: GrantCopy + ?Sized>(
        &mut self,
        gc: &mut G,
        gref: u32,
        len: u32,
    ) -> Result<(), CtrlError> {
        if len > MAX_HASH_KEY_SIZE {
            return Err(CtrlError::KeyTooLong(len));
        }
        let mut staged = [0u8; MAX_KEY_LEN];
        let n = len as usize; // <= 40, checked above
        if n != 0 {
            copy_from_guest(gc, self.domid, gref, &mut staged[..n])?;
        }
        self.key = ToeplitzKey::new(staged);
        Ok(())
    }

    /// Up to 128 entries, all queue 0 afterwards; 0 means no table (hash modulo the queue
    /// count), which Linux accepts. Larger: INVALID_PARAMETER.
    fn set_mapping_size(&mut self, size: u32) -> Result<(), CtrlError> {
        if size > MAX_HASH_MAPPING_SIZE {
            return Err(CtrlError::MappingSizeTooLarge(size));
        }
        self.size = size;
        self.mapping = [0; MAX_HASH_MAPPING_SIZE as usize];
        Ok(())
    }

    /// Entries `off..off + len` from the start of `gref` (little-endian `uint32_t` queue
    /// numbers). Checked in Linux's order, each failure INVALID_PARAMETER with the table
    /// untouched: the range lies inside the table (no wrap), the copy fits the granted page,
    /// the grant copy succeeds, every copied entry names an existing queue. Only then are
    /// the entries published. Length 0 changes nothing and succeeds.
    fn set_mapping<G: GrantCopy + ?Sized>(
        &mut self,
        gc: &mut G,
        gref: u32,
        len: u32,
        off: u32,
    ) -> Result<(), CtrlError> {
        let out_of_range = CtrlError::MappingOutOfRange {
            off,
            len,
            size: self.size,
        };
        let end = off.checked_add(len).ok_or(out_of_range.clone())?;
        if end > self.size {
            return Err(out_of_range);
        }
        let bytes = len as usize * MAPPING_ENTRY; // len <= size <= 128
        if bytes > PAGE_SIZE {
            return Err(CtrlError::MappingBeyondPage(len));
        }
        if len == 0 {
            return Ok(());
        }
        let mut staged = [0u8; MAX_HASH_MAPPING_SIZE as usize * MAPPING_ENTRY];
        let staged = staged
            .get_mut(..bytes)
            .ok_or(CtrlError::MappingBeyondPage(len))?;
        copy_from_guest(gc, self.domid, gref, staged)?;
        let mut entries = [0u32; MAX_HASH_MAPPING_SIZE as usize];
        for ((i, raw), e) in staged
            .chunks_exact(MAPPING_ENTRY)
            .enumerate()
            .zip(entries.iter_mut())
        {
            let queue = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if queue >= self.num_queues {
                return Err(CtrlError::BadQueue {
                    index: off + i as u32,
                    queue,
                    num_queues: self.num_queues,
                });
            }
            *e = queue;
        }
        // Publish: only now does the table change.
        let (off, end) = (off as usize, end as usize);
        self.mapping[off..end].copy_from_slice(&entries[..end - off]);
        Ok(())
    }

    /// The queue for a frame to the guest, as Linux's `xenvif_select_queue` picks it:
    /// - Toeplitz selected: the frame's hash with the enabled types (0 if none applies);
    ///   with a mapping table, the entry at `hash % size`, else `hash % num_queues`;
    /// - no algorithm: a hash that is the same for both directions of a flow
    ///   ([`toeplitz::symmetric_hash`]) modulo the queue count, non-IP frames to queue 0;
    ///   nothing is reported to the frontend (Linux clears the hash then).
    ///
    /// None only when the vif has no queues.
    pub fn queue_for(&self, frame: &[u8]) -> Option<Steering> {
        if self.num_queues == 0 {
            return None;
        }
        match self.alg {
            HashAlgorithm::None => {
                let h = toeplitz::symmetric_hash(frame).unwrap_or(0);
                Some(Steering {
                    queue: h % self.num_queues,
                    hash: None,
                })
            }
            HashAlgorithm::Toeplitz => {
                let hash = toeplitz::hash_frame(&self.key, self.flags, frame);
                let value = hash.map_or(0, |h| h.value);
                let queue = match self.size {
                    0 => value % self.num_queues,
                    // Entries are checked against num_queues when set; the modulo only
                    // keeps a broken invariant from indexing out of range.
                    size => self.mapping[(value % size) as usize] % self.num_queues,
                };
                Some(Steering { queue, hash })
            }
        }
    }

    /// The hash to report to the frontend with `frame` (the hash extra): Some only with
    /// Toeplitz selected and one of the enabled hash types applying to the frame.
    pub fn frame_hash(&self, frame: &[u8]) -> Option<FrameHash> {
        match self.alg {
            HashAlgorithm::None => None,
            HashAlgorithm::Toeplitz => toeplitz::hash_frame(&self.key, self.flags, frame),
        }
    }

    /// Answers the requests waiting on the vif's control ring, at most one ring's worth per
    /// call (a frontend that keeps posting cannot hold the caller), as Linux's
    /// `xenvif_ctrl_action` does: each request copied out once, answered in its slot,
    /// responses pushed, `req_event` re-armed. An impossible producer index is a rogue
    /// frontend (the caller disables the vif).
    pub fn serve<G: GrantCopy + ?Sized>(
        &mut self,
        ring: &mut BackRing<CtrlRing>,
        gc: &mut G,
    ) -> Result<Served, RingError> {
        ring.begin_batch()?;
        let mut handled = 0u32;
        while handled < CtrlRing::SIZE {
            let Some(req) = ring.next_batch_request() else {
                break;
            };
            let rsp = self.handle(gc, req);
            ring.push_response(rsp);
            handled += 1;
        }
        let notify = handled > 0 && ring.push_responses_and_check_notify();
        let more = ring.final_check_for_requests();
        Ok(Served {
            handled,
            notify,
            more,
        })
    }
}

/// Grant-copies `dst.len()` bytes (at most a page) from the start of `gref` of `domid`.
fn copy_from_guest<G: GrantCopy + ?Sized>(
    gc: &mut G,
    domid: u16,
    gref: u32,
    dst: &mut [u8],
) -> Result<(), CtrlError> {
    let len = u16::try_from(dst.len())
        .ok()
        .filter(|l| usize::from(*l) <= PAGE_SIZE)
        .ok_or(CtrlError::MappingBeyondPage(dst.len() as u32))?;
    let mut ops = [CopyOp {
        domid,
        gref,
        offset: 0,
        local: dst.as_mut_ptr(),
        len,
        dir: CopyDir::FromForeign,
        status: gntst::GENERAL_ERROR,
    }];
    // SAFETY: the op's local side is `dst`, a buffer we borrow exclusively for the whole
    // call, writable and exactly `len` bytes long; nothing else refers to it meanwhile.
    unsafe { gc.copy(&mut ops) }.map_err(|e| CtrlError::Submit(e.to_string()))?;
    match ops[0].status {
        gntst::OKAY => Ok(()),
        status => Err(CtrlError::GrantCopy { gref, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netif::abi::{
        XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV6,
        XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
        XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING, XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
        XEN_NETIF_CTRL_TYPE_INVALID,
    };
    use crate::netif::ring::{FrontRing, SharedPage};
    use crate::toeplitz::tests::{v4_frame, v6_frame, v6_vectors, MS_KEY, V4_VECTORS};
    use crate::toeplitz::HashType;
    use crate::wire::IPPROTO_TCP;
    use std::collections::HashMap;
    use xen::XenError;

    const DOMID: u16 = 7;
    const SUCCESS: u32 = XEN_NETIF_CTRL_STATUS_SUCCESS;
    const NOT_SUPPORTED: u32 = XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED;
    const INVALID: u32 = XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER;

    /// A guest's granted pages as Xen checks them for a copy: the right domain, a known
    /// gref, read access only (the key and table grants may be read-only), the range
    /// inside the page.
    struct FakeGrants {
        domid: u16,
        pages: HashMap<u32, Box<[u8; PAGE_SIZE]>>,
        fail_submit: bool,
        ops: usize,
    }

    impl FakeGrants {
        fn new() -> Self {
            FakeGrants {
                domid: DOMID,
                pages: HashMap::new(),
                fail_submit: false,
                ops: 0,
            }
        }

        fn grant(&mut self, gref: u32, bytes: &[u8]) {
            let mut p = Box::new([0u8; PAGE_SIZE]);
            p[..bytes.len()].copy_from_slice(bytes);
            self.pages.insert(gref, p);
        }

        fn grant_entries(&mut self, gref: u32, entries: &[u32]) {
            let b: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.grant(gref, &b);
        }

        fn one(&self, op: &CopyOp) -> i16 {
            if op.domid != self.domid {
                return gntst::BAD_DOMAIN;
            }
            let Some(page) = self.pages.get(&op.gref) else {
                return gntst::BAD_GNTREF;
            };
            if op.dir != CopyDir::FromForeign {
                return gntst::GENERAL_ERROR;
            }
            let (off, len) = (usize::from(op.offset), usize::from(op.len));
            if off + len > PAGE_SIZE {
                return gntst::BAD_COPY_ARG;
            }
            // SAFETY: `op.local` is valid for `len` writable bytes (GrantCopy::copy's
            // contract); the source range is inside the page (checked).
            unsafe { std::ptr::copy_nonoverlapping(page.as_ptr().add(off), op.local, len) };
            gntst::OKAY
        }
    }

    impl GrantCopy for FakeGrants {
        unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
            if self.fail_submit {
                return Err(XenError::Invalid("submission refused".into()));
            }
            for op in ops.iter_mut() {
                self.ops += 1;
                op.status = self.one(op);
            }
            Ok(())
        }
    }

    fn req(ty: u16, data: [u32; 3]) -> CtrlRequest {
        CtrlRequest {
            id: 0x1234,
            ty,
            data,
        }
    }

    /// Sends one request; checks id and type are echoed; returns (status, data).
    fn send(s: &mut HashState, gc: &mut FakeGrants, ty: u16, data: [u32; 3]) -> (u32, u32) {
        let r = s.handle(gc, req(ty, data));
        assert_eq!((r.id, r.ty), (0x1234, ty));
        (r.status, r.data)
    }

    /// Sends a request that must fail with `status` and leave the state untouched.
    fn refused(s: &mut HashState, gc: &mut FakeGrants, ty: u16, data: [u32; 3], status: u32) {
        let before = s.clone();
        assert_eq!(
            send(s, gc, ty, data),
            (status, 0),
            "type {ty} data {data:?}"
        );
        assert_eq!(
            *s, before,
            "state changed by refused type {ty} data {data:?}"
        );
    }

    fn toeplitz_state(num_queues: u32) -> (HashState, FakeGrants) {
        let mut s = HashState::new(DOMID, num_queues);
        let mut gc = FakeGrants::new();
        gc.grant(1, &MS_KEY);
        let alg = XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ;
        let set_alg = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM;
        assert_eq!(send(&mut s, &mut gc, set_alg, [alg, 0, 0]), (SUCCESS, 0));
        let key = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY;
        assert_eq!(send(&mut s, &mut gc, key, [1, 40, 0]), (SUCCESS, 0));
        let flags = XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS;
        assert_eq!(send(&mut s, &mut gc, flags, [0xF, 0, 0]), (SUCCESS, 0));
        (s, gc)
    }

    #[test]
    fn defaults_and_queries() {
        let mut s = HashState::new(DOMID, 4);
        let mut gc = FakeGrants::new();
        assert_eq!(s.algorithm(), HashAlgorithm::None);
        assert_eq!(s.flags(), HashFlags::NONE);
        assert_eq!(s.key(), &ToeplitzKey::ZERO);
        assert!(s.mapping().is_empty());
        let get_flags = XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS;
        refused(&mut s, &mut gc, get_flags, [0; 3], NOT_SUPPORTED);
        let get_size = XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE;
        assert_eq!(send(&mut s, &mut gc, get_size, [0; 3]), (SUCCESS, 128));
        assert_eq!(s.generation(), 0);
    }

    #[test]
    fn set_algorithm() {
        let mut s = HashState::new(DOMID, 4);
        let mut gc = FakeGrants::new();
        let ty = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM;
        assert_eq!(send(&mut s, &mut gc, ty, [1, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.algorithm(), HashAlgorithm::Toeplitz);
        let get_flags = XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS;
        assert_eq!(send(&mut s, &mut gc, get_flags, [0; 3]), (SUCCESS, 0xF));
        for bad in [2, 3, 0x100, u32::MAX] {
            refused(&mut s, &mut gc, ty, [bad, 0, 0], INVALID);
        }
        assert_eq!(send(&mut s, &mut gc, ty, [0, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.algorithm(), HashAlgorithm::None);
        refused(&mut s, &mut gc, get_flags, [0; 3], NOT_SUPPORTED);
    }

    #[test]
    fn set_flags() {
        let mut s = HashState::new(DOMID, 4);
        let mut gc = FakeGrants::new();
        let ty = XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS;
        // No algorithm yet: refused, even for valid flags.
        refused(&mut s, &mut gc, ty, [0x3, 0, 0], INVALID);
        let alg = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM;
        assert_eq!(send(&mut s, &mut gc, alg, [1, 0, 0]), (SUCCESS, 0));
        for bits in [0x10, 0x1F, 0x8000_0000, u32::MAX] {
            refused(&mut s, &mut gc, ty, [bits, 0, 0], INVALID);
        }
        let v4_v6 = XEN_NETIF_CTRL_HASH_TYPE_IPV4 | XEN_NETIF_CTRL_HASH_TYPE_IPV6;
        assert_eq!(send(&mut s, &mut gc, ty, [v4_v6, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.flags().bits(), v4_v6);
        // Flags survive switching the algorithm off and on (Linux keeps them).
        assert_eq!(send(&mut s, &mut gc, alg, [0, 0, 0]), (SUCCESS, 0));
        assert_eq!(send(&mut s, &mut gc, alg, [1, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.flags().bits(), v4_v6);
        assert_eq!(send(&mut s, &mut gc, ty, [0, 0, 0]), (SUCCESS, 0));
        assert!(s.flags().is_empty());
    }

    #[test]
    fn set_key() {
        let mut s = HashState::new(DOMID, 4);
        let mut gc = FakeGrants::new();
        let ty = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY;
        gc.grant(5, &MS_KEY);
        // No algorithm is needed to set a key.
        assert_eq!(send(&mut s, &mut gc, ty, [5, 40, 0]), (SUCCESS, 0));
        assert_eq!(s.key().as_bytes(), &MS_KEY);
        // A shorter key replaces the whole key: the rest is zero.
        assert_eq!(send(&mut s, &mut gc, ty, [5, 10, 0]), (SUCCESS, 0));
        assert_eq!(s.key(), &ToeplitzKey::from_slice(&MS_KEY[..10]).unwrap());
        assert_eq!(send(&mut s, &mut gc, ty, [5, 40, 0]), (SUCCESS, 0));
        let ops = gc.ops;
        // Too long: refused before any copy (Linux: INVALID_PARAMETER, not BUFFER_OVERFLOW).
        for len in [41, 4096, u32::MAX] {
            refused(&mut s, &mut gc, ty, [5, len, 0], INVALID);
        }
        assert_eq!(gc.ops, ops);
        // Unknown gref, failed submission: refused, old key kept.
        refused(&mut s, &mut gc, ty, [6, 40, 0], INVALID);
        gc.fail_submit = true;
        refused(&mut s, &mut gc, ty, [5, 40, 0], INVALID);
        gc.fail_submit = false;
        // A grant of another domain (the vif's domid is what is copied from).
        let mut other = FakeGrants::new();
        other.domid = DOMID + 1;
        other.grant(5, &MS_KEY);
        refused(&mut s, &mut other, ty, [5, 40, 0], INVALID);
        // Length 0 clears the key without a copy, even with a bogus gref.
        let ops = gc.ops;
        assert_eq!(send(&mut s, &mut gc, ty, [999, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.key(), &ToeplitzKey::ZERO);
        assert_eq!(gc.ops, ops);
    }

    #[test]
    fn set_mapping_size() {
        let (mut s, mut gc) = toeplitz_state(4);
        let ty = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE;
        assert_eq!(send(&mut s, &mut gc, ty, [128, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &[0u32; 128][..]);
        for bad in [129, 1 << 20, u32::MAX] {
            refused(&mut s, &mut gc, ty, [bad, 0, 0], INVALID);
        }
        // A new size zero-fills the table.
        gc.grant_entries(2, &[3, 2, 1]);
        let map = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        assert_eq!(send(&mut s, &mut gc, map, [2, 3, 0]), (SUCCESS, 0));
        assert_eq!(&s.mapping()[..4], &[3, 2, 1, 0]);
        assert_eq!(send(&mut s, &mut gc, ty, [8, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &[0u32; 8][..]);
        // 0 is accepted (Linux, and netif.h: hash modulo the queue count).
        assert_eq!(send(&mut s, &mut gc, ty, [0, 0, 0]), (SUCCESS, 0));
        assert!(s.mapping().is_empty());
    }

    #[test]
    fn set_mapping() {
        let (mut s, mut gc) = toeplitz_state(4);
        let size = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE;
        let ty = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        // No table yet: any entry is out of range.
        gc.grant_entries(2, &[1]);
        refused(&mut s, &mut gc, ty, [2, 1, 0], INVALID);
        assert_eq!(send(&mut s, &mut gc, size, [8, 0, 0]), (SUCCESS, 0));
        // The whole table.
        gc.grant_entries(2, &[3, 2, 1, 0, 3, 2, 1, 0]);
        assert_eq!(send(&mut s, &mut gc, ty, [2, 8, 0]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &[3, 2, 1, 0, 3, 2, 1, 0]);
        // A sub-table at an offset leaves the rest alone.
        gc.grant_entries(3, &[1, 1]);
        assert_eq!(send(&mut s, &mut gc, ty, [3, 2, 6]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &[3, 2, 1, 0, 3, 2, 1, 1]);
        // Length 0 anywhere up to the end: nothing to copy, success.
        let ops = gc.ops;
        assert_eq!(send(&mut s, &mut gc, ty, [999, 0, 8]), (SUCCESS, 0));
        assert_eq!(gc.ops, ops);

        // Entries naming a queue the vif lacks: nothing published, even the valid ones.
        gc.grant_entries(4, &[0, 1, 2, 4]);
        refused(&mut s, &mut gc, ty, [4, 4, 0], INVALID);
        gc.grant_entries(4, &[u32::MAX]);
        refused(&mut s, &mut gc, ty, [4, 1, 7], INVALID);
        // Out of the table: past the end, offset past the end, offset + length wrapping.
        refused(&mut s, &mut gc, ty, [2, 8, 1], INVALID);
        refused(&mut s, &mut gc, ty, [2, 9, 0], INVALID);
        refused(&mut s, &mut gc, ty, [2, 0, 9], INVALID);
        refused(&mut s, &mut gc, ty, [2, 2, u32::MAX], INVALID);
        refused(&mut s, &mut gc, ty, [2, u32::MAX, 2], INVALID);
        // Longer than a page of entries (also larger than any table).
        assert_eq!(send(&mut s, &mut gc, size, [128, 0, 0]), (SUCCESS, 0));
        refused(&mut s, &mut gc, ty, [2, 1025, 0], INVALID);
        refused(&mut s, &mut gc, ty, [2, 129, 0], INVALID);
        // Failed grant copies.
        refused(&mut s, &mut gc, ty, [77, 4, 0], INVALID);
        gc.fail_submit = true;
        refused(&mut s, &mut gc, ty, [2, 4, 0], INVALID);
        gc.fail_submit = false;
        // The largest table in one request.
        let full: Vec<u32> = (0..128).map(|i| i % 4).collect();
        gc.grant_entries(5, &full);
        assert_eq!(send(&mut s, &mut gc, ty, [5, 128, 0]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &full[..]);
    }

    #[test]
    fn typed_errors_name_the_reason() {
        let (mut s, mut gc) = toeplitz_state(2);
        let map = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        assert_eq!(
            s.apply(&mut gc, req(map, [2, 1, 0])),
            Err(CtrlError::MappingOutOfRange {
                off: 0,
                len: 1,
                size: 0
            })
        );
        s.apply(
            &mut gc,
            req(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [4, 0, 0]),
        )
        .unwrap();
        gc.grant_entries(2, &[0, 5]);
        assert_eq!(
            s.apply(&mut gc, req(map, [2, 2, 1])),
            Err(CtrlError::BadQueue {
                index: 2,
                queue: 5,
                num_queues: 2
            })
        );
        assert_eq!(
            s.apply(&mut gc, req(map, [9, 2, 1])),
            Err(CtrlError::GrantCopy {
                gref: 9,
                status: gntst::BAD_GNTREF
            })
        );
        assert_eq!(CtrlError::KeyTooLong(41).status(), INVALID);
        assert_ne!(
            CtrlError::KeyTooLong(41).status(),
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
        );
    }

    #[test]
    fn unknown_types_are_not_supported() {
        let (mut s, mut gc) = toeplitz_state(4);
        for ty in [
            XEN_NETIF_CTRL_TYPE_INVALID,
            XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE,
            XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
            XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
            11,
            0x8000,
            u16::MAX,
        ] {
            refused(&mut s, &mut gc, ty, [1, 2, 3], NOT_SUPPORTED);
        }
    }

    #[test]
    fn queue_for_follows_the_configuration() {
        let (src, dst, sp, dp, l3, l4) = V4_VECTORS[0];
        let tcp = v4_frame(None, IPPROTO_TCP, src, dst, sp, dp, 0, 0);
        let reply = v4_frame(Some(4), IPPROTO_TCP, dst, src, dp, sp, 0, 0);
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);

        // Nothing configured: symmetric, nothing reported, non-IP to queue 0.
        let s = HashState::new(DOMID, 4);
        let a = s.queue_for(&tcp).unwrap();
        assert_eq!(a.hash, None);
        assert_eq!(s.queue_for(&reply).unwrap().queue, a.queue);
        assert_eq!(s.queue_for(&arp).unwrap().queue, 0);
        assert!(HashState::new(DOMID, 0).queue_for(&tcp).is_none());

        // Toeplitz, no table: hash modulo the queue count; the hash is reported.
        let (mut s, mut gc) = toeplitz_state(3);
        let st = s.queue_for(&tcp).unwrap();
        assert_eq!(st.queue, l4 % 3);
        assert_eq!(
            st.hash,
            Some(FrameHash {
                value: l4,
                ty: HashType::Ipv4Tcp
            })
        );
        // No type for ARP: hash 0, queue 0, nothing reported.
        assert_eq!(
            s.queue_for(&arp),
            Some(Steering {
                queue: 0,
                hash: None
            })
        );
        // Address types only: the L3 hash.
        let flags = XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS;
        let v4 = XEN_NETIF_CTRL_HASH_TYPE_IPV4;
        assert_eq!(send(&mut s, &mut gc, flags, [v4, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.queue_for(&tcp).unwrap().hash.unwrap().value, l3);
        assert_eq!(send(&mut s, &mut gc, flags, [0xF, 0, 0]), (SUCCESS, 0));

        // With a table: the entry at hash % size.
        let size = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE;
        assert_eq!(send(&mut s, &mut gc, size, [5, 0, 0]), (SUCCESS, 0));
        gc.grant_entries(2, &[2, 1, 0, 2, 1]);
        let map = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        assert_eq!(send(&mut s, &mut gc, map, [2, 5, 0]), (SUCCESS, 0));
        let table = [2, 1, 0, 2, 1];
        assert_eq!(s.queue_for(&tcp).unwrap().queue, table[(l4 % 5) as usize]);
        assert_eq!(s.queue_for(&arp).unwrap().queue, table[0]);
        for (src, dst, sp, dp, _, l4) in v6_vectors() {
            let f = v6_frame(None, IPPROTO_TCP, src, dst, sp, dp, &[]);
            let st = s.queue_for(&f).unwrap();
            assert_eq!(st.queue, table[(l4 % 5) as usize]);
            assert_eq!(st.hash.unwrap().ty, HashType::Ipv6Tcp);
        }
        // Algorithm back to none: the default again, nothing reported.
        let alg = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM;
        assert_eq!(send(&mut s, &mut gc, alg, [0, 0, 0]), (SUCCESS, 0));
        assert_eq!(s.queue_for(&tcp).unwrap().hash, None);
    }

    /// Random requests of every type with plausible and absurd arguments: never a panic,
    /// always Linux's status set, a refused request changes nothing, and no mapping entry
    /// or steering decision ever names a queue the vif lacks.
    #[test]
    fn random_requests_keep_the_invariants() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 32) as u32
        };
        let (src, dst, sp, dp, ..) = V4_VECTORS[1];
        let (s6, d6, ..) = v6_vectors()[1];
        let frames = [
            v4_frame(None, IPPROTO_TCP, src, dst, sp, dp, 0, 0),
            v4_frame(Some(2), 17, dst, src, dp, sp, 0x2000, 0),
            v6_frame(None, IPPROTO_TCP, s6, d6, sp, dp, &[(0, 8)]),
            vec![0xff; 20],
        ];
        let mut outcomes = HashMap::new();
        for num_queues in [1u32, 3, 8] {
            let mut s = HashState::new(DOMID, num_queues);
            let mut gc = FakeGrants::new();
            // grefs 0..8: random bytes; small values in the first ones so some tables pass.
            for gref in 0..8u32 {
                let bytes: Vec<u8> = (0..PAGE_SIZE)
                    .map(|i| {
                        let r = next();
                        if gref < 4 && i % 4 == 0 {
                            (r % (num_queues + u32::from(gref == 3))) as u8
                        } else if gref < 4 {
                            0
                        } else {
                            r as u8
                        }
                    })
                    .collect();
                gc.grant(gref, &bytes);
            }
            for _ in 0..20_000 {
                let ty = match next() % 10 {
                    9 => next() as u16,
                    t => t as u16,
                };
                let mut arg = || match next() % 6 {
                    0 => next(),
                    1 => u32::MAX - next() % 4,
                    2 => next() % 8,
                    3 => next() % 200,
                    _ => next() % 48,
                };
                let data = [arg(), arg(), arg()];
                gc.fail_submit = next() % 50 == 0;
                let before = s.clone();
                let r = s.handle(&mut gc, req(ty, data));
                *outcomes.entry((ty.min(11), r.status)).or_insert(0u32) += 1;
                assert_eq!((r.id, r.ty), (0x1234, ty));
                assert!(matches!(r.status, SUCCESS | NOT_SUPPORTED | INVALID));
                if r.status != SUCCESS {
                    assert_eq!(r.data, 0);
                    assert_eq!(s, before, "refused {ty} {data:?} changed the state");
                }
                assert!(s.mapping().len() <= MAX_HASH_MAPPING_SIZE as usize);
                assert!(
                    s.mapping().iter().all(|q| *q < num_queues),
                    "entry out of range after {ty} {data:?}: {:?}",
                    s.mapping()
                );
                for f in &frames {
                    assert!(s.queue_for(f).unwrap().queue < num_queues);
                }
            }
        }
        // Every request type both succeeded and was refused somewhere in the run (the
        // queries and unknown types cannot fail or succeed respectively).
        for ty in 1..=7u16 {
            let ok = outcomes.get(&(ty, SUCCESS)).copied().unwrap_or(0);
            let bad = outcomes.get(&(ty, INVALID)).copied().unwrap_or(0)
                + outcomes.get(&(ty, NOT_SUPPORTED)).copied().unwrap_or(0);
            assert!(ok > 0, "type {ty} never succeeded: {outcomes:?}");
            assert!(bad > 0 || ty == 4, "type {ty} never refused: {outcomes:?}");
        }
    }

    #[test]
    fn serves_the_shared_ring() {
        let page = SharedPage::new_owned();
        let mut front = FrontRing::<CtrlRing>::init(page.clone());
        let mut back = BackRing::<CtrlRing>::attach(page.clone());
        let mut s = HashState::new(DOMID, 4);
        let mut gc = FakeGrants::new();
        gc.grant(1, &MS_KEY);
        let reqs = [
            (XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [1, 0, 0]),
            (XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0, 0, 0]),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [0x20, 0, 0]),
            (XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [1, 40, 0]),
            (XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, [0, 0, 0]),
            (XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING, [0, 0, 0]),
        ];
        for (i, (ty, data)) in reqs.iter().enumerate() {
            front
                .push_request(CtrlRequest {
                    id: i as u16,
                    ty: *ty,
                    data: *data,
                })
                .unwrap();
        }
        front.push_requests_and_check_notify();
        let served = s.serve(&mut back, &mut gc).unwrap();
        assert_eq!(served.handled, 6);
        assert!(
            served.notify,
            "the frontend waits for responses (rsp_event 1)"
        );
        assert!(!served.more);
        let mut got = Vec::new();
        while let Some(r) = front.next_response().unwrap() {
            got.push((r.id, r.ty, r.status, r.data));
        }
        assert_eq!(
            got,
            vec![
                (0, 7, SUCCESS, 0),
                (1, 1, SUCCESS, 0xF),
                (2, 2, INVALID, 0),
                (3, 3, SUCCESS, 0),
                (4, 4, SUCCESS, 128),
                (5, 9, NOT_SUPPORTED, 0),
            ]
        );
        assert_eq!(s.key().as_bytes(), &MS_KEY);
        // Idle: nothing handled, notifications re-armed for the next request.
        let idle = s.serve(&mut back, &mut gc).unwrap();
        assert_eq!(idle, Served::default());
        assert_eq!(back.req_event(), back.req_cons().wrapping_add(1));
        // A producer index beyond the ring: a rogue frontend.
        // SAFETY: the page is ours; req_prod is the first u32 of the header.
        unsafe { (page.as_ptr() as *mut u32).write_volatile(back.req_cons() + 1000) };
        assert!(matches!(
            s.serve(&mut back, &mut gc),
            Err(RingError::ImpossibleIndex { .. })
        ));
    }

    /// Key and table read through the simulated host's grant table (Xen's checks).
    #[test]
    fn grant_copies_on_the_sim_host() {
        use xen::sim::grant::{GTF_PERMIT_ACCESS, GTF_READONLY};
        use xen::sim::{DomainMem, SimHost, SimOptions};
        let host = SimHost::start(SimOptions::default()).expect("sim host");
        let domid = 9;
        host.add_domain(domid, "ctrl", 16, 16).unwrap();
        let mem = DomainMem::open(host.layout(), domid).unwrap();
        mem.write_frame(3, 0, &MS_KEY).unwrap();
        let table: Vec<u8> = [1u32, 0, 1, 1]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        mem.write_frame(4, 0, &table).unwrap();
        let bad: Vec<u8> = [1u32, 2].iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_frame(5, 0, &bad).unwrap();
        // Read-only grants to dom0, as a frontend may give them; gref 4 to another domain.
        mem.set_entry(1, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 3)
            .unwrap();
        mem.set_entry(2, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 4)
            .unwrap();
        mem.set_entry(3, GTF_PERMIT_ACCESS, 0, 5).unwrap();
        mem.set_entry(4, GTF_PERMIT_ACCESS, 1, 4).unwrap();
        let mut gc = host.grants(0);
        let mut s = HashState::new(domid, 2);
        let mut send = |s: &mut HashState, ty, data| {
            let r = s.handle(&mut gc, req(ty, data));
            (r.status, r.data)
        };
        let key = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY;
        assert_eq!(send(&mut s, key, [1, 40, 0]), (SUCCESS, 0));
        assert_eq!(s.key().as_bytes(), &MS_KEY);
        let size = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE;
        assert_eq!(send(&mut s, size, [4, 0, 0]), (SUCCESS, 0));
        let map = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        assert_eq!(send(&mut s, map, [2, 4, 0]), (SUCCESS, 0));
        assert_eq!(s.mapping(), &[1, 0, 1, 1]);
        let before = s.clone();
        // Queue 2 of 2: refused. Another domain's grant, a gref beyond the table: refused.
        assert_eq!(send(&mut s, map, [3, 2, 0]), (INVALID, 0));
        assert_eq!(send(&mut s, map, [4, 4, 0]), (INVALID, 0));
        assert_eq!(send(&mut s, key, [4000, 40, 0]), (INVALID, 0));
        // A revoked grant.
        mem.set_entry(1, 0, 0, 3).unwrap();
        assert_eq!(send(&mut s, key, [1, 40, 0]), (INVALID, 0));
        assert_eq!(s, before);
        drop(gc);
        host.remove_domain(domid).unwrap();
    }
}
