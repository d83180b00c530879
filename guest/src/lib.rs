//! A simulated domU: a netfront driver over the sim host plus a small IP stack.
//!
//! Used by tests, the demo and the benchmarks, never by production. Filled by the
//! sim-host issue; until then it exports nothing.
