//! The xenbus backend: one state machine per vif, driven by xenstore watches.
//!
//! Filled by the control-plane issue; until then this crate exports nothing, so nothing
//! can depend on a control plane that does not exist yet.
