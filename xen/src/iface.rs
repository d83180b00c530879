//! The hypervisor operations netbackd needs, as traits with nothing host-specific in
//! them: the engine and the control plane run unchanged on a real dom0 (`linux`) and on
//! the simulated host (`sim`).
use crate::XenError;
use std::time::Duration;

/// Xen's grant-operation status codes (`GNTST_*`).
pub mod gntst {
    pub const OKAY: i16 = 0;
    pub const GENERAL_ERROR: i16 = -1;
    pub const BAD_DOMAIN: i16 = -2;
    pub const BAD_GNTREF: i16 = -3;
    pub const BAD_HANDLE: i16 = -4;
    pub const BAD_VIRT_ADDR: i16 = -5;
    pub const BAD_DEV_ADDR: i16 = -6;
    pub const NO_DEVICE_SPACE: i16 = -7;
    pub const PERMISSION_DENIED: i16 = -8;
    pub const BAD_PAGE: i16 = -9;
    pub const BAD_COPY_ARG: i16 = -10;
    pub const ADDRESS_TOO_BIG: i16 = -11;
    pub const EAGAIN: i16 = -12;
    pub const NO_SPACE: i16 = -13;
}

/// Xen's grant-operation status codes as a type, with Xen's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum GnttabStatus {
    Okay = gntst::OKAY,
    GeneralError = gntst::GENERAL_ERROR,
    BadDomain = gntst::BAD_DOMAIN,
    BadGntref = gntst::BAD_GNTREF,
    BadHandle = gntst::BAD_HANDLE,
    BadVirtAddr = gntst::BAD_VIRT_ADDR,
    BadDevAddr = gntst::BAD_DEV_ADDR,
    NoDeviceSpace = gntst::NO_DEVICE_SPACE,
    PermissionDenied = gntst::PERMISSION_DENIED,
    BadPage = gntst::BAD_PAGE,
    BadCopyArg = gntst::BAD_COPY_ARG,
    AddressTooBig = gntst::ADDRESS_TOO_BIG,
    Eagain = gntst::EAGAIN,
    NoSpace = gntst::NO_SPACE,
}

impl GnttabStatus {
    const ALL: [GnttabStatus; 14] = [
        GnttabStatus::Okay,
        GnttabStatus::GeneralError,
        GnttabStatus::BadDomain,
        GnttabStatus::BadGntref,
        GnttabStatus::BadHandle,
        GnttabStatus::BadVirtAddr,
        GnttabStatus::BadDevAddr,
        GnttabStatus::NoDeviceSpace,
        GnttabStatus::PermissionDenied,
        GnttabStatus::BadPage,
        GnttabStatus::BadCopyArg,
        GnttabStatus::AddressTooBig,
        GnttabStatus::Eagain,
        GnttabStatus::NoSpace,
    ];

    /// The status for a raw `GNTST_*` value; None for values Xen does not define.
    pub fn from_raw(v: i16) -> Option<GnttabStatus> {
        Self::ALL.iter().copied().find(|s| *s as i16 == v)
    }

    pub fn raw(self) -> i16 {
        self as i16
    }

    /// Xen's name (`GNTST_bad_gntref`, ...).
    pub fn name(self) -> &'static str {
        match self {
            GnttabStatus::Okay => "GNTST_okay",
            GnttabStatus::GeneralError => "GNTST_general_error",
            GnttabStatus::BadDomain => "GNTST_bad_domain",
            GnttabStatus::BadGntref => "GNTST_bad_gntref",
            GnttabStatus::BadHandle => "GNTST_bad_handle",
            GnttabStatus::BadVirtAddr => "GNTST_bad_virt_addr",
            GnttabStatus::BadDevAddr => "GNTST_bad_dev_addr",
            GnttabStatus::NoDeviceSpace => "GNTST_no_device_space",
            GnttabStatus::PermissionDenied => "GNTST_permission_denied",
            GnttabStatus::BadPage => "GNTST_bad_page",
            GnttabStatus::BadCopyArg => "GNTST_bad_copy_arg",
            GnttabStatus::AddressTooBig => "GNTST_address_too_big",
            GnttabStatus::Eagain => "GNTST_eagain",
            GnttabStatus::NoSpace => "GNTST_no_space",
        }
    }
}

impl std::fmt::Display for GnttabStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.raw())
    }
}

/// Which way a grant copy moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDir {
    /// Guest page -> local memory (guest TX).
    FromForeign,
    /// Local memory -> guest page (guest RX).
    ToForeign,
}

/// One grant-copy operation: `len` bytes between a foreign granted page (domid, gref,
/// offset) and local memory at `local`. `status` is filled in (`gntst::*`).
#[derive(Clone, Copy, Debug)]
pub struct CopyOp {
    pub domid: u16,
    pub gref: u32,
    pub offset: u16,
    pub local: *mut u8,
    pub len: u16,
    pub dir: CopyDir,
    pub status: i16,
}

// SAFETY: a CopyOp is plain data; the pointer is only dereferenced by a GrantCopy
// implementation under the caller's guarantee (see GrantCopy::copy).
unsafe impl Send for CopyOp {}

/// Batched grant copies: one call per batch (one ioctl or hypercall on a real host).
pub trait GrantCopy: Send {
    /// Performs every op, setting each `status`. An `Err` means the batch could not be
    /// submitted at all (then no status is meaningful).
    ///
    /// # Safety
    /// Each op's `local..local+len` must be valid memory, readable (`ToForeign`) or
    /// writable (`FromForeign`), not aliased by live references for the call's duration.
    unsafe fn copy(&mut self, ops: &mut [CopyOp]) -> Result<(), XenError>;

    /// What this implementation has done so far, for logs ("privcmd: 12 hypercalls, ...").
    fn describe(&self) -> String {
        String::new()
    }
}

/// A mapping of foreign granted pages; unmapped on drop.
pub trait Mapping: Send + Sync {
    fn as_ptr(&self) -> *mut u8;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Mapping a frontend's ring pages.
pub trait GrantMap: Send + Sync {
    type Mapping: Mapping + 'static;
    /// Maps `grefs` of `domid` contiguously (4096 bytes each).
    fn map(&self, domid: u16, grefs: &[u32], writable: bool) -> Result<Self::Mapping, XenError>;
}

/// Event channels of the local domain.
///
/// An implementation is the local domain's view of its ports: ports stay bound until
/// [`EventChannel::unbind`] (or, on a real host, until the device handle is closed). Wrap a
/// port in [`BoundPort`] to have it unbound when the owner goes away.
pub trait EventChannel: Send {
    /// Binds to `remote_port` of `remote_domid` (which it allocated unbound for us);
    /// returns the local port.
    fn bind_interdomain(&mut self, remote_domid: u16, remote_port: u32) -> Result<u32, XenError>;
    /// Signals the peer of `port`.
    fn notify(&self, port: u32) -> Result<(), XenError>;
    /// Takes the pending flag of `port`: true if the peer notified since the last call.
    fn take_pending(&self, port: u32) -> bool;
    /// Unmasks `port` (events while masked stay pending).
    fn unmask(&self, port: u32) -> Result<(), XenError>;
    fn unbind(&mut self, port: u32) -> Result<(), XenError>;
    /// Sleeps until any local port may have become pending, or `timeout`.
    fn wait(&self, timeout: Duration);
}

/// An interdomain port that is unbound when dropped (RAII over any [`EventChannel`]).
pub struct BoundPort<E: EventChannel> {
    ev: E,
    port: u32,
    armed: bool,
}

impl<E: EventChannel> BoundPort<E> {
    /// Binds to `remote_port` of `remote_domid` through `ev` (typically a clone of the
    /// caller's handle).
    pub fn bind(mut ev: E, remote_domid: u16, remote_port: u32) -> Result<Self, XenError> {
        let port = ev.bind_interdomain(remote_domid, remote_port)?;
        Ok(BoundPort {
            ev,
            port,
            armed: true,
        })
    }

    /// The local port.
    pub fn port(&self) -> u32 {
        self.port
    }

    pub fn notify(&self) -> Result<(), XenError> {
        self.ev.notify(self.port)
    }

    pub fn take_pending(&self) -> bool {
        self.ev.take_pending(self.port)
    }

    pub fn unmask(&self) -> Result<(), XenError> {
        self.ev.unmask(self.port)
    }

    /// Gives up the guard: the port stays bound and is returned.
    pub fn into_port(mut self) -> u32 {
        self.armed = false;
        self.port
    }
}

impl<E: EventChannel> Drop for BoundPort<E> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.ev.unbind(self.port);
        }
    }
}
