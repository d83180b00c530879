//! A simulated domU: a netfront driver (`netfront`) that attaches to a simulated Xen host
//! the way Linux's xen-netfront attaches to a backend. Used by tests, the demo and the
//! benchmarks, never by production.
pub mod harness;
pub mod hostile;
pub mod netfront;
pub mod pktgen;
pub mod stack;

pub use netfront::{
    BackendFeatures, FrontConfig, FrontError, FrontStats, Netfront, RxPacket, TxMeta,
};
