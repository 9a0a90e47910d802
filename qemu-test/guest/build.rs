// SPDX-License-Identifier: GPL-2.0

//! Generates the ABI's structures and constants from the C header, the one source of truth
//! (`include/uapi/linux/shadowpt.h`), with the bindgen the project installs (`SHADOWPT_BINDGEN`,
//! see scripts/env.sh; `bindgen` on PATH otherwise) against the build machine's
//! `/usr/include/linux` headers.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let header = "../../include/uapi/linux/shadowpt.h";
    println!("cargo:rerun-if-changed={header}");
    println!("cargo:rerun-if-env-changed=SHADOWPT_BINDGEN");
    let bindgen = env::var("SHADOWPT_BINDGEN").unwrap_or_else(|_| "bindgen".to_string());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("shadowpt.rs");
    let status = Command::new(&bindgen)
        .args([
            header,
            "--no-layout-tests",
            "--no-doc-comments",
            "--allowlist-type",
            "shadowpt_.*",
            "--allowlist-var",
            "SHADOWPT_.*",
            "--with-derive-default",
            "--with-derive-partialeq",
            "--with-derive-eq",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("{bindgen}: {e} (run scripts/setup, or set SHADOWPT_BINDGEN)"));
    assert!(status.success(), "{bindgen} failed on {header}");
}
