//! The fast path: `GNTTABOP_copy` issued directly through `IOCTL_PRIVCMD_HYPERCALL`.
//!
//! gntdev's grant copy pins every local page with get_user_pages and translates it for
//! each op. When the local buffer is a page that dom0 grants to itself
//! ([`GntallocRegion`]), both sides of the copy can be named by grant reference
//! (`GNTCOPY_source_gref | GNTCOPY_dest_gref`) and the batch goes to Xen as is. Xen
//! refuses an op whose range crosses a page on either side, so an op whose local range
//! crosses a 4 KiB boundary becomes two hypercall ops, and the op's status is the first
//! failing one of its parts. Ops whose local memory is outside every region go through
//! gntdev in the same call.
use super::gntalloc::{GntallocRegion, GrefPages};
use super::gntdev::LinuxGrantCopy;
use super::{last_err, open_dev, precheck, PAGE};
use crate::iface::{gntst, CopyDir, CopyOp, GrantCopy};
use crate::XenError;
use std::sync::Arc;
use xen_sys::{
    __HYPERVISOR_grant_table_op, gnttab_copy, gnttab_copy_gnttab_copy_ptr as CopyPtr,
    gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 as CopyRef, privcmd_hypercall, xencall_handle,
    GNTCOPY_dest_gref, GNTCOPY_source_gref, GNTTABOP_copy, IOCTL_PRIVCMD_HYPERCALL,
};

/// The local side of one hypercall op: `len` bytes at `page_offset` of the page granted
/// as `gref`, matching the foreign range at `foreign_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPart {
    pub gref: u32,
    pub page_offset: u16,
    pub foreign_offset: u16,
    pub len: u16,
}

/// Splits `op`'s local range over the region's pages: one part, or two when it crosses a
/// 4 KiB boundary. None when the range is not wholly inside the region (or longer than a
/// page, which no valid op is).
pub fn plan_local(pages: &GrefPages, op: &CopyOp) -> Option<(LocalPart, Option<LocalPart>)> {
    let addr = op.local as usize;
    let len = usize::from(op.len);
    if len == 0 || len > PAGE || !pages.contains(addr, len) {
        return None;
    }
    let (gref, page_offset) = pages.lookup(addr)?;
    let first = len.min(PAGE - usize::from(page_offset));
    let a = LocalPart {
        gref,
        page_offset,
        foreign_offset: op.offset,
        len: first as u16,
    };
    if first == len {
        return Some((a, None));
    }
    let (gref2, off2) = pages.lookup(addr + first)?;
    debug_assert_eq!(off2, 0);
    Some((
        a,
        Some(LocalPart {
            gref: gref2,
            page_offset: off2,
            foreign_offset: op.offset.wrapping_add(first as u16),
            len: (len - first) as u16,
        }),
    ))
}

/// The `gnttab_copy` for one part of `op`: both sides by grant reference, the local one
/// granted by (and to) `local_domid`.
pub fn gnttab_op(op: &CopyOp, part: &LocalPart, local_domid: u16) -> gnttab_copy {
    let foreign = CopyPtr {
        // Through the 64-bit member so the union is fully initialised (x86 is little
        // endian: the ref is its low 32 bits, which is all Xen reads with the gref flag).
        u: CopyRef {
            gmfn: u64::from(op.gref),
        },
        domid: op.domid,
        offset: part.foreign_offset,
    };
    let local = CopyPtr {
        u: CopyRef {
            gmfn: u64::from(part.gref),
        },
        domid: local_domid,
        offset: part.page_offset,
    };
    let (source, dest) = match op.dir {
        CopyDir::FromForeign => (foreign, local),
        CopyDir::ToForeign => (local, foreign),
    };
    gnttab_copy {
        source,
        dest,
        len: part.len,
        flags: (GNTCOPY_source_gref | GNTCOPY_dest_gref) as u16,
        status: gntst::GENERAL_ERROR,
    }
}

/// An op's status after one more of its parts finished: the first failure wins.
pub(crate) fn merge_status(current: i16, part: i16) -> i16 {
    if current == gntst::OKAY {
        part
    } else {
        current
    }
}

/// What carried the traffic: a test or the metrics can tell the fast path from the
/// fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivcmdStats {
    /// `GNTTABOP_copy` hypercalls issued.
    pub hypercalls: u64,
    /// `gnttab_copy` ops in them (split ops count twice).
    pub hypercall_ops: u64,
    /// CopyOps that crossed a local page and became two hypercall ops.
    pub split_ops: u64,
    /// CopyOps sent through gntdev because their local memory is in no region.
    pub fallback_ops: u64,
    /// gntdev ioctls for those.
    pub fallback_ioctls: u64,
}

impl PrivcmdStats {
    /// Mean hypercall ops per hypercall (0 before the first).
    pub fn ops_per_hypercall(&self) -> f64 {
        if self.hypercalls == 0 {
            0.0
        } else {
            self.hypercall_ops as f64 / self.hypercalls as f64
        }
    }
}

/// Hypercall ops per `GNTTABOP_copy` (40 bytes each: five pages of hypercall buffer).
const CAPACITY: usize = 512;

/// Grant copies through `GNTTABOP_copy` for local memory in self-granted regions, gntdev
/// for the rest.
pub struct PrivcmdGrantCopy {
    xcall: *mut xencall_handle,
    /// `CAPACITY` ops in memory from `xencall_alloc_buffer`, which Xen may always access
    /// (locked, and hypercall-safe on PVH/HVM dom0s too).
    buf: *mut gnttab_copy,
    regions: Vec<Arc<GntallocRegion>>,
    /// The CopyOp each queued hypercall op belongs to.
    owner: Vec<usize>,
    fallback: Vec<usize>,
    gntdev: LinuxGrantCopy,
    stats: PrivcmdStats,
}

// SAFETY: the xencall handle and its buffer are used only through &mut self (one thread at
// a time); libxencall handles may move between threads.
unsafe impl Send for PrivcmdGrantCopy {}

impl PrivcmdGrantCopy {
    /// Opens privcmd (through libxencall) and gntdev; `regions` are the self-granted
    /// memory whose ops take the fast path.
    pub fn new(regions: Vec<Arc<GntallocRegion>>) -> Result<PrivcmdGrantCopy, XenError> {
        // libxencall's own failure text goes to stderr without the why: check first.
        drop(open_dev("privcmd", 0)?);
        let gntdev = LinuxGrantCopy::open()?;
        // SAFETY: no logger (libxencall logs to stderr), no flags.
        let xcall = unsafe { xen_sys::xencall_open(std::ptr::null_mut(), 0) };
        if xcall.is_null() {
            return Err(XenError::io("xencall_open", last_err()));
        }
        let bytes = CAPACITY * std::mem::size_of::<gnttab_copy>();
        // SAFETY: a valid handle; the buffer is freed with it in Drop.
        let buf = unsafe { xen_sys::xencall_alloc_buffer(xcall, bytes) };
        if buf.is_null() {
            let e = last_err();
            // SAFETY: the handle opened above, closed once.
            unsafe { xen_sys::xencall_close(xcall) };
            return Err(XenError::io("xencall_alloc_buffer", e));
        }
        Ok(PrivcmdGrantCopy {
            xcall,
            buf: buf.cast(),
            regions,
            owner: Vec::with_capacity(CAPACITY),
            fallback: Vec::with_capacity(256),
            gntdev,
            stats: PrivcmdStats::default(),
        })
    }

    pub fn stats(&self) -> PrivcmdStats {
        self.stats
    }

    fn region_of(&self, op: &CopyOp) -> Option<usize> {
        let addr = op.local as usize;
        self.regions
            .iter()
            .position(|r| r.pages().contains(addr, usize::from(op.len)))
    }

    /// Issues the queued hypercall ops and merges their statuses into `ops`.
    fn flush(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        let n = self.owner.len();
        if n == 0 {
            return Ok(());
        }
        let mut call = privcmd_hypercall {
            op: u64::from(__HYPERVISOR_grant_table_op),
            arg: [u64::from(GNTTABOP_copy), self.buf as u64, n as u64, 0, 0],
        };
        self.stats.hypercalls += 1;
        self.stats.hypercall_ops += n as u64;
        // SAFETY: a valid xencall handle.
        let fd = unsafe { xen_sys::xencall_fd(self.xcall) };
        // SAFETY: request and argument match; Xen reads and writes the n ops in buf,
        // which stays allocated and untouched by us meanwhile.
        let rc = unsafe {
            libc::ioctl(
                fd,
                IOCTL_PRIVCMD_HYPERCALL as libc::c_ulong,
                &mut call as *mut privcmd_hypercall,
            )
        };
        if rc < 0 {
            let e = last_err();
            for &i in &self.owner {
                ops[i].status = gntst::GENERAL_ERROR;
            }
            self.owner.clear();
            return Err(XenError::io("GNTTABOP_copy via IOCTL_PRIVCMD_HYPERCALL", e));
        }
        for (k, &i) in self.owner.iter().enumerate() {
            // SAFETY: k < n <= CAPACITY; Xen wrote the status (volatile: written behind
            // the compiler's back).
            let st = unsafe { std::ptr::addr_of!((*self.buf.add(k)).status).read_volatile() };
            ops[i].status = merge_status(ops[i].status, st);
        }
        self.owner.clear();
        Ok(())
    }

    fn push(&mut self, op: &CopyOp, i: usize, part: &LocalPart, domid: u16) {
        let k = self.owner.len();
        // SAFETY: k < CAPACITY (the caller flushes first); buf holds CAPACITY ops.
        unsafe { self.buf.add(k).write(gnttab_op(op, part, domid)) };
        self.owner.push(i);
    }
}

impl GrantCopy for PrivcmdGrantCopy {
    unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        self.fallback.clear();
        self.owner.clear();
        for i in 0..ops.len() {
            if !precheck(&mut ops[i]) {
                continue;
            }
            let plan = self.region_of(&ops[i]).and_then(|r| {
                let pages = self.regions[r].pages();
                plan_local(pages, &ops[i]).map(|p| (p, pages.domid()))
            });
            let Some(((a, b), domid)) = plan else {
                self.fallback.push(i);
                continue;
            };
            let need = 1 + usize::from(b.is_some());
            if self.owner.len() + need > CAPACITY {
                self.flush(ops)?;
            }
            let op = ops[i];
            ops[i].status = gntst::OKAY;
            self.push(&op, i, &a, domid);
            if let Some(b) = b {
                self.push(&op, i, &b, domid);
                self.stats.split_ops += 1;
            }
        }
        self.flush(ops)?;
        if !self.fallback.is_empty() {
            self.stats.fallback_ops += self.fallback.len() as u64;
            self.stats.fallback_ioctls += 1;
            let fallback = std::mem::take(&mut self.fallback);
            // SAFETY: forwarded contract, for the ops outside the regions.
            let r = unsafe { self.gntdev.copy_selected(ops, Some(&fallback)) };
            self.fallback = fallback;
            r?;
        }
        Ok(())
    }
}

impl Drop for PrivcmdGrantCopy {
    fn drop(&mut self) {
        // SAFETY: buffer and handle from new(), freed once, in this order.
        unsafe {
            xen_sys::xencall_free_buffer(self.xcall, self.buf.cast());
            xen_sys::xencall_close(self.xcall);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: usize = 0x7f12_3456_0000;

    fn pages() -> GrefPages {
        GrefPages::new(BASE, vec![100, 101, 102, 103], 0).unwrap()
    }

    fn op(local: usize, offset: u16, len: u16, dir: CopyDir) -> CopyOp {
        CopyOp {
            domid: 5,
            gref: 77,
            offset,
            local: local as *mut u8,
            len,
            dir,
            status: 0,
        }
    }

    #[test]
    fn one_page_is_one_part() {
        let (a, b) = plan_local(
            &pages(),
            &op(BASE + PAGE + 64, 10, 1500, CopyDir::FromForeign),
        )
        .unwrap();
        assert_eq!(
            a,
            LocalPart {
                gref: 101,
                page_offset: 64,
                foreign_offset: 10,
                len: 1500
            }
        );
        assert!(b.is_none());
        // Ending exactly at the page end is still one part.
        let (a, b) = plan_local(
            &pages(),
            &op(BASE + 2 * PAGE - 100, 0, 100, CopyDir::ToForeign),
        )
        .unwrap();
        assert_eq!((a.gref, a.page_offset, a.len), (101, 3996, 100));
        assert!(b.is_none());
    }

    #[test]
    fn crossing_a_page_splits_in_two() {
        let (a, b) = plan_local(
            &pages(),
            &op(BASE + 2 * PAGE - 1000, 200, 1500, CopyDir::ToForeign),
        )
        .unwrap();
        let b = b.unwrap();
        assert_eq!(
            a,
            LocalPart {
                gref: 101,
                page_offset: 3096,
                foreign_offset: 200,
                len: 1000
            }
        );
        assert_eq!(
            b,
            LocalPart {
                gref: 102,
                page_offset: 0,
                foreign_offset: 1200,
                len: 500
            }
        );
    }

    #[test]
    fn outside_the_region_is_not_planned() {
        let p = pages();
        assert!(plan_local(&p, &op(BASE - 10, 0, 100, CopyDir::FromForeign)).is_none());
        assert!(plan_local(&p, &op(BASE + 4 * PAGE - 10, 0, 100, CopyDir::FromForeign)).is_none());
        assert!(plan_local(&p, &op(BASE, 0, 0, CopyDir::FromForeign)).is_none());
        assert!(plan_local(&p, &op(BASE, 0, 5000, CopyDir::FromForeign)).is_none());
    }

    #[test]
    fn gnttab_copy_from_foreign_fields() {
        let o = op(BASE, 300, 1000, CopyDir::FromForeign);
        let part = LocalPart {
            gref: 101,
            page_offset: 64,
            foreign_offset: 300,
            len: 1000,
        };
        let g = gnttab_op(&o, &part, 0);
        // SAFETY: reading the union members we wrote (ref_ in the low 32 bits).
        unsafe {
            assert_eq!(g.source.u.ref_, 77);
            assert_eq!(g.dest.u.ref_, 101);
        }
        assert_eq!((g.source.domid, g.source.offset), (5, 300));
        assert_eq!((g.dest.domid, g.dest.offset), (0, 64));
        assert_eq!(g.len, 1000);
        assert_eq!(u32::from(g.flags), GNTCOPY_source_gref | GNTCOPY_dest_gref);
        assert_eq!(g.flags, 3);
    }

    #[test]
    fn gnttab_copy_to_foreign_fields_and_bytes() {
        let o = op(BASE, 300, 1000, CopyDir::ToForeign);
        let part = LocalPart {
            gref: 0xabcd,
            page_offset: 64,
            foreign_offset: 300,
            len: 1000,
        };
        let g = gnttab_op(&o, &part, 0);
        // SAFETY: as above.
        unsafe {
            assert_eq!(g.source.u.ref_, 0xabcd);
            assert_eq!(g.dest.u.ref_, 77);
        }
        assert_eq!((g.source.domid, g.source.offset), (0, 64));
        assert_eq!((g.dest.domid, g.dest.offset), (5, 300));
        // Byte offsets of the hypercall ABI (NETBACK-REFERENCE: source@0 {u64, u16 domid@8,
        // u16 offset@10}, dest@16, len@32, flags@34, status@36).
        assert_eq!(std::mem::size_of::<gnttab_copy>(), 40);
        let mut b = [0u8; 40];
        // SAFETY: b has room for the struct; we read only bytes written from fields
        // (12..16 and 28..32 are padding).
        unsafe { std::ptr::write_unaligned(b.as_mut_ptr().cast(), g) };
        assert_eq!(&b[0..8], &0xabcdu64.to_le_bytes());
        assert_eq!(&b[8..10], &0u16.to_le_bytes());
        assert_eq!(&b[10..12], &64u16.to_le_bytes());
        assert_eq!(&b[16..24], &77u64.to_le_bytes());
        assert_eq!(&b[24..26], &5u16.to_le_bytes());
        assert_eq!(&b[26..28], &300u16.to_le_bytes());
        assert_eq!(&b[32..34], &1000u16.to_le_bytes());
        assert_eq!(&b[34..36], &3u16.to_le_bytes());
    }

    #[test]
    fn first_failure_wins() {
        assert_eq!(merge_status(gntst::OKAY, gntst::OKAY), gntst::OKAY);
        assert_eq!(
            merge_status(gntst::OKAY, gntst::BAD_GNTREF),
            gntst::BAD_GNTREF
        );
        assert_eq!(
            merge_status(gntst::BAD_GNTREF, gntst::OKAY),
            gntst::BAD_GNTREF
        );
        assert_eq!(
            merge_status(gntst::BAD_PAGE, gntst::BAD_GNTREF),
            gntst::BAD_PAGE
        );
    }

    #[test]
    fn new_without_xen_is_a_clear_error() {
        if std::path::Path::new("/dev/xen/privcmd").exists() {
            return;
        }
        let e = PrivcmdGrantCopy::new(Vec::new()).err().unwrap().to_string();
        assert!(e.contains("/dev/xen/privcmd"), "{e}");
    }
}
