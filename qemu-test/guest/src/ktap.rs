// SPDX-License-Identifier: GPL-2.0

//! A test's cases as KTAP v1 subtests (the kernel's Documentation/dev-tools/ktap.rst).
//!
//! A test with cases prints one KTAP document on stdout: `KTAP version 1`, the plan `1..N` if it
//! knows N up front, and a result line per case: `ok 3 name`, `not ok 3 name # message` (a
//! message of several lines goes before it as `# ` diagnostic lines), `ok 3 name # SKIP reason`.
//! Everything else the test prints is, for KTAP, an "unknown line". The guest's /init nests the
//! document under the test's own result line in the suite's document on the result port, and
//! adds the plan when the test printed none (Documentation/testing.rst).
//!
//! A failing case fails the test: [`finish`] returns the failures, joined by "; ", and `main`
//! turns a failure recorded here into the test's `NAME: FAILED: message` line even if the test
//! returned `Ok`. By default the remaining cases still run (they are independent); after
//! [`stop_at_failure`] they are reported as skipped instead, for tests whose cases share state
//! that a failure can leave behind (KSM's, KVM's), which is what the test did before it had
//! cases: it stopped at the first failure.
//!
//! One document per process: the state is global. Only the test's own process reports cases
//! (not a forked child), one case at a time.

use std::sync::{Mutex, MutexGuard, PoisonError};

struct Doc {
    started: bool,
    next: usize,
    stop: bool,
    failures: Vec<String>,
}

static DOC: Mutex<Doc> = Mutex::new(Doc {
    started: false,
    next: 1,
    stop: false,
    failures: Vec::new(),
});

fn doc() -> MutexGuard<'static, Doc> {
    DOC.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A description for a result line: no `#` (it starts the directive), one line.
fn description(name: &str) -> String {
    let d: String = name
        .chars()
        .map(|c| match c {
            '#' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    d.trim().to_string()
}

/// Starts the document: the version line and, if the number of cases is known, the plan.
pub fn start(plan: Option<usize>) {
    let mut d = doc();
    assert!(!d.started, "ktap::start called twice");
    d.started = true;
    println!("KTAP version 1");
    if let Some(n) = plan {
        println!("1..{n}");
    }
}

/// After a failing case, report the following cases as skipped instead of running them.
pub fn stop_at_failure() {
    doc().stop = true;
}

/// Whether a case has failed.
pub fn failed() -> bool {
    !doc().failures.is_empty()
}

/// Runs case `name` (unless an earlier one failed after [`stop_at_failure`]) and reports it.
/// Returns whether it passed.
pub fn case(name: &str, f: impl FnOnce() -> Result<(), String>) -> bool {
    let not_run = {
        let d = doc();
        d.stop && !d.failures.is_empty()
    };
    if not_run {
        skip(name, "not run: an earlier case failed");
        return false;
    }
    result(name, f())
}

/// Reports case `name` with the result `r` (an error is its failure message). Returns whether
/// it passed.
pub fn result(name: &str, r: Result<(), String>) -> bool {
    let mut d = doc();
    assert!(d.started, "ktap: a case before ktap::start");
    let n = d.next;
    d.next += 1;
    let name = description(name);
    match r {
        Ok(()) => {
            println!("ok {n} {name}");
            true
        }
        Err(msg) => {
            let mut lines = msg.lines();
            let first = lines.next().unwrap_or("").trim();
            if lines.next().is_some() {
                for l in msg.lines() {
                    println!("# {l}");
                }
            }
            if first.is_empty() {
                println!("not ok {n} {name}");
            } else {
                println!("not ok {n} {name} # {first}");
            }
            d.failures.push(msg);
            false
        }
    }
}

/// Reports case `name` as skipped, e.g. for a feature the kernel lacks.
pub fn skip(name: &str, reason: &str) {
    let mut d = doc();
    assert!(d.started, "ktap: a case before ktap::start");
    let n = d.next;
    d.next += 1;
    println!(
        "ok {n} {} # SKIP {}",
        description(name),
        reason.replace('\n', " ")
    );
}

/// The verdict over the cases: `Err` with their failure messages joined by "; " if any failed.
pub fn finish() -> Result<(), String> {
    let d = doc();
    if d.failures.is_empty() {
        Ok(())
    } else {
        Err(d.failures.join("; "))
    }
}

/// The test's verdict (`main`): a failing case fails the test, with the cases' messages, even if
/// the test returned `Ok` or a later error of its own (printed as a diagnostic), unless the test's
/// error is the cases' messages with more said after them.
pub fn verdict(r: Result<(), String>) -> Result<(), String> {
    match (finish(), r) {
        (Ok(()), r) => r,
        (Err(cases), Ok(())) => Err(cases),
        (Err(cases), Err(e)) if e.starts_with(&cases) => Err(e),
        (Err(cases), Err(e)) => {
            for l in e.lines() {
                println!("# then: {l}");
            }
            Err(cases)
        }
    }
}
