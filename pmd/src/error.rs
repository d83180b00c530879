use std::ffi::CStr;
use thiserror::Error;

/// Errors of the DPDK layer. `msg` is DPDK's `rte_strerror` text for the code.
#[derive(Debug, Error)]
pub enum PmdError {
    #[error("EAL initialisation failed: {msg} (rte_errno {code})")]
    EalInit { code: i32, msg: String },
    #[error("EAL is already initialised in this process (DPDK allows it once)")]
    EalAlreadyInitialised,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("mempool {name:?}: {msg} (rte_errno {code})")]
    Mempool {
        name: String,
        code: i32,
        msg: String,
    },
    #[error("mbuf allocation failed: mempool exhausted")]
    NoMbufs,
    #[error("no DPDK port named {0:?} (is the device given with --vdev or probed?)")]
    PortNotFound(String),
    #[error("port {port}: {op} failed: {msg} (code {code})")]
    Port {
        port: u16,
        op: &'static str,
        code: i32,
        msg: String,
    },
}

/// DPDK's text for an error code (positive errno or `rte_errno` value).
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or per-lcore NUL-terminated
    // string, valid until the next call on this thread; we copy it out at once.
    unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// The calling thread's `rte_errno`.
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer; no preconditions.
    unsafe { dpdk_sys::nbd_errno() }
}

/// Builds a port error from a negative DPDK return code.
pub(crate) fn port_err(port: u16, op: &'static str, ret: i32) -> PmdError {
    let code = ret.abs();
    PmdError::Port {
        port,
        op,
        code,
        msg: strerror(code),
    }
}
