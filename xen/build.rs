//! Builds the LD_PRELOAD shim that lets Xen's real xenstored run on the simulated host
//! (a shared object, which the `cc` crate does not make by itself).
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=shim/xenstored-shim.c");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("libnbd_xsshim.so");
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg("shim/xenstored-shim.c")
        .arg("-ldl")
        .status()
        .expect("running the C compiler for the xenstored shim");
    assert!(
        status.success(),
        "building shim/xenstored-shim.c failed (needs libxen-dev)"
    );
}
