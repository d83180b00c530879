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

    /// Creates a pool of `n` mbufs (`data_room` bytes each, headroom included) whose
    /// memory is the caller's `base..base+len` instead of DPDK's heap: for mbuf data that
    /// must live in particular pages (e.g. pages dom0 grants to itself, so a raw
    /// `GNTTABOP_copy` can name them). `base` and `len` must be multiples of `page_size`.
    /// Objects are placed so that none crosses a page of the EAL's page size (4 KiB
    /// without hugepages), as DPDK does for IOVA-contiguous objects; the IOVA of each
    /// object is what DPDK computes for the address (the VA in IOVA-as-VA mode).
    /// Fails if the memory holds fewer than `n` mbufs.
    ///
    /// # Safety
    /// `base..base+len` must be valid, writable memory, used by nothing else, that stays
    /// mapped until the pool is dropped (DPDK never frees it).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn from_memory(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        base: *mut u8,
        len: usize,
        page_size: usize,
    ) -> Result<Mempool, PmdError> {
        let fail = |code: i32| PmdError::Mempool {
            name: name.to_owned(),
            code,
            msg: strerror(code),
        };
        let cname = CString::new(name)
            .map_err(|_| PmdError::InvalidArgument(format!("mempool name {name:?}")))?;
        if base.is_null()
            || page_size == 0
            || !page_size.is_power_of_two()
            || (base as usize) & (page_size - 1) != 0
            || len & (page_size - 1) != 0
        {
            return Err(PmdError::InvalidArgument(format!(
                "mempool {name:?}: memory {base:p}+{len:#x} is not aligned to pages of {page_size:#x}"
            )));
        }
        let elt = std::mem::size_of::<dpdk_sys::rte_mbuf>() as u32 + u32::from(data_room);
        let priv_size = std::mem::size_of::<dpdk_sys::rte_pktmbuf_pool_private>() as u32;
        // SAFETY: valid C string; EAL must be initialised (checked by DPDK: NULL then).
        let mp = unsafe {
            dpdk_sys::rte_mempool_create_empty(cname.as_ptr(), n, elt, cache, priv_size, -1, 0)
        };
        let Some(ptr) = NonNull::new(mp) else {
            return Err(fail(rte_errno()));
        };
        // On error the pool is freed here (not by Drop, which would see the unpopulated
        // slots as mbufs in use and leak it).
        let fail_free = |e: PmdError| {
            // SAFETY: our pool, no mbuf of it handed out yet; freed once.
            unsafe { dpdk_sys::rte_mempool_free(mp) };
            Err(e)
        };
        let ops = c"ring_mp_mc";
        // SAFETY: a fresh, unpopulated pool; DPDK's default mbuf pool ops by name.
        let rc =
            unsafe { dpdk_sys::rte_mempool_set_ops_byname(mp, ops.as_ptr(), std::ptr::null_mut()) };
        if rc != 0 {
            return fail_free(fail(-rc));
        }
        let mut pp = dpdk_sys::rte_pktmbuf_pool_private {
            mbuf_data_room_size: data_room,
            mbuf_priv_size: 0,
            flags: 0,
        };
        // SAFETY: the pool was created with room for this private area; pp is read only
        // during the call.
        unsafe {
            dpdk_sys::rte_pktmbuf_pool_init(
                mp,
                (&mut pp as *mut dpdk_sys::rte_pktmbuf_pool_private).cast(),
            )
        };
        // SAFETY: the caller guarantees the memory (see # Safety); no free callback, so
        // DPDK never releases it.
        let added = unsafe {
            dpdk_sys::rte_mempool_populate_virt(
                mp,
                base.cast(),
                len,
                page_size,
                None,
                std::ptr::null_mut(),
            )
        };
        if added < 0 {
            return fail_free(fail(-added));
        }
        if (added as u32) < n {
            return fail_free(PmdError::InvalidArgument(format!(
                "mempool {name:?}: {len:#x} bytes hold only {added} of {n} mbufs of {data_room} bytes"
            )));
        }
        // SAFETY: every object is a populated mbuf slot of this pktmbuf pool.
        unsafe {
            dpdk_sys::rte_mempool_obj_iter(
                mp,
                Some(dpdk_sys::rte_pktmbuf_init),
                std::ptr::null_mut(),
            )
        };
        Ok(Mempool {
            ptr,
            name: name.to_owned(),
        })
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
