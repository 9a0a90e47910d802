// SPDX-License-Identifier: GPL-2.0

//! Driving KSM fast and deterministically (see Documentation/testing.rst).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const KSM: &str = "/sys/kernel/mm/ksm";

pub fn write(knob: &str, value: &str) -> Result<(), String> {
    fs::write(format!("{KSM}/{knob}"), value).map_err(|e| format!("ksm {knob}={value}: {e}"))
}

pub fn read(knob: &str) -> Result<u64, String> {
    let s = fs::read_to_string(format!("{KSM}/{knob}")).map_err(|e| format!("ksm {knob}: {e}"))?;
    s.trim()
        .parse()
        .map_err(|e| format!("ksm {knob} {s:?}: {e}"))
}

/// Stops KSM, unmerges everything, and sets it up to scan `pages` pages per pass with no sleep.
pub fn reset(pages: usize) -> Result<(), String> {
    write("run", "2")?;
    write("sleep_millisecs", "0")?;
    write("pages_to_scan", &(2 * pages + 100).to_string())?;
    if Path::new(&format!("{KSM}/smart_scan")).exists() {
        write("smart_scan", "0")?;
    }
    write("use_zero_pages", "0")?;
    Ok(())
}

/// Runs KSM until `done()` holds after at least two more full scans (the first scan of a page only
/// records its checksum), then stops it without unmerging. Fails after `timeout`.
pub fn run_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<u64, String> {
    let start_scans = read("full_scans")?;
    let t0 = Instant::now();
    write("run", "1")?;
    let r = loop {
        let scans = read("full_scans")? - start_scans;
        if scans >= 2 && done()? {
            break Ok(scans);
        }
        if t0.elapsed() > timeout {
            break Err(format!(
                "KSM did not finish within {timeout:?} ({scans} full scans)"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    write("run", "0")?;
    r
}
