//! Local memory that dom0 grants to itself (`/dev/xen/gntalloc`).
//!
//! A PV dom0's userspace cannot learn the machine frame behind its own memory, so a raw
//! `GNTTABOP_copy` cannot name a local buffer by frame. It can name it by grant reference
//! if dom0 grants the page to itself: that is what a region is for (see `PrivcmdGrantCopy`).
use super::{last_err, open_dev, PAGE};
use crate::XenError;
use std::os::fd::{AsRawFd, OwnedFd};
use xen_sys::{ioctl_gntalloc_alloc_gref, ioctl_gntalloc_dealloc_gref};

/// The grant reference of each 4 KiB page of a page-aligned local range (pure data, so
/// the lookup is testable without Xen).
#[derive(Clone, Debug)]
pub struct GrefPages {
    base: usize,
    grefs: Vec<u32>,
    domid: u16,
}

impl GrefPages {
    /// `base` must be page-aligned; page `i` of the range is granted as `grefs[i]` to
    /// `domid` (the local domain itself).
    pub fn new(base: usize, grefs: Vec<u32>, domid: u16) -> Result<GrefPages, XenError> {
        if base & (PAGE - 1) != 0 {
            return Err(XenError::Invalid(format!(
                "region base {base:#x} is not page-aligned"
            )));
        }
        if base.checked_add(grefs.len() * PAGE).is_none() {
            return Err(XenError::Invalid("region wraps the address space".into()));
        }
        Ok(GrefPages { base, grefs, domid })
    }

    pub fn base(&self) -> usize {
        self.base
    }

    /// Bytes covered.
    pub fn len(&self) -> usize {
        self.grefs.len() * PAGE
    }

    pub fn is_empty(&self) -> bool {
        self.grefs.is_empty()
    }

    pub fn grefs(&self) -> &[u32] {
        &self.grefs
    }

    /// The domain the pages are granted to (ourselves).
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// Whether `[addr, addr+len)` lies wholly inside the range.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.len())
    }

    /// (gref, offset within its page) of the byte at `addr`; None outside the range.
    pub fn lookup(&self, addr: usize) -> Option<(u32, u16)> {
        let rel = addr.checked_sub(self.base)?;
        let g = *self.grefs.get(rel / PAGE)?;
        Some((g, (rel % PAGE) as u16))
    }
}

/// `count` pages from `/dev/xen/gntalloc`, granted (writable) to `domid`, mapped
/// contiguously; the grants are revoked and the pages freed on drop.
pub struct GntallocRegion {
    fd: OwnedFd,
    ptr: *mut u8,
    index: u64,
    pages: GrefPages,
}

// SAFETY: the region is plain shared memory reached through raw pointers; the fd and
// the gref table are immutable after creation.
unsafe impl Send for GntallocRegion {}
// SAFETY: as above; &GntallocRegion gives no access that needs synchronisation.
unsafe impl Sync for GntallocRegion {}

impl GntallocRegion {
    /// Allocates `count` zeroed pages granted to `domid` (0 for dom0 granting to itself).
    /// gntalloc limits the grants per host (module parameter `limit`, default 1024).
    pub fn alloc(domid: u16, count: usize) -> Result<GntallocRegion, XenError> {
        if count == 0 || count > u32::MAX as usize / PAGE {
            return Err(XenError::Invalid(format!("gntalloc page count {count}")));
        }
        let fd = open_dev("gntalloc", 0)?;
        // The argument ends in a variable-length array of the granted refs.
        let hdr = std::mem::size_of::<ioctl_gntalloc_alloc_gref>() - 4;
        let bytes = hdr + count * 4;
        let mut buf = vec![0u64; bytes.div_ceil(8)];
        let arg = buf.as_mut_ptr().cast::<ioctl_gntalloc_alloc_gref>();
        // SAFETY: buf is 8-byte aligned, zeroed and large enough for the header and
        // `count` refs; written through raw pointers inside it.
        unsafe {
            std::ptr::addr_of_mut!((*arg).domid).write(domid);
            std::ptr::addr_of_mut!((*arg).flags).write(1); // GNTALLOC_FLAG_WRITABLE
            std::ptr::addr_of_mut!((*arg).count).write(count as u32);
        }
        // SAFETY: request and argument match (a full ioctl_gntalloc_alloc_gref with room
        // for `count` refs); the kernel writes index and the refs into buf.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                super::IOCTL_GNTALLOC_ALLOC_GREF as libc::c_ulong,
                arg,
            )
        };
        if rc < 0 {
            let e = last_err();
            let what = if e.raw_os_error() == Some(libc::ENOSPC) {
                format!("IOCTL_GNTALLOC_ALLOC_GREF of {count} pages (over gntalloc's limit: raise /sys/module/xen_gntalloc/parameters/limit)")
            } else {
                format!("IOCTL_GNTALLOC_ALLOC_GREF of {count} pages")
            };
            return Err(XenError::io(what, e));
        }
        // SAFETY: the kernel filled index and `count` refs; all inside buf.
        let (index, grefs) = unsafe {
            let index = std::ptr::addr_of!((*arg).index).read();
            let refs = std::ptr::addr_of!((*arg).gref_ids).cast::<u32>();
            (index, (0..count).map(|i| refs.add(i).read()).collect())
        };
        let dealloc = |fd: &OwnedFd| dealloc(fd, index, count as u32);
        let len = count * PAGE;
        let Ok(off) = libc::off_t::try_from(index) else {
            dealloc(&fd);
            return Err(XenError::Invalid(format!("gntalloc index {index:#x}")));
        };
        // SAFETY: a new shared mapping of the pages just allocated at `index`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_err();
            dealloc(&fd);
            return Err(XenError::io("mmap of gntalloc pages", e));
        }
        let pages = match GrefPages::new(p as usize, grefs, domid) {
            Ok(g) => g,
            Err(e) => {
                // SAFETY: the mapping made above, not yet shared.
                unsafe { libc::munmap(p, len) };
                dealloc(&fd);
                return Err(e);
            }
        };
        Ok(GntallocRegion {
            fd,
            ptr: p.cast(),
            index,
            pages,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The page-to-gref table.
    pub fn pages(&self) -> &GrefPages {
        &self.pages
    }
}

fn dealloc(fd: &OwnedFd, index: u64, count: u32) {
    let mut arg = ioctl_gntalloc_dealloc_gref { index, count };
    // SAFETY: request and argument match; the kernel only reads arg.
    unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            super::IOCTL_GNTALLOC_DEALLOC_GREF as libc::c_ulong,
            &mut arg as *mut ioctl_gntalloc_dealloc_gref,
        )
    };
}

impl Drop for GntallocRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping made in alloc(), unmapped once; users of the memory must be
        // gone (they borrowed or Arc-shared this region).
        unsafe { libc::munmap(self.ptr.cast(), self.pages.len()) };
        dealloc(&self.fd, self.index, self.pages.grefs.len() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_per_page() {
        let base = 0x7f00_0000_0000usize;
        let g = GrefPages::new(base, vec![10, 11, 12], 0).unwrap();
        assert_eq!(g.len(), 3 * PAGE);
        assert_eq!(g.lookup(base), Some((10, 0)));
        assert_eq!(g.lookup(base + 4095), Some((10, 4095)));
        assert_eq!(g.lookup(base + 4096), Some((11, 0)));
        assert_eq!(g.lookup(base + 2 * PAGE + 17), Some((12, 17)));
        assert_eq!(g.lookup(base + 3 * PAGE), None);
        assert_eq!(g.lookup(base - 1), None);
        assert!(g.contains(base, 3 * PAGE));
        assert!(g.contains(base + 100, 5000));
        assert!(!g.contains(base + 100, 3 * PAGE));
        assert!(!g.contains(base - 1, 2));
        assert!(!g.contains(usize::MAX - 1, 4));
        assert!(GrefPages::new(base + 1, vec![1], 0).is_err());
    }

    #[test]
    fn alloc_without_xen_is_a_clear_error() {
        if std::path::Path::new("/dev/xen/gntalloc").exists() {
            return;
        }
        let e = GntallocRegion::alloc(0, 1).err().unwrap().to_string();
        assert!(e.contains("/dev/xen/gntalloc"), "{e}");
        assert!(e.contains("xen-gntalloc"), "{e}");
        assert!(GntallocRegion::alloc(0, 0).is_err());
    }
}
