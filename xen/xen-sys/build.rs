//! Generates bindings over the system's Xen 4.17 headers and links its stable libraries.
use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=include");
    for lib in ["xengnttab", "xenevtchn", "xenstore", "xencall"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    let bindings = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_str().unwrap())
        .clang_arg(format!("-I{}", manifest.join("include").display()))
        // The netif/xs_wire/grant constants and structs, the four tool libraries, and the
        // gntdev/gntalloc/evtchn/privcmd ioctl argument structs.
        .allowlist_function("(xengnttab|xengntshr|xenevtchn|xs|xencall)_.*")
        .allowlist_type(
            "(netif|xen_netif|grant|gnttab|gntdev|gntalloc|xsd|xs|ioctl_gntdev|ioctl_gntalloc|ioctl_evtchn|privcmd|evtchn|xenbus|domid|xen_pfn|xenevtchn|xengnttab|xencall)_.*",
        )
        .allowlist_type("(domid_t|grant_ref_t|evtchn_port_t|xen_pfn_t|grant_entry_v1_t)")
        .allowlist_var("(NETTXF|NETRXF|XEN_NETIF|XEN_NETTXF|XEN_NETRXF|GTF|GNTST|GNTCOPY|GNTTABOP|XS|XSD|XENSTORE|__HYPERVISOR|DOMID|XBT|XS_)_.*")
        .allowlist_var("(NETIF_RSP|XEN_NETIF_RSP)_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen failed over the Xen headers: is libxen-dev 4.17 installed? (deploy/bootstrap)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("writing bindings.rs");
}
