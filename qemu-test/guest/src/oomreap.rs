// SPDX-License-Identifier: GPL-2.0

//! The OOM reaper backs off an address space whose notifier cannot invalidate without sleeping.
//!
//! `spt_noblock.ko` registers a notifier (through the series' `kernel::mm::mmu_notifier`) whose
//! `invalidate_range_start` answers `EAGAIN` to every non-blockable range and which has no
//! `invalidate_range_end`. The C contract: `mn_hlist_invalidate_range_start()` logs "callback
//! failed with -11 in non-blockable context", warns about nothing (the error is `EAGAIN`, the
//! range non-blockable, and there is no end op), passes the error on, and the OOM reaper leaves
//! the address space alone ("oom_reaper: unable to reap"), rather than free pages the secondary
//! MMU still maps. The Rust abstraction must hand the callback's error to C unchanged.
//!
//! The broken behaviour this catches, an abstraction that swallows the error (`warn_on!` and
//! 0), is in the kernel (patch 0005), not in a module: a broken build of it would be a second
//! test kernel, too slow to build for `make check`, so there is no breaktest case. Under it the
//! `warn_on!` panics the guest (`panic_on_warn=1`) and the reaper reports the process reaped.
//!
//! The OOM kill comes from SysRq-f (`out_of_memory()` without memory pressure: the same victim
//! selection, kill and reaper, deterministic and quick under TCG). Its report and the reaper's
//! dump a stack ("Call Trace:"), which the harness counts as a kernel report: the test keeps them
//! off the console by lowering the console log level while they happen, checks the kernel log
//! itself (those two stack dumps are all it may hold beyond the expected messages), and clears
//! it.

use crate::util::*;
use std::time::{Duration, Instant};

const DEV: &str = "/dev/spt_noblock";
/// `SPT_NOBLOCK_SLEEP` of `qemu-test/modules/spt_noblock.rs`.
const SLEEP: u64 = 0xb940;
/// How long the victim's thread sleeps in the ioctl: the reaper starts 2 s after the kill and
/// tries 10 times, 100 ms apart.
const SLEEP_MS: usize = 5000;

/// What the harness's scan counts as a kernel report (`qemu-test/init`), but for stack dumps.
const REPORTS: [&str; 17] = [
    "WARNING:",
    "BUG:",
    "Oops",
    "KFENCE:",
    "new suspected",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "suspicious RCU usage",
    "sleeping function called from invalid context",
    "panicked at",
    "general protection fault",
    "UBSAN:",
    "Badness",
    "detected stalls on CPUs/tasks:",
    "Stall ended before state dump start",
    "kthread starved for",
];

/// The console log level, lowered while it lives.
struct QuietConsole(String);

impl QuietConsole {
    fn new() -> Result<Self, String> {
        let old = std::fs::read_to_string("/proc/sys/kernel/printk")
            .map_err(|e| format!("printk: {e}"))?;
        let level = old.split_whitespace().next().unwrap_or("7").to_string();
        // Only KERN_ERR and worse reach the console: a panic still does.
        std::fs::write("/proc/sys/kernel/printk", "4").map_err(|e| format!("printk: {e}"))?;
        Ok(Self(level))
    }
}

impl Drop for QuietConsole {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/printk", &self.0);
    }
}

/// The state letter of thread `tid` of process `pid`.
fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The victim: `oom_score_adj` 1000, 256 touched pages, `spt_noblock` registered on its address
/// space, and a thread that reports its tid and then sleeps in the module's ioctl.
fn victim(report: i32) -> ! {
    let r = (|| -> Result<(), String> {
        std::fs::write("/proc/self/oom_score_adj", "1000").map_err(|e| e.to_string())?;
        let m = crate::mem::Mapping::anon(256)?;
        for i in 0..256 {
            m.fill(i, 0x5a);
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV)
            .map_err(|e| format!("{DEV}: {e}"))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        std::thread::spawn(move || {
            // SAFETY: Our own thread id, written to our own pipe, then our own file's ioctl.
            unsafe {
                let tid = libc::gettid();
                libc::write(report, (&tid as *const i32).cast(), 4);
                libc::ioctl(fd, SLEEP as _, SLEEP_MS);
            }
        });
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let _ = (&m, &f);
        }
    })();
    eprintln!("victim: {r:?}");
    // SAFETY: Leaving the child.
    unsafe { libc::_exit(1) }
}

pub fn oom_reap_backoff(_: &[String]) -> Result<(), String> {
    sh("insmod", &["/lib/modules/spt_noblock.ko"])?;
    let r = run();
    let _ = sh("rmmod", &["spt_noblock"]);
    r
}

fn run() -> Result<(), String> {
    let fds = pipe()?;
    // SAFETY: Single-threaded here; the child runs `victim`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        victim(fds[1]);
    }
    check(pid > 0, || "fork failed".into())?;
    let mut tid = 0i32;
    // SAFETY: Reading the victim thread's id (4 bytes) from our pipe.
    let n = unsafe { libc::read(fds[0], (&mut tid as *mut i32).cast(), 4) };
    check(n == 4, || "the victim did not start".into())?;
    let t0 = Instant::now();
    while thread_state(pid, tid) != Some('D') {
        check(t0.elapsed() < Duration::from_secs(5), || {
            format!(
                "the victim's thread is not in its ioctl: state {:?}",
                thread_state(pid, tid)
            )
        })?;
        std::thread::sleep(Duration::from_millis(10));
    }

    let quiet = QuietConsole::new()?;
    let killed_at = Instant::now();
    std::fs::write("/proc/sysrq-trigger", "f").map_err(|e| format!("sysrq-trigger: {e}"))?;
    let mut status = 0;
    // SAFETY: Waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let gone = killed_at.elapsed();
    let log = sh("dmesg", &[])?;
    drop(quiet);
    // The stack dumps checked below would fail the test in the harness's scan.
    // SAFETY: SYSLOG_ACTION_CLEAR takes no buffer.
    unsafe { libc::klogctl(5, std::ptr::null_mut(), 0) };

    check(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        || format!("the victim was not killed by the OOM killer (status {status:#x})"),
    )?;
    let has = |s: &str| log.lines().any(|l| l.contains(s));
    check(has(&format!("Killed process {pid} ")), || {
        format!("the OOM killer did not kill pid {pid}:\n{log}")
    })?;
    let refusals = log
        .lines()
        .filter(|l| {
            l.contains("callback failed with -11 in non-blockable context")
                && l.contains("[spt_noblock]")
        })
        .count();
    check(refusals > 0, || {
        format!("no \"callback failed with -11 in non-blockable context\" from spt_noblock:\n{log}")
    })?;
    check(
        has(&format!("oom_reaper: unable to reap pid:{pid} ")),
        || format!("the reaper did not back off pid {pid}:\n{log}"),
    )?;
    check(!has(&format!("oom_reaper: reaped process {pid} ")), || {
        format!("the reaper reaped pid {pid} despite its notifier's EAGAIN")
    })?;
    let counts = log
        .lines()
        .find(|l| l.contains("spt_noblock: refused "))
        .ok_or("spt_noblock printed no counts on close")?;
    check(counts.ends_with(", 1 releases"), || {
        format!("the address space did not go away through release: {counts:?}")
    })?;
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| REPORTS.iter().any(|r| l.contains(r)))
        .collect();
    check(reports.is_empty(), || {
        format!("kernel reports: {}", reports.join(" | "))
    })?;
    // One stack dump in the OOM report, one in the reaper's "unable to reap".
    let dumps = log.lines().filter(|l| l.contains("Call Trace:")).count();
    check(dumps <= 2, || {
        format!("{dumps} stack dumps, expected the OOM report's and the reaper's:\n{log}")
    })?;
    println!(
        "oom_reap_backoff: pid {pid} OOM-killed (SysRq-f) while a thread slept {SLEEP_MS} ms in spt_noblock's ioctl; {refusals} non-blockable invalidations refused with EAGAIN (no warning), the reaper gave up, the process exited {} ms after the kill; {counts}",
        gone.as_millis()
    );
    Ok(())
}
