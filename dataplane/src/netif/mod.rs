//! The Xen netif interface: the wire ABI (`abi`) and the shared rings (`ring`).
pub mod abi;
pub mod ring;

pub use abi::*;
pub use ring::{
    BackRing, CtrlRing, FrontRing, Journal, ResumePoint, RingError, RingKind, RxRing, SharedPage,
    TxRing,
};
