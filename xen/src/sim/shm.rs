//! Shared files mapped into memory: the substrate of the simulated host.
use crate::XenError;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A file mapped MAP_SHARED, read-write, for the life of the value.
pub struct ShmFile {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide; all access goes through raw pointers, atomics or
// volatile copies, which are sound under concurrent use from threads and processes.
unsafe impl Send for ShmFile {}
// SAFETY: as above.
unsafe impl Sync for ShmFile {}

impl ShmFile {
    /// Creates (or truncates to) `len` zero bytes and maps it.
    pub fn create(path: &Path, len: usize) -> Result<ShmFile, XenError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| XenError::io(format!("create {}", path.display()), e))?;
        f.set_len(len as u64)
            .map_err(|e| XenError::io(format!("size {}", path.display()), e))?;
        Self::map(&f, path, len)
    }

    /// Maps an existing file whole; fails unless its size is `expect` (when given).
    pub fn open(path: &Path, expect: Option<usize>) -> Result<ShmFile, XenError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| XenError::io(format!("open {}", path.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| XenError::io(format!("stat {}", path.display()), e))?
            .len() as usize;
        if let Some(x) = expect {
            if x != len {
                return Err(XenError::Sim(format!(
                    "{} is {len} bytes, expected {x}",
                    path.display()
                )));
            }
        }
        Self::map(&f, path, len)
    }

    fn map(f: &std::fs::File, path: &Path, len: usize) -> Result<ShmFile, XenError> {
        if len == 0 {
            return Err(XenError::Sim(format!("{} is empty", path.display())));
        }
        // SAFETY: mapping a regular file we hold open, whole, shared; no existing memory is
        // affected (addr hint null).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(XenError::io(
                format!("mmap {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(ShmFile {
            ptr: NonNull::new(p as *mut u8).expect("mmap returned non-null"),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The u32 at byte offset `off` (4-aligned, in bounds) as an atomic.
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "u32_at({off}) out of bounds"
        );
        // SAFETY: in bounds and aligned (mmap is page aligned); AtomicU32 is layout-
        // compatible with u32 and sound under concurrent access.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    /// The u64 at byte offset `off` (8-aligned, in bounds) as an atomic.
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "u64_at({off}) out of bounds"
        );
        // SAFETY: as u32_at.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) }
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// Wakes every waiter on the futex word `w` (cross-process: not FUTEX_PRIVATE).
pub fn futex_wake(w: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, mapped u32; no memory is written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            w.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Sleeps while `*w == seen`, at most `timeout` (spurious wake-ups allowed).
pub fn futex_wait(w: &AtomicU32, seen: u32, timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a valid, mapped u32 with a relative timeout; it only reads it.
    unsafe {
        libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAIT, seen, &ts);
    }
}
