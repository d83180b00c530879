//! `/dev/xen/gntdev`: grant copy (`IOCTL_GNTDEV_GRANT_COPY`) and grant mapping.
//!
//! Grant copy: the kernel pins each local page, splits a segment at local page
//! boundaries itself (`gntdev_grant_copy_seg`) and writes the first failing status of the
//! parts back. What it does *not* tolerate is a foreign range past its page or a bad local
//! address: those fail the whole ioctl (EINVAL / EFAULT), so such ops are answered before
//! submission (`precheck`).
use super::{last_err, open_dev, precheck, PAGE};
use crate::iface::{gntst, CopyDir, CopyOp, GrantCopy, GrantMap, Mapping};
use crate::XenError;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use xen_sys::{
    gntdev_grant_copy_segment, gntdev_grant_copy_segment__bindgen_ty_1 as SegPtr,
    gntdev_grant_copy_segment__bindgen_ty_1__bindgen_ty_1 as SegForeign, ioctl_gntdev_grant_copy,
    ioctl_gntdev_grant_ref, ioctl_gntdev_map_grant_ref, ioctl_gntdev_unmap_grant_ref,
    GNTCOPY_dest_gref, GNTCOPY_source_gref, IOCTL_GNTDEV_GRANT_COPY, IOCTL_GNTDEV_MAP_GRANT_REF,
    IOCTL_GNTDEV_UNMAP_GRANT_REF,
};

/// The gntdev segment for `op`: the foreign side by grant reference, the local side by
/// virtual address (gntdev refuses local-to-local copies, and we never need them).
pub fn gntdev_segment(op: &CopyOp) -> gntdev_grant_copy_segment {
    let foreign = SegPtr {
        foreign: SegForeign {
            ref_: op.gref,
            offset: op.offset,
            domid: op.domid,
        },
    };
    let local = SegPtr {
        virt: op.local.cast(),
    };
    let (source, dest, flags) = match op.dir {
        CopyDir::FromForeign => (foreign, local, GNTCOPY_source_gref),
        CopyDir::ToForeign => (local, foreign, GNTCOPY_dest_gref),
    };
    gntdev_grant_copy_segment {
        source,
        dest,
        len: op.len,
        flags: flags as u16,
        status: gntst::OKAY,
    }
}

/// Retries an ioctl interrupted by a signal (a grant copy or map is safe to repeat).
fn ioctl_retry(fd: i32, req: u64, arg: *mut libc::c_void) -> Result<i32, std::io::Error> {
    loop {
        // SAFETY: the caller passes a request number and an argument pointer that match
        // (checked at each call site); the kernel only touches that argument.
        let rc = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
        if rc >= 0 {
            return Ok(rc);
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Grant copies through gntdev, one ioctl per batch. The segment and index vectors are
/// kept between calls, so a warmed-up copier does not allocate.
pub struct LinuxGrantCopy {
    fd: OwnedFd,
    segs: Vec<gntdev_grant_copy_segment>,
    idx: Vec<usize>,
    ioctls: u64,
    ops: u64,
}

// SAFETY: the segments' raw pointers are rebuilt on every call from the caller's ops and
// never dereferenced by us; the fd may be used from any thread.
unsafe impl Send for LinuxGrantCopy {}

impl LinuxGrantCopy {
    /// Opens `/dev/xen/gntdev` (a clear error when it is missing or not permitted).
    pub fn open() -> Result<LinuxGrantCopy, XenError> {
        Ok(LinuxGrantCopy {
            fd: open_dev("gntdev", 0)?,
            segs: Vec::with_capacity(256),
            idx: Vec::with_capacity(256),
            ioctls: 0,
            ops: 0,
        })
    }

    /// (ioctls issued, segments submitted) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.ioctls, self.ops)
    }

    /// Copies `ops[i]` for each `i` in `only` (all ops when None) in one ioctl.
    ///
    /// # Safety
    /// As [`GrantCopy::copy`] for the selected ops.
    pub(crate) unsafe fn copy_selected(
        &mut self,
        ops: &mut [CopyOp],
        only: Option<&[usize]>,
    ) -> Result<(), XenError> {
        self.segs.clear();
        self.idx.clear();
        let n = only.map_or(ops.len(), <[usize]>::len);
        for k in 0..n {
            let i = only.map_or(k, |o| o[k]);
            let Some(op) = ops.get_mut(i) else { continue };
            if precheck(op) {
                self.segs.push(gntdev_segment(op));
                self.idx.push(i);
            }
        }
        if self.segs.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(self.segs.len())
            .map_err(|_| XenError::Invalid("grant copy batch too large".into()))?;
        let mut arg = ioctl_gntdev_grant_copy {
            count,
            segments: self.segs.as_mut_ptr(),
        };
        self.ioctls += 1;
        self.ops += u64::from(count);
        let res = ioctl_retry(
            self.fd.as_raw_fd(),
            IOCTL_GNTDEV_GRANT_COPY,
            (&mut arg as *mut ioctl_gntdev_grant_copy).cast(),
        );
        if let Err(e) = res {
            for &i in &self.idx {
                ops[i].status = gntst::GENERAL_ERROR;
            }
            return Err(XenError::io("IOCTL_GNTDEV_GRANT_COPY", e));
        }
        for (s, &i) in self.segs.iter().zip(&self.idx) {
            ops[i].status = s.status;
        }
        Ok(())
    }
}

impl GrantCopy for LinuxGrantCopy {
    unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError> {
        // SAFETY: forwarded contract.
        unsafe { self.copy_selected(ops, None) }
    }
}

/// Maps foreign grants through gntdev (`IOCTL_GNTDEV_MAP_GRANT_REF` + mmap).
#[derive(Clone)]
pub struct LinuxGrantMap {
    fd: Arc<OwnedFd>,
}

impl LinuxGrantMap {
    /// Opens `/dev/xen/gntdev` for mapping.
    pub fn open() -> Result<LinuxGrantMap, XenError> {
        Ok(LinuxGrantMap {
            fd: Arc::new(open_dev("gntdev", 0)?),
        })
    }
}

/// Foreign pages mapped contiguously through gntdev; unmapped (and the gntdev slot freed)
/// on drop.
pub struct LinuxMapping {
    fd: Arc<OwnedFd>,
    ptr: *mut u8,
    len: usize,
    index: u64,
    count: u32,
}

// SAFETY: a shared mapping of granted pages, accessed through raw pointers only; the
// fd is shared through an Arc.
unsafe impl Send for LinuxMapping {}
// SAFETY: as above.
unsafe impl Sync for LinuxMapping {}

impl Mapping for LinuxMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Gives gntdev's map slot back (after munmap, or when mmap failed).
fn unmap_slot(fd: &OwnedFd, index: u64, count: u32) {
    let mut arg = ioctl_gntdev_unmap_grant_ref {
        index,
        count,
        pad: 0,
    };
    let _ = ioctl_retry(
        fd.as_raw_fd(),
        IOCTL_GNTDEV_UNMAP_GRANT_REF,
        (&mut arg as *mut ioctl_gntdev_unmap_grant_ref).cast(),
    );
}

impl Drop for LinuxMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map(), unmapped once; nothing else owns it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
        unmap_slot(&self.fd, self.index, self.count);
    }
}

/// Most grefs one map call takes (netbackd maps single ring pages; gntdev's own default
/// limit is far higher).
const MAX_MAP: usize = 256;

impl GrantMap for LinuxGrantMap {
    type Mapping = LinuxMapping;

    /// gntdev does not report Xen's per-grant status: a refused grant makes the mmap fail
    /// with EINVAL, reported as `Map` with `GNTST_general_error`.
    fn map(&self, domid: u16, grefs: &[u32], writable: bool) -> Result<LinuxMapping, XenError> {
        let fail = |status| XenError::Map {
            domid,
            grefs: grefs.to_vec(),
            status,
        };
        if grefs.is_empty() || grefs.len() > MAX_MAP {
            return Err(fail(gntst::GENERAL_ERROR));
        }
        // The ioctl argument ends in a variable-length array of {domid, ref}: build it in
        // a u64 buffer (8-byte aligned like the struct) large enough for all of them.
        let hdr = std::mem::size_of::<ioctl_gntdev_map_grant_ref>()
            - std::mem::size_of::<ioctl_gntdev_grant_ref>();
        let bytes = hdr + grefs.len() * std::mem::size_of::<ioctl_gntdev_grant_ref>();
        let mut buf = vec![0u64; bytes.div_ceil(8)];
        let arg = buf.as_mut_ptr().cast::<ioctl_gntdev_map_grant_ref>();
        // SAFETY: buf is 8-byte aligned and holds the header plus grefs.len() entries; we
        // write through raw pointers only, inside it.
        unsafe {
            std::ptr::addr_of_mut!((*arg).count).write(grefs.len() as u32);
            let refs = std::ptr::addr_of_mut!((*arg).refs).cast::<ioctl_gntdev_grant_ref>();
            for (i, &g) in grefs.iter().enumerate() {
                refs.add(i).write(ioctl_gntdev_grant_ref {
                    domid: u32::from(domid),
                    ref_: g,
                });
            }
        }
        ioctl_retry(self.fd.as_raw_fd(), IOCTL_GNTDEV_MAP_GRANT_REF, arg.cast())
            .map_err(|e| XenError::io("IOCTL_GNTDEV_MAP_GRANT_REF", e))?;
        // SAFETY: the kernel filled in index; arg still points into buf.
        let index = unsafe { std::ptr::addr_of!((*arg).index).read() };
        let len = grefs.len() * PAGE;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let off = libc::off_t::try_from(index).map_err(|_| fail(gntst::GENERAL_ERROR))?;
        // SAFETY: a new shared mapping of the gntdev slot just reserved; the kernel maps
        // the grants here (or fails, leaving nothing mapped).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_err();
            unmap_slot(&self.fd, index, grefs.len() as u32);
            return Err(match e.raw_os_error() {
                // Xen refused a grant (gntdev hides which status).
                Some(libc::EINVAL) => fail(gntst::GENERAL_ERROR),
                _ => XenError::io("mmap of gntdev grants", e),
            });
        }
        Ok(LinuxMapping {
            fd: self.fd.clone(),
            ptr: p.cast(),
            len,
            index,
            count: grefs.len() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(dir: CopyDir, local: *mut u8) -> CopyOp {
        CopyOp {
            domid: 7,
            gref: 0x1234_5678,
            offset: 100,
            local,
            len: 1500,
            dir,
            status: 5,
        }
    }

    #[test]
    fn segment_from_foreign() {
        let mut b = [0u8; 2048];
        let s = gntdev_segment(&op(CopyDir::FromForeign, b.as_mut_ptr()));
        // SAFETY: reading the union members this direction wrote.
        unsafe {
            assert_eq!(s.source.foreign.ref_, 0x1234_5678);
            assert_eq!(s.source.foreign.offset, 100);
            assert_eq!(s.source.foreign.domid, 7);
            assert_eq!(s.dest.virt, b.as_mut_ptr().cast());
        }
        assert_eq!(s.len, 1500);
        assert_eq!(u32::from(s.flags), GNTCOPY_source_gref);
        assert_eq!(s.status, 0);
    }

    #[test]
    fn segment_to_foreign() {
        let mut b = [0u8; 2048];
        let s = gntdev_segment(&op(CopyDir::ToForeign, b.as_mut_ptr()));
        // SAFETY: reading the union members this direction wrote.
        unsafe {
            assert_eq!(s.source.virt, b.as_mut_ptr().cast());
            assert_eq!(s.dest.foreign.ref_, 0x1234_5678);
            assert_eq!(s.dest.foreign.offset, 100);
            assert_eq!(s.dest.foreign.domid, 7);
        }
        assert_eq!(u32::from(s.flags), GNTCOPY_dest_gref);
    }

    /// The byte layout gntdev reads (NETBACK-REFERENCE: {u32 ref, u16 offset, u16 domid}
    /// at 0, dest at 8, u16 len@16, flags@18, status@20).
    #[test]
    fn segment_bytes() {
        let s = gntdev_segment(&op(
            CopyDir::FromForeign,
            0x1122_3344_5566_7788usize as *mut u8,
        ));
        let mut b = [0u8; 24];
        assert_eq!(std::mem::size_of_val(&s), 24);
        // SAFETY: b has room for the 24-byte struct; only bytes 0..22 (no padding) are
        // read back below.
        unsafe { std::ptr::write_unaligned(b.as_mut_ptr().cast(), s) };
        assert_eq!(&b[0..4], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&b[4..6], &100u16.to_le_bytes());
        assert_eq!(&b[6..8], &7u16.to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..18], &1500u16.to_le_bytes());
        assert_eq!(&b[18..20], &1u16.to_le_bytes());
        assert_eq!(&b[20..22], &0i16.to_le_bytes());
    }

    /// No Xen here: open() must give the clear device error, not panic.
    #[test]
    fn open_without_xen_is_a_clear_error() {
        if std::path::Path::new("/dev/xen/gntdev").exists() {
            return;
        }
        let e = LinuxGrantCopy::open()
            .err()
            .expect("no gntdev here")
            .to_string();
        assert!(e.starts_with("cannot open /dev/xen/gntdev: "), "{e}");
        assert!(e.contains("xen-gntdev module is not loaded"), "{e}");
        assert!(LinuxGrantMap::open().is_err());
    }
}
