use crate::error::PmdError;
use crate::mempool::Mempool;
use dpdk_sys::rte_mbuf;
use std::ptr::NonNull;

/// An owned DPDK packet buffer (possibly a chain of segments). Freed on drop; handing it to
/// a port (`Port::tx_burst`) consumes it. Safe code can neither leak nor double-free one.
#[repr(transparent)]
pub struct Mbuf(NonNull<rte_mbuf>);

// SAFETY: an Mbuf is exclusively owned; DPDK mbufs may move between threads (that is how
// lcores hand packets to each other) and freeing one from any thread is allowed.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Allocates one mbuf from `pool`.
    pub fn alloc(pool: &Mempool) -> Result<Mbuf, PmdError> {
        // SAFETY: valid pool pointer.
        let m = unsafe { dpdk_sys::nbd_pktmbuf_alloc(pool.as_ptr()) };
        NonNull::new(m).map(Mbuf).ok_or(PmdError::NoMbufs)
    }

    /// Appends `n` fresh mbufs to `out` in one bulk operation (all or none).
    pub fn alloc_bulk(pool: &Mempool, out: &mut Vec<Mbuf>, n: usize) -> Result<(), PmdError> {
        out.reserve(n);
        let len = out.len();
        // SAFETY: `out` has room for n more elements; Mbuf is repr(transparent) over a
        // non-null pointer, so the spare capacity can receive rte_mbuf pointers. On
        // success DPDK wrote n valid pointers, which we then own.
        unsafe {
            let dst = out.as_mut_ptr().add(len) as *mut *mut rte_mbuf;
            if dpdk_sys::nbd_pktmbuf_alloc_bulk(pool.as_ptr(), dst, n as u32) != 0 {
                return Err(PmdError::NoMbufs);
            }
            out.set_len(len + n);
        }
        Ok(())
    }

    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `m` must be a valid mbuf that nothing else owns or frees.
    pub unsafe fn from_raw(m: NonNull<rte_mbuf>) -> Mbuf {
        Mbuf(m)
    }

    /// Gives up ownership; the caller must free or hand over the mbuf.
    pub fn into_raw(self) -> NonNull<rte_mbuf> {
        let p = self.0;
        std::mem::forget(self);
        p
    }

    pub fn as_ptr(&self) -> *mut rte_mbuf {
        self.0.as_ptr()
    }

    fn raw(&self) -> &rte_mbuf {
        // SAFETY: we own a valid mbuf; no mutable alias exists while &self is live.
        unsafe { self.0.as_ref() }
    }

    fn raw_mut(&mut self) -> &mut rte_mbuf {
        // SAFETY: we own a valid mbuf exclusively.
        unsafe { self.0.as_mut() }
    }

    /// Bytes in the whole chain.
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// Bytes in the first segment.
    pub fn data_len(&self) -> u16 {
        self.raw().data_len
    }

    pub fn nb_segs(&self) -> u16 {
        self.raw().nb_segs
    }

    /// The first segment's data.
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's buffer, which
        // we own for the lifetime of &self.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// The first segment's data, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw_mut();
        // SAFETY: as in data(), with exclusive access through &mut self.
        unsafe {
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(usize::from(m.data_off)),
                usize::from(m.data_len),
            )
        }
    }

    /// Pointer to the first segment's data (the grant-copy target/source); `rte_pktmbuf_mtod`
    /// from the fields, without a call across the FFI per packet.
    pub fn data_ptr(&mut self) -> *mut u8 {
        let m = self.raw_mut();
        // SAFETY: data_off lies inside the buffer of a valid mbuf.
        unsafe { (m.buf_addr as *mut u8).add(usize::from(m.data_off)) }
    }

    pub fn headroom(&self) -> u16 {
        // SAFETY: valid owned mbuf.
        unsafe { dpdk_sys::nbd_pktmbuf_headroom(self.0.as_ptr()) }
    }

    /// Free bytes after the data of the last segment (`rte_pktmbuf_tailroom`, read from
    /// the fields here: an FFI call per packet costs more than the arithmetic).
    pub fn tailroom(&self) -> u16 {
        let last = self.last_segment();
        // SAFETY: `last` is a segment of our chain, valid while &self is.
        let l = unsafe { &*last };
        l.buf_len - (l.data_off + l.data_len)
    }

    fn last_segment(&self) -> *mut rte_mbuf {
        let mut m = self.0.as_ptr();
        // One segment (the head's count, in its first cache line; `next` is in the second).
        if self.raw().nb_segs == 1 {
            return m;
        }
        // SAFETY: walking our own chain; `next` is null-terminated.
        unsafe {
            while !(*m).next.is_null() {
                m = (*m).next;
            }
        }
        m
    }

    /// Extends the last segment by `len` bytes and returns them (uninitialised contents
    /// from earlier use), or None when the tailroom is too small (`rte_pktmbuf_append`,
    /// done on the fields here as for `tailroom`).
    pub fn append(&mut self, len: u16) -> Option<&mut [u8]> {
        let last = self.last_segment();
        // SAFETY: `last` is a segment of our chain, exclusively ours through &mut self;
        // after the tailroom check, data_off + data_len + len <= buf_len, so the returned
        // bytes lie inside its buffer.
        unsafe {
            let l = &mut *last;
            if len > l.buf_len - (l.data_off + l.data_len) {
                return None;
            }
            let p = (l.buf_addr as *mut u8).add(usize::from(l.data_off) + usize::from(l.data_len));
            l.data_len += len;
            self.0.as_mut().pkt_len += u32::from(len);
            Some(std::slice::from_raw_parts_mut(p, usize::from(len)))
        }
    }

    /// Prepends `len` bytes to the first segment (into the headroom).
    pub fn prepend(&mut self, len: u16) -> Option<&mut [u8]> {
        // SAFETY: as in append().
        unsafe {
            let p = dpdk_sys::nbd_pktmbuf_prepend(self.0.as_ptr(), len);
            if p.is_null() {
                None
            } else {
                Some(std::slice::from_raw_parts_mut(
                    p as *mut u8,
                    usize::from(len),
                ))
            }
        }
    }

    /// Removes `len` bytes from the start of the first segment.
    pub fn adj(&mut self, len: u16) -> bool {
        // SAFETY: valid owned mbuf.
        !unsafe { dpdk_sys::nbd_pktmbuf_adj(self.0.as_ptr(), len) }.is_null()
    }

    /// Removes `len` bytes from the end of the last segment.
    pub fn trim(&mut self, len: u16) -> bool {
        // SAFETY: valid owned mbuf.
        unsafe { dpdk_sys::nbd_pktmbuf_trim(self.0.as_ptr(), len) == 0 }
    }

    /// Appends `tail`'s chain to this one. On failure (too many segments) `tail` is
    /// given back.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        // SAFETY: both are valid owned chains; on success DPDK links tail into ours, so we
        // stop owning it separately.
        let ret = unsafe { dpdk_sys::nbd_pktmbuf_chain(self.0.as_ptr(), tail.0.as_ptr()) };
        if ret == 0 {
            std::mem::forget(tail);
            Ok(())
        } else {
            Err(tail)
        }
    }

    /// Iterates the segments' data in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut m = self.0.as_ptr();
        std::iter::from_fn(move || {
            if m.is_null() {
                return None;
            }
            // SAFETY: m is a segment of our chain, valid while &self is.
            unsafe {
                let s = std::slice::from_raw_parts(
                    ((*m).buf_addr as *const u8).add(usize::from((*m).data_off)),
                    usize::from((*m).data_len),
                );
                m = (*m).next;
                Some(s)
            }
        })
    }

    /// Allocates a fresh mbuf from the pool this one came from.
    pub fn alloc_like(&self) -> Result<Mbuf, PmdError> {
        // SAFETY: every pktmbuf records its (valid, still existing) pool.
        let m = unsafe { dpdk_sys::nbd_pktmbuf_alloc(self.raw().pool) };
        NonNull::new(m).map(Mbuf).ok_or(PmdError::NoMbufs)
    }

    /// Copies `dst.len()` bytes of the packet starting at `off` (across segments) into
    /// `dst`; false if the packet is shorter.
    pub fn read_at(&self, mut off: usize, dst: &mut [u8]) -> bool {
        let mut done = 0;
        for s in self.segments() {
            if done == dst.len() {
                break;
            }
            if off >= s.len() {
                off -= s.len();
                continue;
            }
            let n = (s.len() - off).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&s[off..off + n]);
            done += n;
            off = 0;
        }
        done == dst.len()
    }

    /// Appends `data` at the end of the packet, chaining new mbufs from the same pool when
    /// the last segment is full.
    pub fn extend_from_slice(&mut self, mut data: &[u8]) -> Result<(), PmdError> {
        while !data.is_empty() {
            let room = usize::from(self.tailroom());
            if room == 0 {
                let next = self.alloc_like()?;
                self.chain(next).map_err(|_| PmdError::NoMbufs)?;
                continue;
            }
            let n = room.min(data.len());
            self.append(n as u16)
                .expect("within tailroom")
                .copy_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Removes the 802.1Q tag from the frame and returns its TCI; None (frame unchanged)
    /// when the frame is untagged or its first segment is too short to hold a tag.
    pub fn vlan_strip(&mut self) -> Option<u16> {
        // rte_vlan_strip reads the 18-byte tagged header without checking the length.
        if self.data_len() < 18 {
            return None;
        }
        // SAFETY: valid owned mbuf whose first segment holds at least 18 bytes.
        if unsafe { dpdk_sys::nbd_vlan_strip(self.0.as_ptr()) } == 0 {
            Some(self.vlan_tci())
        } else {
            None
        }
    }

    /// Inserts an 802.1Q tag with `tci` after the MAC addresses (needs 4 bytes of headroom
    /// and an unshared mbuf).
    pub fn vlan_insert(&mut self, tci: u16) -> Result<(), PmdError> {
        self.set_vlan_tci(tci);
        let mut p = self.0.as_ptr();
        // SAFETY: valid owned mbuf; rte_vlan_insert may only modify *p in place (it never
        // replaces the mbuf in 22.11), checks sharing, length and headroom itself.
        let ret = unsafe { dpdk_sys::nbd_vlan_insert(&mut p) };
        debug_assert_eq!(p, self.0.as_ptr());
        if ret == 0 {
            Ok(())
        } else {
            Err(PmdError::InvalidArgument(format!(
                "cannot insert VLAN tag ({})",
                crate::error::strerror(-ret)
            )))
        }
    }

    /// A full copy of the packet (all segments) from `pool`, for flooding one frame to
    /// several destinations that may each change it.
    pub fn deep_copy(&self, pool: &Mempool) -> Result<Mbuf, PmdError> {
        // SAFETY: valid source chain and pool; DPDK returns a new owned chain or null.
        let m = unsafe { dpdk_sys::rte_pktmbuf_copy(self.0.as_ptr(), pool.as_ptr(), 0, u32::MAX) };
        NonNull::new(m).map(Mbuf).ok_or(PmdError::NoMbufs)
    }

    /// (data pointer, length) of every segment, for filling or reading them by DMA-like
    /// copies (grant copies) that take raw addresses.
    pub fn segment_ptrs(&mut self, out: &mut Vec<(*mut u8, usize)>) {
        out.clear();
        let mut m = self.0.as_ptr();
        // SAFETY: walking our own chain (exclusive through &mut self).
        unsafe {
            while !m.is_null() {
                out.push((
                    ((*m).buf_addr as *mut u8).add(usize::from((*m).data_off)),
                    usize::from((*m).data_len),
                ));
                m = (*m).next;
            }
        }
    }

    /// Copies the whole packet out (tests, slow paths).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.pkt_len() as usize);
        for s in self.segments() {
            v.extend_from_slice(s);
        }
        v
    }

    pub fn ol_flags(&self) -> u64 {
        self.raw().ol_flags
    }

    pub fn set_ol_flags(&mut self, flags: u64) {
        self.raw_mut().ol_flags = flags;
    }

    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// Sets the TX offload lengths (`l2_len`:7, `l3_len`:9, `l4_len`:8, `tso_segsz`:16
    /// bits of the `tx_offload` word, as rte_mbuf_core.h lays them out).
    pub fn set_tx_offload(&mut self, l2_len: u16, l3_len: u16, l4_len: u16, tso_segsz: u16) {
        let v = u64::from(l2_len & 0x7f)
            | (u64::from(l3_len & 0x1ff) << 7)
            | (u64::from(l4_len & 0xff) << 16)
            | (u64::from(tso_segsz) << 24);
        self.raw_mut().__bindgen_anon_3.tx_offload = v;
    }

    /// The raw `tx_offload` word.
    pub fn tx_offload(&self) -> u64 {
        // SAFETY: every bit pattern of the u64 view of the union is valid.
        unsafe { self.raw().__bindgen_anon_3.tx_offload }
    }

    /// Stores a 64-bit tag in the mbuf's 8-byte `hash` union (`usr` and `fdir.hi`,
    /// overwriting the RSS hash): how one lcore tells another, through a ring, what a
    /// handed-over packet is for.
    pub fn set_user_tag(&mut self, tag: u64) {
        // `fdir.hi` (bytes 4..8 of the union) does not overlap `usr` (bytes 0..4): both
        // halves are kept.
        let m = self.raw_mut();
        m.__bindgen_anon_2.hash.usr = tag as u32;
        m.__bindgen_anon_2.hash.fdir.hi = (tag >> 32) as u32;
    }

    /// The tag [`Mbuf::set_user_tag`] stored.
    pub fn user_tag(&self) -> u64 {
        let m = self.raw();
        // SAFETY: every bit pattern of the u32 views of the hash union is valid.
        unsafe {
            u64::from(m.__bindgen_anon_2.hash.usr)
                | (u64::from(m.__bindgen_anon_2.hash.fdir.hi) << 32)
        }
    }

    pub fn vlan_tci(&self) -> u16 {
        self.raw().vlan_tci
    }

    pub fn set_vlan_tci(&mut self, tci: u16) {
        self.raw_mut().vlan_tci = tci;
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the chain; it is freed exactly once, here.
        unsafe { dpdk_sys::nbd_pktmbuf_free(self.0.as_ptr()) };
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("pkt_len", &self.pkt_len())
            .field("nb_segs", &self.nb_segs())
            .finish()
    }
}

/// Frees many mbufs in one call, emptying `v`: one-segment direct mbufs of one pool each
/// referenced once (a port's RX burst) go back with one mempool put, reading only their
/// first cache lines; any other mix through `rte_pktmbuf_free_bulk`.
pub fn free_bulk(v: &mut Vec<Mbuf>) {
    if v.is_empty() {
        return;
    }
    // SAFETY: Mbuf is repr(transparent) over a valid owned pointer; after the call the
    // mbufs are freed, so the Vec's length is set to 0 without running their Drop.
    unsafe {
        dpdk_sys::nbd_pktmbuf_free_bulk(v.as_mut_ptr() as *mut *mut rte_mbuf, v.len() as u32);
        v.set_len(0);
    }
}
