// SPDX-License-Identifier: GPL-2.0

//! Module and device lifecycle: load/unload, open/close, unload refused while open.

use crate::util::*;
use std::fs::{self, File, OpenOptions};
use std::process::Command;

const VERSION: &str = "0.2.0\n";

fn refcnt() -> Result<u64, String> {
    let s =
        fs::read_to_string("/sys/module/shadowpt/refcnt").map_err(|e| format!("refcnt: {e}"))?;
    s.trim().parse().map_err(|e| format!("refcnt {s:?}: {e}"))
}

fn open_dev() -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV)
        .map_err(|e| format!("open {DEV}: {e}"))
}

/// Load and unload the module 20 times; `/dev/shadowpt` and the debugfs directory must appear
/// with each load and disappear with each unload.
pub fn load_unload(_: &[String]) -> Result<(), String> {
    ensure_unloaded()?;
    for i in 0..20 {
        check(!dev_present()?, || {
            format!("iteration {i}: {DEV} present before insmod")
        })?;
        check(!debugfs_present(), || {
            format!("iteration {i}: {DEBUGFS} present before insmod")
        })?;
        insmod()?;
        check(dev_present()?, || {
            format!("iteration {i}: {DEV} missing after insmod")
        })?;
        let misc = fs::read_to_string("/proc/misc").map_err(|e| e.to_string())?;
        check(
            misc.lines().any(|l| l.trim_start().ends_with(" shadowpt")),
            || format!("iteration {i}: shadowpt not in /proc/misc"),
        )?;
        let v = fs::read_to_string(format!("{DEBUGFS}/version")).map_err(|e| e.to_string())?;
        check(v == VERSION, || {
            format!("iteration {i}: version file is {v:?}, expected {VERSION:?}")
        })?;
        check(refcnt()? == 0, || {
            format!("iteration {i}: refcnt not 0 with no file open")
        })?;
        rmmod()?;
        check(!dev_present()?, || {
            format!("iteration {i}: {DEV} still present after rmmod")
        })?;
        check(!debugfs_present(), || {
            format!("iteration {i}: {DEBUGFS} still present after rmmod")
        })?;
    }
    println!("20 load/unload cycles: device and debugfs appeared and disappeared each time");
    Ok(())
}

/// Several processes open and close the device concurrently; every open file holds exactly one
/// module reference, and all of them are gone afterwards.
pub fn open_close_processes(_: &[String]) -> Result<(), String> {
    const PROCS: usize = 8;
    const ITERS: &str = "500";
    ensure_loaded()?;
    check(refcnt()? == 0, || "refcnt not 0 before the test".into())?;

    let held: Vec<File> = (0..5).map(|_| open_dev()).collect::<Result<_, _>>()?;
    let r = refcnt()?;
    check(r == 5, || {
        format!("refcnt {r} with 5 files open, expected 5")
    })?;

    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for _ in 0..PROCS {
        let c = Command::new(&me)
            .args(["child_open_close", ITERS])
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        children.push(c);
    }
    for mut c in children {
        let st = c.wait().map_err(|e| e.to_string())?;
        check(st.success(), || format!("child failed: {st}"))?;
    }
    let r = refcnt()?;
    check(r == 5, || {
        format!("refcnt {r} after children exited, expected 5")
    })?;
    drop(held);
    let r = refcnt()?;
    check(r == 0, || {
        format!("refcnt {r} after closing everything, expected 0")
    })?;
    rmmod()?;
    println!("{PROCS} processes x {ITERS} open/close: refcounts exact, module unloads");
    Ok(())
}

/// Child half of `open_close_processes`: open and close the device N times.
pub fn child_open_close(args: &[String]) -> Result<(), String> {
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: child_open_close N")?;
    for _ in 0..n {
        drop(open_dev()?);
    }
    Ok(())
}

/// The module cannot be unloaded while a file is open; it can once the file is closed.
pub fn unload_while_open(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let f = open_dev()?;
    let r = rmmod();
    check(r.is_err(), || {
        "rmmod succeeded with /dev/shadowpt open".into()
    })?;
    check(module_loaded() && dev_present()?, || {
        "module or device gone after refused rmmod".into()
    })?;
    drop(f);
    rmmod()?;
    check(!module_loaded() && !dev_present()?, || {
        "module still present after rmmod".into()
    })?;
    println!(
        "rmmod refused while open ({}), accepted after close",
        r.err().unwrap_or_default().trim()
    );
    Ok(())
}

/// `kernel::mm::gup::get_user_page_fast()` called from a kernel thread (no address space):
/// `spt_nomm.ko` loads only if the lookup returned `ESRCH` (an unchecked lookup dereferences
/// the missing mm and oopses, which fails the run).
pub fn gup_without_mm(_: &[String]) -> Result<(), String> {
    sh("insmod", &["/lib/modules/spt_nomm.ko"])?;
    let log = sh("dmesg", &[])?;
    check(
        log.contains("get_user_page_fast from a kernel thread: ESRCH"),
        || "spt_nomm loaded without reporting ESRCH".into(),
    )?;
    sh("rmmod", &["spt_nomm"])?;
    println!("get_user_page_fast from a kernel thread: ESRCH, no oops");
    Ok(())
}

/// The series' sample (`samples/rust/rust_mmu_notifier.rs`): a file of `/dev/rust-mmu-notifier`
/// subscribes to this process; between open and close the process only maps, touches and unmaps
/// 4 pages (raw system calls, no allocation), so the sample must report exactly one invalidation
/// (the `munmap`), none flagged for `change_pte`, no `change_pte` call and no release.
pub fn sample_mmu_notifier(_: &[String]) -> Result<(), String> {
    sh("insmod", &["/lib/modules/rust_mmu_notifier.ko"])?;
    let dev = c"/dev/rust-mmu-notifier";
    // SAFETY: A valid C string; the descriptor is closed below.
    let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR) };
    check(fd >= 0, || {
        format!(
            "open /dev/rust-mmu-notifier: {}",
            std::io::Error::last_os_error()
        )
    })?;
    let len = 4 * 4096;
    // SAFETY: A fresh anonymous mapping, touched and unmapped here only.
    let ok = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            false
        } else {
            std::ptr::write_bytes(p.cast::<u8>(), 1, len);
            libc::munmap(p, len) == 0
        }
    };
    // SAFETY: Our own descriptor: closing it unsubscribes and prints the counts.
    unsafe { libc::close(fd) };
    check(ok, || "mmap/munmap failed".into())?;
    let log = sh("dmesg", &[])?;
    sh("rmmod", &["rust_mmu_notifier"])?;
    let line = log
        .lines()
        .find(|l| l.contains("rust_mmu_notifier:") && l.contains("invalidations"))
        .ok_or("the sample printed no counts on close")?;
    let want = "1 invalidations (0 for a change_pte), 0 change_pte calls, 0 releases";
    check(line.ends_with(want), || {
        format!("sample reported {line:?}, expected {want:?}")
    })?;
    println!("sample_mmu_notifier: {want}");
    Ok(())
}
