//! Hypervisor interfaces for netbackd: grant copy, grant map, event channels (`iface`,
//! as traits) and xenstore (`xenstore`, Xen's libxenstore), with the simulated host
//! (`sim`) that tests and the demo run on, and the real dom0 implementation over
//! Linux's `/dev/xen` devices (`linux`). Raw bindings are in `xen-sys`.
mod error;
pub mod iface;
pub mod linux;
pub mod sim;
pub mod xenstore;

pub use error::XenError;
pub use iface::{
    BoundPort, CopyDir, CopyOp, EventChannel, GnttabStatus, GrantCopy, GrantMap, Mapping,
};
pub use linux::{
    GntallocRegion, LinuxEvtchn, LinuxGrantCopy, LinuxGrantMap, LinuxMapping, PrivcmdGrantCopy,
};
pub use xen_sys as sys;
pub use xenstore::{Access, Perm, Tx, WatchEvent, XenStore};
