//! The DPDK layer of netbackd: EAL initialisation, mempools, an owning [`Mbuf`], ethdev
//! ports. Everything netbackd exchanges with the network travels through here.
//!
//! Raw bindings are in `dpdk-sys`; this crate makes them safe to use: an `Mbuf` is freed
//! exactly once (Drop, or consumed by a port), EAL is initialised once per process, and
//! errors carry DPDK's own `rte_strerror` text.
mod eal;
mod error;
pub mod lcore;
mod mbuf;
mod mempool;
mod port;
mod ring;
pub mod tsc;

pub use eal::Eal;
pub use error::{rte_errno, strerror, PmdError};
pub use mbuf::{free_bulk, Mbuf};
pub use mempool::Mempool;
pub use port::{FlowRule, LinkStatus, Port, PortConfig, PortInfo};
pub use ring::{MbufRing, RingConsumer, RingProducer};

/// Re-exported raw bindings, for the few places that need a constant or a field.
pub use dpdk_sys as sys;

use std::ffi::CStr;

/// DPDK's own version string, e.g. "DPDK 22.11.11", asked of the loaded library (works
/// before EAL initialisation).
pub fn version() -> String {
    // SAFETY: rte_version() returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(dpdk_sys::rte_version()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_dpdk() {
        let v = super::version();
        assert!(v.starts_with("DPDK "), "{v}");
    }
}
