// SPDX-License-Identifier: GPL-2.0

//! shadowpt guest tests.
//!
//! One static binary; each test is a symlink `/tests/<name>` to it (dispatch on argv[0]), or
//! `sptest <name>`. A test prints what it checks and exits 0 on success, non-zero on failure.
//! A test with cases also prints them as KTAP (`ktap`); a failing case fails the test.

mod attach;
mod bench;
mod cptest;
mod dirty;
mod fuzz;
mod hugezap;
mod ksm;
mod ksmproof;
mod ktap;
mod kunit;
mod kvm;
mod kvm_zaps;
mod lifecycle;
mod mem;
mod mirror;
mod oomreap;
mod races;
mod spt;
mod stress;
mod util;
mod vmbench;

use std::process::exit;

/// A guest test: name and entry point. Tests return `Err(message)` on failure.
pub struct Test {
    pub name: &'static str,
    pub run: fn(&[String]) -> Result<(), String>,
}

const TESTS: &[Test] = &[
    Test {
        name: "module_load_unload",
        run: lifecycle::load_unload,
    },
    Test {
        name: "kunit",
        run: kunit::kunit,
    },
    Test {
        name: "open_close_processes",
        run: lifecycle::open_close_processes,
    },
    Test {
        name: "unload_while_open",
        run: lifecycle::unload_while_open,
    },
    Test {
        name: "mirror_data",
        run: mirror::data,
    },
    Test {
        name: "mirror_coherence",
        run: mirror::coherence,
    },
    Test {
        name: "mirror_errors",
        run: mirror::errors,
    },
    Test {
        name: "mirror_lifecycle",
        run: mirror::lifecycle,
    },
    Test {
        name: "mirror_attach",
        run: attach::attach,
    },
    Test {
        name: "mirror_huge_zap",
        run: hugezap::huge_zap,
    },
    Test {
        name: "mirror_dirty",
        run: dirty::dirty,
    },
    Test {
        name: "ksm_proof",
        run: ksmproof::proof,
    },
    Test {
        name: "kvm_ksm",
        run: kvm::kvm_ksm,
    },
    Test {
        name: "kvm_memslot_race",
        run: kvm_zaps::kvm_memslot_race,
    },
    Test {
        name: "kvm_pfnmap_cow",
        run: kvm_zaps::kvm_pfnmap_cow,
    },
    Test {
        name: "kvm_gmem_slot",
        run: kvm_zaps::kvm_gmem_slot,
    },
    Test {
        name: "races",
        run: races::races,
    },
    Test {
        name: "fuzz",
        run: fuzz::fuzz,
    },
    Test {
        name: "stress",
        run: stress::stress,
    },
    // Linux L2 guests under KVM: the smoke test (default suite), `make bench-vm` and what
    // runs inside each of its L2s.
    Test {
        name: "l2_boot",
        run: vmbench::l2_boot,
    },
    Test {
        name: "bench_vm",
        run: vmbench::bench_vm,
    },
    Test {
        name: "l2_work",
        run: vmbench::l2_work,
    },
    // `make bench` (not in the default suite).
    Test {
        name: "bench",
        run: bench::bench,
    },
    // The `make run` demo's scenario (not in the default suite: ksm_proof covers it).
    Test {
        name: "ksm_demo",
        run: ksmproof::demo,
    },
    Test {
        name: "change_pte_reachable",
        run: cptest::change_pte_reachable,
    },
    Test {
        name: "gup_without_mm",
        run: lifecycle::gup_without_mm,
    },
    Test {
        name: "sample_mmu_notifier",
        run: lifecycle::sample_mmu_notifier,
    },
    Test {
        name: "oom_reap_backoff",
        run: oomreap::oom_reap_backoff,
    },
    // Harness self-test (qemu-test/selftest): must make the run fail.
    Test {
        name: "harness_fail",
        run: |_| Err("failing on purpose (harness self-test)".into()),
    },
    // Helper entry point used by open_close_processes, not a test on its own.
    Test {
        name: "child_open_close",
        run: lifecycle::child_open_close,
    },
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().map(String::as_str).unwrap_or("sptest");
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let (name, rest) = if base == "sptest" {
        match args.get(1) {
            Some(n) => (n.as_str(), &args[2..]),
            None => {
                eprintln!("usage: sptest TEST [ARGS]\ntests:");
                for t in TESTS {
                    eprintln!("  {}", t.name);
                }
                exit(2);
            }
        }
    } else {
        (base, &args[1..])
    };
    let Some(test) = TESTS.iter().find(|t| t.name == name) else {
        eprintln!("sptest: no test named {name}");
        exit(2);
    };
    match ktap::verdict((test.run)(rest)) {
        Ok(()) => {
            println!("{name}: ok");
        }
        Err(msg) => {
            eprintln!("{name}: FAILED: {msg}");
            exit(1);
        }
    }
}
