//! The real dom0 implementation of the `iface` traits, over Linux's `/dev/xen` devices.
//!
//! - [`LinuxGrantCopy`]: `IOCTL_GNTDEV_GRANT_COPY`, works on every dom0 (PV or PVH) with
//!   any local memory; the kernel pins the local pages and issues `GNTTABOP_copy` itself.
//! - [`PrivcmdGrantCopy`]: `GNTTABOP_copy` straight through `IOCTL_PRIVCMD_HYPERCALL`,
//!   with the local side named by a grant that dom0 gives itself ([`GntallocRegion`]):
//!   no page pinning per op. Used for local memory inside such a region (e.g. a mempool
//!   built with `pmd::Mempool::from_memory`); anything else falls back to gntdev.
//! - [`LinuxGrantMap`]: gntdev map + mmap, unmapped on drop.
//! - [`LinuxEvtchn`]: `/dev/xen/evtchn`, one shared handle for all threads.
//!
//! [`probe`] says at startup what the host lacks, before any of these is opened.
mod evtchn;
mod gntalloc;
mod gntdev;
mod privcmd;

pub use evtchn::LinuxEvtchn;
pub use gntalloc::{GntallocRegion, GrefPages};
pub use gntdev::{gntdev_segment, LinuxGrantCopy, LinuxGrantMap, LinuxMapping};
pub use privcmd::{gnttab_op, plan_local, LocalPart, PrivcmdGrantCopy, PrivcmdStats};

use crate::iface::{gntst, CopyOp};
use crate::XenError;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Xen's page size: grants, and the ranges a grant copy may touch, are per 4 KiB page.
pub const PAGE: usize = 4096;

/// Where the devices live; a constant so tests and messages agree.
pub const DEV_DIR: &str = "/dev/xen";

const IOC_NONE: u32 = 0;
/// `IOCTL_GNTALLOC_ALLOC_GREF` (`_IOC(_IOC_NONE, 'G', 5, 24)`).
pub(crate) const IOCTL_GNTALLOC_ALLOC_GREF: u64 = xen_sys::ioc(
    IOC_NONE,
    b'G' as u32,
    5,
    std::mem::size_of::<xen_sys::ioctl_gntalloc_alloc_gref>(),
);
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub(crate) const IOCTL_GNTALLOC_DEALLOC_GREF: u64 = xen_sys::ioc(
    IOC_NONE,
    b'G' as u32,
    6,
    std::mem::size_of::<xen_sys::ioctl_gntalloc_dealloc_gref>(),
);
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
pub(crate) const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u64 = xen_sys::ioc(
    IOC_NONE,
    b'E' as u32,
    2,
    std::mem::size_of::<xen_sys::ioctl_evtchn_bind_unbound_port>(),
);
/// `IOCTL_EVTCHN_RESET` (clears the fd's event ring after an overflow).
pub(crate) const IOCTL_EVTCHN_RESET: u64 = xen_sys::ioc(IOC_NONE, b'E' as u32, 5, 0);

/// The kernel module that provides `/dev/xen/<name>`.
fn module_of(name: &str) -> &'static str {
    match name {
        "gntdev" => "xen-gntdev",
        "gntalloc" => "xen-gntalloc",
        "evtchn" => "xen-evtchn",
        "privcmd" => "xen-privcmd",
        _ => "a Xen driver",
    }
}

/// What to tell the operator when `/dev/xen/<name>` cannot be opened with `err`.
fn device_hint(name: &str, err: &std::io::Error, dev_dir_exists: bool) -> String {
    let module = module_of(name);
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) if !dev_dir_exists => {
            format!(
                "not a Xen dom0 ({DEV_DIR} does not exist), or the {module} module is not loaded"
            )
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            format!("not a Xen dom0, or the {module} module is not loaded (modprobe {module})")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!("permission denied: run as root or grant this user read-write access to {DEV_DIR}/{name}")
        }
        _ => format!("{DEV_DIR}/{name} is unusable (the {module} driver)"),
    }
}

/// Opens `/dev/xen/<name>` read-write, close-on-exec, with an error that says what is
/// missing.
pub(crate) fn open_dev(name: &str, extra_flags: i32) -> Result<OwnedFd, XenError> {
    open_dev_in(Path::new(DEV_DIR), name, extra_flags)
}

fn open_dev_in(dir: &Path, name: &str, extra_flags: i32) -> Result<OwnedFd, XenError> {
    let path = dir.join(name);
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| XenError::Device {
            path: path.display().to_string(),
            hint: device_hint(name, &e, dir.exists()),
            source: e,
        })
}

/// What [`probe`] found: the devices every backend needs are there; the privcmd fast path
/// may not be.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `/proc/xen/capabilities` says `control_d` (a dom0); None when xenfs is not mounted.
    pub control_domain: Option<bool>,
    /// Why the privcmd + gntalloc fast path is unavailable; None when it is available.
    pub fast_path_missing: Option<String>,
}

/// Checks that this host can run the real backend: a Xen guest (`/sys/hypervisor/type` or
/// `/proc/xen`) with `/dev/xen/gntdev` and `/dev/xen/evtchn` openable. The error lists
/// everything missing at once, so one start tells the operator the whole story.
pub fn probe() -> Result<Probe, XenError> {
    probe_at(Path::new("/"))
}

/// [`probe`] against another root directory (tests).
pub fn probe_at(root: &Path) -> Result<Probe, XenError> {
    let hv_type = std::fs::read_to_string(root.join("sys/hypervisor/type")).ok();
    let proc_xen = root.join("proc/xen").exists();
    let on_xen = hv_type.as_deref().map(str::trim) == Some("xen") || proc_xen;
    let mut missing = Vec::new();
    if !on_xen {
        missing.push(format!(
            "not running on Xen ({} and /proc/xen absent)",
            match hv_type.as_deref().map(str::trim) {
                Some(t) => format!("/sys/hypervisor/type is {t:?}"),
                None => "/sys/hypervisor/type".to_owned(),
            }
        ));
    }
    let dev = root.join(DEV_DIR.trim_start_matches('/'));
    for name in ["gntdev", "evtchn"] {
        if let Err(e) = open_dev_in(&dev, name, 0) {
            missing.push(e.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(XenError::NotDom0(missing.join("; ")));
    }
    let control_domain = std::fs::read_to_string(root.join("proc/xen/capabilities"))
        .ok()
        .map(|c| c.contains("control_d"));
    let mut fast = Vec::new();
    for name in ["privcmd", "gntalloc"] {
        if let Err(e) = open_dev_in(&dev, name, 0) {
            fast.push(e.to_string());
        }
    }
    Ok(Probe {
        control_domain,
        fast_path_missing: (!fast.is_empty()).then(|| fast.join("; ")),
    })
}

/// Sets the status of ops that must not reach the kernel or Xen, and says which may:
/// a foreign range past its page is `bad_copy_arg` (gntdev would fail the whole batch
/// with EINVAL), a null local pointer is `bad_virt_addr` (EFAULT for the whole batch),
/// and an empty op is done. Returns true if `op` still needs copying.
pub(crate) fn precheck(op: &mut CopyOp) -> bool {
    if usize::from(op.offset) + usize::from(op.len) > PAGE {
        op.status = gntst::BAD_COPY_ARG;
        return false;
    }
    if op.len == 0 {
        op.status = gntst::OKAY;
        return false;
    }
    if op.local.is_null() {
        op.status = gntst::BAD_VIRT_ADDR;
        return false;
    }
    true
}

/// The calling thread's errno as an `io::Error`.
pub(crate) fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iface::CopyDir;

    #[test]
    fn ioctl_numbers() {
        // _IOC(_IOC_NONE, 'G', 5, 24), _IOC(_IOC_NONE, 'G', 6, 16), 'E' 2 (4 bytes), 'E' 5.
        assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF, 0x184705);
        assert_eq!(IOCTL_GNTALLOC_DEALLOC_GREF, 0x104706);
        assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0x44502);
        assert_eq!(IOCTL_EVTCHN_RESET, 0x4505);
    }

    #[test]
    fn missing_device_message_is_clear() {
        let tmp = std::env::temp_dir().join(format!("nbd-linux-nodev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("dev/xen")).unwrap();
        let e = open_dev_in(&tmp.join("dev/xen"), "gntdev", 0).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("cannot open"), "{s}");
        assert!(s.contains("/dev/xen/gntdev"), "{s}");
        assert!(s.contains("No such file or directory"), "{s}");
        assert!(s.contains("xen-gntdev module is not loaded"), "{s}");
        let e = open_dev_in(&tmp.join("nothere"), "evtchn", 0).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // Not on Xen at all: every missing piece in one message.
        let e = probe_at(&tmp).unwrap_err().to_string();
        assert!(e.contains("not running on Xen"), "{e}");
        assert!(e.contains("gntdev") && e.contains("evtchn"), "{e}");
        // "On Xen" but without the devices.
        std::fs::create_dir_all(tmp.join("sys/hypervisor")).unwrap();
        std::fs::write(tmp.join("sys/hypervisor/type"), "xen\n").unwrap();
        let e = probe_at(&tmp).unwrap_err().to_string();
        assert!(!e.contains("not running on Xen"), "{e}");
        assert!(e.contains("xen-evtchn module is not loaded"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn permission_hint() {
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(device_hint("privcmd", &e, true).contains("permission denied"));
    }

    /// This machine has no Xen: the real probe must fail cleanly, naming what is missing.
    #[test]
    fn probe_here_fails_cleanly() {
        if Path::new("/dev/xen/gntdev").exists() {
            return;
        }
        let e = probe().unwrap_err().to_string();
        assert!(e.contains("/dev/xen/gntdev"), "{e}");
    }

    #[test]
    fn precheck_rejects_without_submitting() {
        let mut b = [0u8; 8];
        let mut op = CopyOp {
            domid: 1,
            gref: 2,
            offset: 4000,
            local: b.as_mut_ptr(),
            len: 200,
            dir: CopyDir::FromForeign,
            status: 99,
        };
        assert!(!precheck(&mut op));
        assert_eq!(op.status, gntst::BAD_COPY_ARG);
        op.offset = 0;
        op.len = 0;
        assert!(!precheck(&mut op));
        assert_eq!(op.status, gntst::OKAY);
        op.len = 8;
        op.local = std::ptr::null_mut();
        assert!(!precheck(&mut op));
        assert_eq!(op.status, gntst::BAD_VIRT_ADDR);
        op.local = b.as_mut_ptr();
        assert!(precheck(&mut op));
    }
}
