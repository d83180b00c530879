use crate::error::{rte_errno, strerror, PmdError};
use std::ffi::CString;
use std::ptr::NonNull;

/// A DPDK packet-mbuf pool (`rte_pktmbuf_pool_create`): fixed-size buffers on hugepages
/// (or anonymous memory with `--no-huge`), with a per-lcore cache.
pub struct Mempool {
    ptr: NonNull<dpdk_sys::rte_mempool>,
    name: String,
}

// SAFETY: DPDK mempools are designed for concurrent use from many threads (lock-free
// ring + per-lcore caches); the pointer stays valid until Drop.
unsafe impl Send for Mempool {}
// SAFETY: as above; every operation on a shared &Mempool is thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with `data_room` bytes each (headroom included, e.g.
    /// `RTE_MBUF_DEFAULT_BUF_SIZE` = 2176), a per-lcore cache of `cache` mbufs, on NUMA
    /// `socket` (-1 = any). EAL must be initialised.
    pub fn new(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, PmdError> {
        let cname = CString::new(name)
            .map_err(|_| PmdError::InvalidArgument(format!("mempool name {name:?}")))?;
        // SAFETY: cname is a valid C string; EAL must be initialised, which
        // rte_pktmbuf_pool_create checks itself (it fails with an error then).
        let p = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket)
        };
        match NonNull::new(p) {
            Some(ptr) => Ok(Mempool {
                ptr,
                name: name.to_owned(),
            }),
            None => {
                let code = rte_errno();
                Err(PmdError::Mempool {
                    name: name.to_owned(),
                    code,
                    msg: strerror(code),
                })
            }
        }
    }

    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.ptr.as_ptr()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Mbufs currently free in the pool (caches included).
    pub fn available(&self) -> u32 {
        // SAFETY: valid pool pointer.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// Mbufs currently allocated from the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: valid pool pointer.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// Bytes of data room per mbuf (headroom included).
    pub fn data_room(&self) -> u16 {
        // SAFETY: valid pktmbuf pool pointer.
        unsafe { dpdk_sys::nbd_pktmbuf_data_room_size(self.ptr.as_ptr()) }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // Freeing a pool whose mbufs are still out would make them dangle: leak it instead
        // (a bug elsewhere, but never a use-after-free).
        if self.in_use() != 0 {
            eprintln!(
                "netbackd: mempool {} dropped with {} mbufs in use; leaking it",
                self.name,
                self.in_use()
            );
            return;
        }
        // SAFETY: no mbuf of this pool is in use, and self is the only owner.
        unsafe { dpdk_sys::rte_mempool_free(self.ptr.as_ptr()) };
    }
}
