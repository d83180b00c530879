//! The netbackd engine. No I/O of its own: it drives the Xen interfaces of the `xen`
//! crate and the DPDK ports of the `pmd` crate.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod credit;
pub mod ctrl;
pub mod engine;
pub mod gro;
pub mod netif;
pub mod offload;
pub mod rxplan;
pub mod switch;
pub mod toeplitz;
pub mod txparse;
pub mod wire;
