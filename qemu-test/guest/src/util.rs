// SPDX-License-Identifier: GPL-2.0

//! Small helpers shared by the guest tests.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;

pub const MODULE: &str = "/lib/modules/shadowpt.ko";
pub const DEV: &str = "/dev/shadowpt";
pub const DEBUGFS: &str = "/sys/kernel/debug/shadowpt";

/// Runs a command, returns its stdout, fails with its stderr.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn module_loaded() -> bool {
    fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.split(' ').next() == Some("shadowpt")))
        .unwrap_or(false)
}

pub fn insmod() -> Result<(), String> {
    sh("insmod", &[MODULE]).map(|_| ())
}

pub fn rmmod() -> Result<(), String> {
    sh("rmmod", &["shadowpt"]).map(|_| ())
}

/// Loads the module unless it is already loaded.
pub fn ensure_loaded() -> Result<(), String> {
    if module_loaded() {
        Ok(())
    } else {
        insmod()
    }
}

/// Unloads the module if it is loaded.
pub fn ensure_unloaded() -> Result<(), String> {
    if module_loaded() {
        rmmod()
    } else {
        Ok(())
    }
}

/// Whether `/dev/shadowpt` exists and is a character device.
pub fn dev_present() -> Result<bool, String> {
    match fs::metadata(DEV) {
        Ok(m) if m.file_type().is_char_device() => Ok(true),
        Ok(_) => Err(format!("{DEV} exists but is not a character device")),
        Err(_) => Ok(false),
    }
}

pub fn debugfs_present() -> bool {
    Path::new(DEBUGFS).exists()
}

/// Fails with `msg` unless `cond` holds.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Fails with "WHAT: got GOT, expected WANT" unless `got == want`: counters are asserted exactly.
pub fn eq(what: &str, got: u64, want: u64) -> Result<(), String> {
    check(got == want, || {
        format!("{what}: got {got}, expected {want}")
    })
}

/// A pipe: `[read end, write end]`.
pub fn pipe() -> Result<[i32; 2], String> {
    let mut fds = [0i32; 2];
    // SAFETY: `pipe` writes two descriptors into the local array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    Ok(fds)
}

/// A seed for a seeded test: `arg` if given (it must be a number), else one from the clock (the
/// test prints it, so that a run can be repeated).
pub fn seed(arg: Option<&str>) -> Result<u64, String> {
    match arg {
        Some(a) => a.parse().map_err(|_| format!("bad seed {a:?}")),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)),
    }
}
