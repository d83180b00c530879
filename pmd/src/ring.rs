use crate::error::{rte_errno, strerror, PmdError};
use crate::mbuf::Mbuf;
use dpdk_sys as sys;
use std::ffi::CString;
use std::ptr::NonNull;

/// A multi-producer, single-consumer `rte_ring` of mbufs: how one lcore hands packets to the
/// lcore that owns their destination. Any thread may `enqueue`; only the owner may
/// `dequeue` (`&mut self` on the consumer half enforces that).
pub struct MbufRing {
    ptr: NonNull<sys::rte_ring>,
}

// SAFETY: rte_ring is lock-free with multi-producer enqueue; the consumer side is only
// reachable through &mut (single consumer), so sharing &MbufRing across threads is sound.
unsafe impl Send for MbufRing {}
// SAFETY: as above: &self only exposes the multi-producer enqueue and counters.
unsafe impl Sync for MbufRing {}

impl MbufRing {
    /// Creates a ring for `count` mbufs (rounded up to a power of two by DPDK minus one
    /// slot; use `RING_F_EXACT_SZ` semantics: exactly `count` usable) on NUMA `socket`.
    pub fn new(name: &str, count: u32, socket: i32) -> Result<MbufRing, PmdError> {
        let c = CString::new(name)
            .map_err(|_| PmdError::InvalidArgument(format!("ring name {name:?}")))?;
        let flags = sys::RING_F_SC_DEQ | sys::RING_F_EXACT_SZ;
        // SAFETY: valid C string; EAL initialised (rte_ring_create fails otherwise).
        let p = unsafe { sys::rte_ring_create(c.as_ptr(), count, socket, flags) };
        NonNull::new(p).map(|ptr| MbufRing { ptr }).ok_or_else(|| {
            let code = rte_errno();
            PmdError::Mempool {
                name: name.to_owned(),
                code,
                msg: strerror(code),
            }
        })
    }

    /// Moves as many mbufs from the front of `pkts` into the ring as fit; those enqueued
    /// are removed from `pkts`, the rest stay (for the caller to drop and count).
    pub fn enqueue(&self, pkts: &mut Vec<Mbuf>) -> usize {
        if pkts.is_empty() {
            return 0;
        }
        // SAFETY: pkts holds owned mbufs (repr(transparent) pointers); the ring takes the
        // first n; we close the gap and shrink without dropping the moved ones.
        unsafe {
            let base = pkts.as_mut_ptr();
            let total = pkts.len();
            let n = sys::nbd_ring_enqueue_burst(
                self.ptr.as_ptr(),
                base as *const *mut std::ffi::c_void,
                total as u32,
                std::ptr::null_mut(),
            ) as usize;
            std::ptr::copy(base.add(n), base, total - n);
            pkts.set_len(total - n);
            n
        }
    }

    /// Takes up to `max` mbufs out of the ring into `out` (consumer only).
    pub fn dequeue(&mut self, out: &mut Vec<Mbuf>, max: u32) -> usize {
        out.reserve(max as usize);
        let len = out.len();
        // SAFETY: room for `max` more; the ring holds owned mbufs that become ours.
        unsafe {
            let dst = out.as_mut_ptr().add(len) as *mut *mut std::ffi::c_void;
            let n = sys::nbd_ring_dequeue_burst(self.ptr.as_ptr(), dst, max, std::ptr::null_mut())
                as usize;
            out.set_len(len + n);
            n
        }
    }

    /// Mbufs waiting in the ring.
    pub fn len(&self) -> u32 {
        // SAFETY: valid ring.
        unsafe { sys::nbd_ring_count(self.ptr.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for MbufRing {
    fn drop(&mut self) {
        // Free what is still queued, then the ring: nothing leaks.
        let mut rest = Vec::new();
        while self.dequeue(&mut rest, 64) > 0 {
            crate::mbuf::free_bulk(&mut rest);
        }
        // SAFETY: sole owner; empty now.
        unsafe { sys::rte_ring_free(self.ptr.as_ptr()) };
    }
}
