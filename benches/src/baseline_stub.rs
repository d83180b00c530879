//! Stand-in for `baseline.rs` (branch `baseline`) until it is merged: the same API, every
//! run failing with "not available", so pktgen builds and runs without baselines.
#![allow(dead_code)]
use anyhow::bail;
use std::path::Path;

pub enum Dir {
    GuestTx,
    GuestRx,
}
pub struct TestpmdCpus {
    pub host: usize,
    pub guest: usize,
}
pub struct BaselineRun {
    pub pps: Vec<f64>,
    pub tx_packets: u64,
    pub rx_packets: u64,
}
pub fn vhost_user(
    _dir: Dir,
    _frame_len: usize,
    _warmup_secs: u64,
    _secs: u64,
    _cpus: &TestpmdCpus,
    _tag: &str,
) -> anyhow::Result<BaselineRun> {
    bail!("baseline module not merged yet")
}
pub fn memcpy_pps(
    _frame_len: usize,
    _footprint: usize,
    _interval: std::time::Duration,
    _intervals: usize,
) -> Vec<f64> {
    Vec::new()
}
pub enum MemifMode {
    Txonly,
    Rxonly,
}
pub struct MemifPeer;
pub struct PeerTotals {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub pps: Vec<f64>,
}
impl MemifPeer {
    pub fn start(
        _mode: MemifMode,
        _socket: &Path,
        _frame_len: usize,
        _dst_mac: [u8; 6],
        _cpu: usize,
        _tag: &str,
    ) -> anyhow::Result<MemifPeer> {
        bail!("baseline module not merged yet")
    }
    pub fn stop(self) -> anyhow::Result<PeerTotals> {
        bail!("baseline module not merged yet")
    }
}
pub fn memif_server_devargs(socket: &Path, id: u32) -> String {
    format!(
        "net_memif{id},role=server,id={id},socket={}",
        socket.display()
    )
}
