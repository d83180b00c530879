//! Binds the system DPDK found by pkg-config and builds the inline-function shim.
//!
//! Uses the raw `pkg-config` output: the pkg-config crate keeps only -I/-D and drops
//! `-include rte_config.h` and `-march=...`, without which DPDK's headers do not compile.
use std::{env, path::PathBuf, process::Command};

fn pkg_config(arg: &str) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args([arg, "libdpdk"])
        .output()
        .expect("running pkg-config (install it: deploy/bootstrap)");
    assert!(
        out.status.success(),
        "pkg-config {arg} libdpdk failed: {} (install libdpdk-dev: deploy/bootstrap)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout)
        .expect("pkg-config output is not UTF-8")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());

    // `-include X` arrives as two words; keep them together for both consumers.
    let cflags = pkg_config("--cflags");
    let mut cc = cc::Build::new();
    cc.file(manifest.join("src/shim.c"))
        .opt_level(3)
        .warnings(false);
    let mut clang_args = Vec::new();
    let mut it = cflags.iter();
    while let Some(f) = it.next() {
        if f == "-include" {
            let h = it
                .next()
                .expect("-include without a file in pkg-config output");
            cc.flag("-include").flag(h);
            clang_args.push(f.clone());
            clang_args.push(h.clone());
        } else {
            cc.flag(f);
            clang_args.push(f.clone());
        }
    }
    cc.compile("nbd_dpdk_shim");

    // Link the DPDK libraries dynamically, as the system ships them.
    for f in pkg_config("--libs") {
        if let Some(lib) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        }
    }
    // Drivers (net_ring, net_tap, ...) are plugins EAL loads from RTE_EAL_PMD_PATH (built
    // into Debian's librte_eal) at init; no -d argument is needed.

    let bindings = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_str().unwrap())
        .clang_args(&clang_args)
        .clang_arg(format!("-I{}", manifest.display()))
        .allowlist_function("(rte|nbd)_.*")
        .allowlist_type("(rte|nbd)_.*")
        .allowlist_var("(RTE|rte|NBD|RING_F)_.*")
        // Packed/aligned unions with bitfields that Rust cannot express exactly: opaque,
        // reached only through DPDK functions.
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .opaque_type("rte_gtp_psc_type0_hdr")
        .opaque_type("rte_gtp_psc_type1_hdr")
        .blocklist_function("rte_.*_(vprintf|vlog)")
        .blocklist_function("rte_vlog")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen over DPDK headers failed (is libdpdk-dev >= 22.11 installed?)");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
