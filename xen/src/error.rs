use thiserror::Error;

/// Errors of the hypervisor interfaces.
#[derive(Debug, Error)]
pub enum XenError {
    #[error("xenstore: {op} {path}: {source}")]
    Store {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to xenstored at {path}: {source}")]
    StoreConnect {
        path: String,
        source: std::io::Error,
    },
    #[error("grant mapping of dom{domid} refs {grefs:?} failed: status {status}")]
    Map {
        domid: u16,
        grefs: Vec<u32>,
        status: i16,
    },
    #[error("event channel {op}: {msg}")]
    Evtchn { op: &'static str, msg: String },
    #[error("simulated host: {0}")]
    Sim(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A `/dev/xen` device could not be opened; `hint` says what is probably missing.
    #[error("cannot open {path}: {source} — {hint}")]
    Device {
        path: String,
        source: std::io::Error,
        hint: String,
    },
    /// This host cannot run the real backend (`linux::probe`); the text lists what is
    /// missing.
    #[error("not usable as a Xen dom0 backend: {0}")]
    NotDom0(String),
}

impl XenError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> XenError {
        XenError::Io {
            what: what.into(),
            source,
        }
    }
}
