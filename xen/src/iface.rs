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
