use crate::error::{rte_errno, strerror, PmdError};
use crate::mbuf::Mbuf;
use dpdk_sys as sys;
use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

/// A multi-producer, single-consumer `rte_ring` of mbufs: how one lcore hands packets to the
/// lcore that owns their destination. [`MbufRing::new`] returns a cloneable producer
/// handle for every sender and the single consumer for the owner; the types enforce the
/// ring's single-consumer contract. The ring (and any mbufs still in it) is freed when the
/// last handle goes.
pub struct MbufRing;

struct Inner {
    ptr: NonNull<sys::rte_ring>,
}

// SAFETY: rte_ring enqueue is multi-producer safe; dequeue is reachable only through the
// unique RingConsumer (&mut), so the pointer may be shared across threads.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle: no producer or consumer remains. Free queued mbufs, then the ring.
        let mut rest: Vec<Mbuf> = Vec::new();
        loop {
            rest.reserve(64);
            // SAFETY: no other handle exists; the ring holds owned mbufs.
            let n = unsafe {
                let dst = rest.as_mut_ptr() as *mut *mut std::ffi::c_void;
                let n =
                    sys::nbd_ring_dequeue_burst(self.ptr.as_ptr(), dst, 64, std::ptr::null_mut());
                rest.set_len(n as usize);
                n
            };
            crate::mbuf::free_bulk(&mut rest);
            if n == 0 {
                break;
            }
        }
        // SAFETY: sole owner; empty now.
        unsafe { sys::rte_ring_free(self.ptr.as_ptr()) };
    }
}

/// The sending side; clone it for every lcore that hands packets over.
#[derive(Clone)]
pub struct RingProducer(Arc<Inner>);

/// The receiving side; exactly one exists.
pub struct RingConsumer(Arc<Inner>);

impl MbufRing {
    /// Creates a ring for exactly `count` mbufs on NUMA `socket` (-1 = any).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        name: &str,
        count: u32,
        socket: i32,
    ) -> Result<(RingProducer, RingConsumer), PmdError> {
        let c = CString::new(name)
            .map_err(|_| PmdError::InvalidArgument(format!("ring name {name:?}")))?;
        let flags = sys::RING_F_SC_DEQ | sys::RING_F_EXACT_SZ;
        // SAFETY: valid C string; EAL initialised (rte_ring_create fails otherwise).
        let p = unsafe { sys::rte_ring_create(c.as_ptr(), count, socket, flags) };
        let ptr = NonNull::new(p).ok_or_else(|| {
            let code = rte_errno();
            PmdError::Mempool {
                name: name.to_owned(),
                code,
                msg: strerror(code),
            }
        })?;
        let inner = Arc::new(Inner { ptr });
        Ok((RingProducer(inner.clone()), RingConsumer(inner)))
    }
}

impl RingProducer {
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
                self.0.ptr.as_ptr(),
                base as *const *mut std::ffi::c_void,
                total as u32,
                std::ptr::null_mut(),
            ) as usize;
            std::ptr::copy(base.add(n), base, total - n);
            pkts.set_len(total - n);
            n
        }
    }

    /// Mbufs waiting in the ring.
    pub fn len(&self) -> u32 {
        // SAFETY: valid ring.
        unsafe { sys::nbd_ring_count(self.0.ptr.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RingConsumer {
    /// Takes up to `max` mbufs out of the ring into `out`.
    pub fn dequeue(&mut self, out: &mut Vec<Mbuf>, max: u32) -> usize {
        out.reserve(max as usize);
        let len = out.len();
        // SAFETY: room for `max` more; this is the only consumer; the ring holds owned
        // mbufs that become ours.
        unsafe {
            let dst = out.as_mut_ptr().add(len) as *mut *mut std::ffi::c_void;
            let n = sys::nbd_ring_dequeue_burst(self.0.ptr.as_ptr(), dst, max, std::ptr::null_mut())
                as usize;
            out.set_len(len + n);
            n
        }
    }

    /// Mbufs waiting in the ring.
    pub fn len(&self) -> u32 {
        // SAFETY: valid ring.
        unsafe { sys::nbd_ring_count(self.0.ptr.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
