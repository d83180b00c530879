//! Raw bindings to the system DPDK (22.11+), found with `pkg-config libdpdk`, plus `nbd_*`
//! out-of-line wrappers for the static inline functions DPDK's fast path is made of
//! (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, ...: see `src/shim.h`).
//!
//! Generated at build time; bindgen's layout checks compile with it. Safe wrappers are in
//! the `pmd` crate.

// Generated code follows C naming and has no SAFETY comments of its own.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    improper_ctypes,
    unsafe_op_in_unsafe_fn,
    unnecessary_transmutes,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
pub use generated::*;
