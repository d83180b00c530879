//! The netbackd binary links DPDK's core libraries unconditionally: the PMD plugins that EAL
//! loads at run time (net_tap, net_ring, a NIC's driver) resolve their symbols against them,
//! and `ldd netbackd` then shows which DPDK the daemon runs with. Rust links with
//! --as-needed, which would drop a library the binary itself does not call yet.
fn main() {
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--push-state,--no-as-needed,-lrte_ethdev,-lrte_mbuf,-lrte_mempool,-lrte_ring,-lrte_net,--pop-state"
    );
}
