//! Hypervisor interfaces for netbackd: grant copy, grant map, event channels, xenstore.
//!
//! Filled by the sim-host and real-dom0 issues; the raw bindings are in `xen-sys`.
pub use xen_sys as sys;
