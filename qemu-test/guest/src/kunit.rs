// SPDX-License-Identifier: GPL-2.0

//! `kunit`: the kernel's own unit tests, as KUnit ran them in this boot.
//!
//! The test kernel has `CONFIG_KUNIT`: the Rust kernel crate's `#[kunit_tests]` suites and its
//! doctests (`CONFIG_RUST_KERNEL_DOCTESTS`, the `kernel::mm::mmu_notifier` examples among them)
//! ran at boot, and shadowpt.ko's `shadowpt_table` suite (rust/table.rs) runs when the module
//! loads. KUnit leaves each suite's KTAP results in `/sys/kernel/debug/kunit/<suite>/results`.
//! This test reloads shadowpt.ko so that its suite runs now, then reports one case per suite:
//! it fails if a suite failed, if a suite this project depends on is missing, or if no
//! mmu_notifier doctest ran.

use crate::ktap;
use crate::util::*;
use std::fs;

const DIR: &str = "/sys/kernel/debug/kunit";

/// Suites that must have run: shadowpt.ko's, and the kernel crate's doctests.
const REQUIRED: [&str; 2] = ["shadowpt_table", "rust_doctests_kernel"];

/// The results of one suite: its verdict and its cases' (name, passed or skipped).
struct Suite {
    ok: bool,
    cases: Vec<(String, bool)>,
}

/// Parses a suite's KTAP results: the result lines indented least are its cases (deeper ones
/// are parameters of a case), the last unindented one is the suite's own.
fn parse(text: &str) -> Result<Suite, String> {
    let mut ok = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let (passed, rest) = if let Some(r) = trimmed.strip_prefix("ok ") {
            (true, r)
        } else if let Some(r) = trimmed.strip_prefix("not ok ") {
            (false, r)
        } else {
            continue;
        };
        // "N name [# directive]"
        let name = rest.split_once(' ').map_or("", |(_, n)| n);
        let name = name.split(" #").next().unwrap_or("").trim().to_string();
        let passed = passed || rest.contains("# SKIP");
        match line.len() - trimmed.len() {
            0 => ok = Some(passed),
            indent => lines.push((indent, name, passed)),
        }
    }
    let ok = ok.ok_or("no result line for the suite")?;
    let top = lines.iter().map(|l| l.0).min().unwrap_or(0);
    let cases = lines
        .into_iter()
        .filter(|l| l.0 == top)
        .map(|(_, name, passed)| (name, passed))
        .collect();
    Ok(Suite { ok, cases })
}

fn check_suite(name: &str) -> Result<Suite, String> {
    let path = format!("{DIR}/{name}/results");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let suite = parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let failed: Vec<&str> = suite
        .cases
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n.as_str())
        .collect();
    check(suite.ok && failed.is_empty(), || {
        format!("{name}: failed: {}\n{text}", failed.join(", "))
    })?;
    check(!suite.cases.is_empty(), || format!("{name}: no cases ran\n{text}"))?;
    Ok(suite)
}

pub fn kunit(_: &[String]) -> Result<(), String> {
    check(fs::metadata(DIR).is_ok(), || {
        format!("{DIR} missing: this kernel has no CONFIG_KUNIT (or CONFIG_KUNIT_DEBUGFS)")
    })?;
    // shadowpt_table runs as the module loads.
    ensure_unloaded()?;
    insmod()?;
    let mut suites: Vec<String> = fs::read_dir(DIR)
        .map_err(|e| format!("{DIR}: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("results").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    suites.sort();
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !suites.iter().any(|s| s == r))
        .collect();
    ktap::start(Some(suites.len() + 1));
    let mut doctests = Vec::new();
    for name in &suites {
        ktap::case(name, || {
            let suite = check_suite(name)?;
            println!("kunit: {name}: {} cases passed", suite.cases.len());
            if name == "rust_doctests_kernel" {
                doctests = suite.cases.into_iter().map(|(n, _)| n).collect();
            }
            Ok(())
        });
    }
    ktap::case("required suites and doctests present", || {
        check(missing.is_empty(), || {
            format!("suites missing: {} (have: {})", missing.join(", "), suites.join(", "))
        })?;
        let mn = doctests.iter().filter(|n| n.contains("mmu_notifier")).count();
        check(mn > 0 || !missing.is_empty(), || {
            "no kernel::mm::mmu_notifier doctest among rust_doctests_kernel".into()
        })?;
        println!("kunit: {} suites, {mn} mmu_notifier doctests", suites.len());
        Ok(())
    });
    ktap::finish()
}
