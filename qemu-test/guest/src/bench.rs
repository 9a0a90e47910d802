// SPDX-License-Identifier: GPL-2.0

//! `make bench`: what change_pte buys, what the callbacks cost, shadowpt against test_hmm.
//!
//! Prints one CSV line per measurement, prefixed with `BENCH,`; `scripts/bench-report` turns them
//! into `Documentation/benchmarks.md`. Every number is measured in this one boot; the report only
//! compares numbers of the same run (ratios), since TCG timings mean nothing in absolute terms.
//! Counts (faults, calls) come from shadowpt's and test_hmm's own counters, times from
//! `CLOCK_MONOTONIC` around the one system call or loop being measured.

use crate::ksm;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Repetitions of the KSM-cost experiment: its spread is that of ksmd's scans.
const KSM_REPS: usize = 10;
/// Repetitions of KSM's cost with a KVM guest (each boots an L2 and faults in its N pages).
const KVM_KSM_REPS: usize = 5;

fn us(t: Instant) -> u128 {
    t.elapsed().as_micros()
}

/// Fills every page of `m` with the same content (generation `g`).
fn fill_same(m: &Mapping, g: u8) {
    let page: Vec<u8> = (0..PAGE).map(|j| (j as u8) ^ g ^ 0xa5).collect();
    for i in 0..m.pages() {
        m.put(i * PAGE, &page);
    }
}

/// What one KSM merge cost.
pub(crate) struct MergeCost {
    pub(crate) wall: Duration,
    /// ksmd's CPU time.
    pub(crate) ksmd_ns: u64,
    pub(crate) full_scans: u64,
    pub(crate) pages_scanned: u64,
}

/// ksmd's pid.
pub(crate) fn ksmd_pid() -> Result<libc::pid_t, String> {
    for e in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let e = e.map_err(|e| format!("/proc: {e}"))?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "ksmd") {
            return Ok(pid);
        }
    }
    Err("no ksmd thread".into())
}

/// The CPU time `pid` has used, in ns (its CPU-time clock: the scheduler's runtime, not ticks).
pub(crate) fn cpu_ns(pid: libc::pid_t) -> Result<u64, String> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is valid for writing.
    let r = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    check(r == 0, || format!("clock_getcpuclockid({pid}): error {r}"))?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writing.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    check(r == 0, || {
        format!(
            "clock_gettime(cpu clock of {pid}): {}",
            std::io::Error::last_os_error()
        )
    })?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Runs KSM until all `total` pages of `m` are merged, and returns what it cost ksmd.
///
/// ksmd's own work, not the wall time, is the measure: ksmd scans `pages_to_scan` pages per batch
/// and a batch ends with a full scan, so with room for every page in one batch each full scan is
/// one batch; the 20 ms sleep between batches lets `ksm::run_until` (which polls every 5 ms)
/// stop ksmd (`run` = 0) before the next scan once the merge is done (two full scans: the first records checksums). Its CPU
/// time then covers the same scans in every run, mirror or not.
pub(crate) fn merge(m: &Mapping, total: usize) -> Result<MergeCost, String> {
    ksm::reset(total)?;
    ksm::write("max_page_sharing", &(total + 2).to_string())?;
    ksm::write("sleep_millisecs", "20")?;
    m.madvise(libc::MADV_MERGEABLE)?;
    let ksmd = ksmd_pid()?;
    let (scans0, scanned0, cpu0) = (
        ksm::read("full_scans")?,
        ksm::read("pages_scanned")?,
        cpu_ns(ksmd)?,
    );
    let t0 = Instant::now();
    ksm::run_until(Duration::from_secs(600), || {
        Ok(ksm::read("pages_shared")? + ksm::read("pages_sharing")? == total as u64)
    })?;
    let wall = t0.elapsed();
    Ok(MergeCost {
        wall,
        ksmd_ns: cpu_ns(ksmd)? - cpu0,
        full_scans: ksm::read("full_scans")? - scans0,
        pages_scanned: ksm::read("pages_scanned")? - scanned0,
    })
}

fn print_merge(name: &str, n: usize, rep: usize, c: &MergeCost) {
    println!(
        "BENCH,ksm_merge,{name},{n},{rep},{},{},{},{}",
        c.wall.as_micros(),
        c.ksmd_ns,
        c.full_scans,
        c.pages_scanned
    );
}

fn mode_name(mode: u32) -> &'static str {
    if mode == MODE_CHANGE_PTE {
        "change_pte"
    } else {
        "zap"
    }
}

/// Re-access after a KSM merge and after a COW break, and KSM's merge time with this mirror.
fn reaccess(n: usize, mode: Option<u32>, rep: usize) -> Result<(), String> {
    let m = Mapping::anon(n + 1)?;
    fill_same(&m, rep as u8);
    let Some(mode) = mode else {
        print_merge("none", n, rep, &merge(&m, n + 1)?);
        return ksm::write("run", "2");
    };
    let name = mode_name(mode);
    let s = Spt::open()?;
    let addr = m.addr + PAGE;
    s.attach(addr, n * PAGE, mode)?;
    s.fault(addr, n * PAGE, true)?;
    print_merge(name, n, rep, &merge(&m, n + 1)?);
    // Re-access: the table walk (FAULT ioctl) and a read of the data (READ ioctl).
    for phase in ["merge", "cow"] {
        if phase == "cow" {
            let st = s.stats()?;
            let t0 = Instant::now();
            for i in 1..=n {
                m.put(i * PAGE + 1, &[0xee]);
            }
            let cow_us = us(t0);
            let d = s.stats()?;
            println!(
                "BENCH,cow_write,{name},{n},{rep},{cow_us},{},{}",
                d.change_pte - st.change_pte,
                d.change_pte_ns - st.change_pte_ns
            );
        }
        let t0 = Instant::now();
        let faults = s.fault(addr, n * PAGE, false)?;
        let fault_us = us(t0);
        // READ in chunks of at most 64 MiB (N = 256 Ki would need 1 GiB of buffer), compared
        // in place with the process's view.
        let chunk = n.min(16384);
        let mut buf = vec![0u8; chunk * PAGE];
        let mut read_us = 0;
        for c in (0..n).step_by(chunk) {
            let t0 = Instant::now();
            let rf = s
                .try_read(addr + c * PAGE, &mut buf)
                .map_err(|e| format!("read: {}", errname(e)))?;
            read_us += us(t0);
            check(rf == 0, || format!("READ after FAULT took {rf} faults"))?;
            // SAFETY: Pages c.. c + chunk of the mirrored range: mapped and readable.
            let seen =
                unsafe { std::slice::from_raw_parts((addr + c * PAGE) as *const u8, chunk * PAGE) };
            check(buf == seen, || "data differs".into())?;
        }
        println!("BENCH,reaccess,{phase},{name},{n},{rep},{faults},{fault_us},{read_us}");
    }
    let st = s.stats()?;
    // Merge-phase callback cost: every change_pte of the merge and COW phases.
    println!(
        "BENCH,callbacks,{name},{n},{rep},{},{},{},{},{}",
        st.change_pte, st.change_pte_ns, st.invalidate_start, st.invalidate_ns, st.zapped
    );
    ksm::write("run", "2")
}

/// KSM's cost with a mirror: one merge of `n` identical pages with no notifier (`none`), with a
/// shadowpt attachment elsewhere in the process (`elsewhere`: the MMU notifier core calls the
/// callbacks, which return at once, so this is the cost of having a notifier at all), and with
/// a change_pte and a zap mirror of the pages, measured as ksmd's CPU time, its full scans and
/// the pages it scanned; the mirrors' callback calls (`invalidate_range_start` + `change_pte`).
/// `make bench` runs this in a boot of its own under QEMU's `-icount`, where guest time counts
/// guest instructions: TCG wall time scatters ksmd's CPU time by a third from one merge to the
/// next, icount by about 1%.
fn ksm_cost(n: usize, rep: usize) -> Result<(), String> {
    for mode in ["none", "elsewhere", "change_pte", "zap"] {
        let m = Mapping::anon(n)?;
        fill_same(&m, rep as u8 ^ 0x3c);
        let s = Spt::open()?;
        // `elsewhere`: 16 mirrored pages of their own, which KSM does not merge.
        let other = Mapping::anon(16)?;
        match mode {
            "change_pte" | "zap" => {
                s.attach(
                    m.addr,
                    m.len,
                    if mode == "zap" {
                        MODE_ZAP
                    } else {
                        MODE_CHANGE_PTE
                    },
                )?;
                s.fault(m.addr, m.len, true)?;
            }
            "elsewhere" => {
                fill_same(&other, 0x77);
                s.attach(other.addr, other.len, MODE_CHANGE_PTE)?;
                s.fault(other.addr, other.len, true)?;
            }
            _ => {}
        }
        let attached = mode != "none";
        let st = if attached { Some(s.stats()?) } else { None };
        let c = merge(&m, n)?;
        let calls = match st {
            Some(st) => {
                let d = s.stats()?;
                d.invalidate_start + d.change_pte - st.invalidate_start - st.change_pte
            }
            None => 0,
        };
        println!(
            "BENCH,ksm_cost,{mode},{n},{rep},{},{},{},{},{calls}",
            c.wall.as_micros(),
            c.ksmd_ns,
            c.full_scans,
            c.pages_scanned
        );
        ksm::write("run", "2")?;
    }
    Ok(())
}

/// Seconds since boot.
fn uptime() -> Result<f64, String> {
    let s = std::fs::read_to_string("/proc/uptime").map_err(|e| format!("/proc/uptime: {e}"))?;
    s.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("/proc/uptime: {s:?}"))
}

/// Reloads shadowpt.ko, timing its callbacks (`time_callbacks`) or not.
fn reload(timed: bool) -> Result<(), String> {
    ensure_unloaded()?;
    sh(
        "insmod",
        &[
            MODULE,
            if timed {
                "time_callbacks=1"
            } else {
                "time_callbacks=0"
            },
        ],
    )?;
    Ok(())
}

/// The longest hold of an attachment's table lock when a fully populated 1 GiB attachment goes:
/// by `munmap` (zapped a 16 MiB chunk per hold) and by exit (`release` swaps the table out),
/// from the `zap_hold_max_ns` maximum (`BENCH,zap_hold,HOW,N,REP,MAX_NS,CHUNKS`). The entries
/// map the zero page: 262,144 entries for 2 MiB of tables. The exit's attachment belongs to a
/// child (a file is bound to the address space that opened it); its counters join the global
/// ones when its file closes, after the module was reloaded, so the global maximum is its own.
fn zap_hold(rep: usize) -> Result<(), String> {
    use crate::hugezap::{map, N};
    let m = map()?;
    let s = Spt::open()?;
    s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
    s.fault(m.addr, m.len, false)?;
    drop(m);
    let st = s.stats()?;
    check(
        st.zapped == N as u64 && st.zap_chunks == (N / 4096) as u64,
        || format!("munmap: {} zapped in {} chunks", st.zapped, st.zap_chunks),
    )?;
    println!(
        "BENCH,zap_hold,munmap,{N},{rep},{},{}",
        st.zap_hold_max_ns, st.zap_chunks
    );
    drop(s);

    reload(false)?;
    // SAFETY: The child only maps, attaches, faults and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let r = Spt::open().and_then(|s| {
            let m = map()?;
            s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
            s.fault(m.addr, m.len, false)?;
            std::mem::forget((s, m));
            Ok(())
        });
        // SAFETY: Leaving the child.
        unsafe { libc::_exit(i32::from(r.is_err())) };
    }
    check(pid > 0, || "fork failed".into())?;
    let mut status = 0;
    // SAFETY: Waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("zap_hold exit child: status {status:#x}"),
    )?;
    let zapped = debugfs_counter("global", "zapped")?;
    check(zapped == N as u64, || format!("exit: {zapped} zapped"))?;
    println!(
        "BENCH,zap_hold,exit,{N},{rep},{},{}",
        debugfs_counter("global", "zap_hold_max_ns")?,
        debugfs_counter("global", "zap_chunks")?
    );
    reload(true)
}

/// ns per zapped entry: one MADV_DONTNEED over `n` present entries; and the sparse case: a
/// 1 GiB attachment with 16 present entries against a 16-page attachment with 16 entries.
fn zap_cost(rep: usize) -> Result<(), String> {
    // Dense: n entries zapped by one invalidation.
    for n in [16usize, 4096, 65536] {
        let m = Mapping::anon(n)?;
        fill_same(&m, 3);
        let s = Spt::open()?;
        s.attach(m.addr, m.len, MODE_ZAP)?;
        s.fault(m.addr, m.len, false)?;
        let st = s.stats()?;
        m.madvise(libc::MADV_DONTNEED)?;
        let d = s.stats()?;
        check(d.zapped - st.zapped == n as u64, || {
            "dense zap count".into()
        })?;
        println!(
            "BENCH,zap_dense,{n},{rep},{},{}",
            d.invalidate_ns - st.invalidate_ns,
            d.invalidate_start - st.invalidate_start
        );
    }
    // Sparse: 1 GiB attached, 16 pages present (one every 64 MiB), one invalidation of it all.
    let pages = (1usize << 30) / PAGE;
    let big = Mapping::anon(pages)?;
    let s = Spt::open()?;
    s.attach(big.addr, big.len, MODE_ZAP)?;
    for k in 0..16 {
        let i = k * (pages / 16);
        big.put(i * PAGE, &[1]);
        s.fault(big.addr + i * PAGE, PAGE, false)?;
    }
    let st = s.stats()?;
    big.madvise(libc::MADV_DONTNEED)?;
    let d = s.stats()?;
    check(d.zapped - st.zapped == 16, || {
        format!("sparse zap: {} entries", d.zapped - st.zapped)
    })?;
    println!(
        "BENCH,zap_sparse,1GiB,{rep},{},{}",
        d.invalidate_ns - st.invalidate_ns,
        d.invalidate_start - st.invalidate_start
    );
    drop(s);
    drop(big);
    let small = Mapping::anon(16)?;
    let s = Spt::open()?;
    s.attach(small.addr, small.len, MODE_ZAP)?;
    for i in 0..16 {
        small.put(i * PAGE, &[1]);
    }
    s.fault(small.addr, small.len, false)?;
    let st = s.stats()?;
    small.madvise(libc::MADV_DONTNEED)?;
    let d = s.stats()?;
    println!(
        "BENCH,zap_sparse,16pages,{rep},{},{}",
        d.invalidate_ns - st.invalidate_ns,
        d.invalidate_start - st.invalidate_start
    );
    Ok(())
}

/// `struct hmm_dmirror_cmd` of `lib/test_hmm_uapi.h`.
#[repr(C)]
#[derive(Default)]
struct DmirrorCmd {
    addr: u64,
    ptr: u64,
    npages: u64,
    cpages: u64,
    faults: u64,
}

/// `HMM_DMIRROR_READ` = `_IOWR('H', 0x00, struct hmm_dmirror_cmd)`.
const HMM_DMIRROR_READ: u64 = (3 << 30) | (40 << 16) | ((b'H' as u64) << 8);

fn dmirror_read(fd: i32, addr: usize, buf: &mut [u8]) -> Result<u64, String> {
    let mut cmd = DmirrorCmd {
        addr: addr as u64,
        ptr: buf.as_mut_ptr() as u64,
        npages: (buf.len() / PAGE) as u64,
        ..Default::default()
    };
    raw_ioctl(fd, HMM_DMIRROR_READ, &mut cmd as *mut _ as usize)
        .map_err(|e| format!("HMM_DMIRROR_READ: {}", errname(e)))?;
    Ok(cmd.faults)
}

/// shadowpt against test_hmm's dmirror on the same pages: first touch, and re-read after a merge.
fn versus_hmm(n: usize, rep: usize, dev: &std::fs::File) -> Result<(), String> {
    let fd = dev.as_raw_fd();
    // Two separate copies of the same workload, so that each mirror faults its own pages, and
    // a destination buffer for each, written before anything is timed: a fresh allocation is
    // untouched memory, whose page faults the copy out would pay.
    let mut hbuf = vec![1u8; n * PAGE];
    let mut sbuf = vec![1u8; n * PAGE];
    let hm = Mapping::anon(n)?;
    fill_same(&hm, 7);
    let sm = Mapping::anon(n)?;
    fill_same(&sm, 7);
    let s = Spt::open()?;
    s.attach(sm.addr, sm.len, MODE_CHANGE_PTE)?;
    // Alternate which mirror goes first, so that neither gains from what the other left warm.
    let hmm_first = rep % 2 == 0;
    let timed_reads =
        |hbuf: &mut [u8], sbuf: &mut [u8]| -> Result<(u64, u128, u64, u128), String> {
            let hmm = |buf: &mut [u8]| {
                let t0 = Instant::now();
                dmirror_read(fd, hm.addr, buf).map(|f| (f, us(t0)))
            };
            let spt = |buf: &mut [u8]| {
                let t0 = Instant::now();
                s.try_read(sm.addr, buf)
                    .map(|f| (f, us(t0)))
                    .map_err(|e| format!("read: {}", errname(e)))
            };
            let (h, sp) = if hmm_first {
                let h = hmm(hbuf)?;
                (h, spt(sbuf)?)
            } else {
                let sp = spt(sbuf)?;
                (hmm(hbuf)?, sp)
            };
            check(hbuf == hm.bytes(0, n * PAGE), || "dmirror data".into())?;
            check(sbuf == sm.bytes(0, n * PAGE), || "shadowpt data".into())?;
            hbuf.fill(1);
            sbuf.fill(1);
            Ok((h.0, h.1, sp.0, sp.1))
        };
    let (hf, h_first, sf, s_first) = timed_reads(&mut hbuf, &mut sbuf)?;
    println!("BENCH,vs_hmm,first,{n},{rep},{hf},{h_first},{sf},{s_first}");
    // Merge both copies together (2n identical pages), then re-read each through its mirror.
    ksm::reset(2 * n)?;
    ksm::write("max_page_sharing", &(2 * n + 2).to_string())?;
    hm.madvise(libc::MADV_MERGEABLE)?;
    sm.madvise(libc::MADV_MERGEABLE)?;
    ksm::run_until(Duration::from_secs(600), || {
        Ok(ksm::read("pages_shared")? + ksm::read("pages_sharing")? == 2 * n as u64)
    })?;
    let (hf, h_re, sf, s_re) = timed_reads(&mut hbuf, &mut sbuf)?;
    println!("BENCH,vs_hmm,after_merge,{n},{rep},{hf},{h_re},{sf},{s_re}");
    ksm::write("run", "2")
}

/// What a mirror adds to the core mm's operations, measured from outside: the wall time of `n`
/// COW-breaking writes to `n` merged pages the mirror maps, and of one `MADV_DONTNEED` of `n`
/// pages it maps, without a mirror, with shadowpt in each mode and with test_hmm's dmirror (KVM's
/// come from `kvm::bench`). The difference to no mirror is what the mirror's callbacks cost
/// there: `invalidate_range_start` + `change_pte` + `invalidate_range_end` per COW break, one
/// invalidation per `MADV_DONTNEED`.
fn cb_costs(n: usize, rep: usize, hmm: &std::fs::File) -> Result<(), String> {
    for consumer in ["none", "shadowpt_change_pte", "shadowpt_zap", "dmirror"] {
        // Page 0 is the partner KSM merges the others with; the mirror covers pages 1..=n.
        let m = Mapping::anon(n + 1)?;
        fill_same(&m, rep as u8 ^ 0x3c);
        let addr = m.addr + PAGE;
        let len = n * PAGE;
        let mut buf = vec![0u8; len];
        let spt = match consumer {
            "shadowpt_change_pte" | "shadowpt_zap" => {
                let s = Spt::open()?;
                let mode = if consumer == "shadowpt_zap" {
                    MODE_ZAP
                } else {
                    MODE_CHANGE_PTE
                };
                s.attach(addr, len, mode)?;
                Some(s)
            }
            _ => None,
        };
        // Maps every page in the mirror (after the merge: the merged page).
        let map_all = |buf: &mut [u8]| -> Result<(), String> {
            if let Some(s) = &spt {
                s.fault(addr, len, false)?;
            } else if consumer == "dmirror" {
                dmirror_read(hmm.as_raw_fd(), addr, buf)?;
            }
            Ok(())
        };
        merge(&m, n + 1)?;
        map_all(&mut buf)?;
        let t0 = Instant::now();
        for i in 1..=n {
            m.put(i * PAGE + 1, &[0xee]);
        }
        let cow_ns = t0.elapsed().as_nanos();
        map_all(&mut buf)?;
        let t0 = Instant::now();
        Mapping::view(addr, len).madvise(libc::MADV_DONTNEED)?;
        let dontneed_ns = t0.elapsed().as_nanos();
        if let Some(s) = &spt {
            // The mirror saw what it was meant to: every COW break in change_pte mode updated its
            // entry, and the MADV_DONTNEED zapped all n entries.
            let st = s.stats()?;
            if consumer == "shadowpt_change_pte" {
                check(st.change_pte_updated == n as u64, || {
                    format!(
                        "cb_cost: {} change_pte updates, expected {n}",
                        st.change_pte_updated
                    )
                })?;
            }
            check(st.present == 0, || {
                format!("cb_cost: {} entries left after MADV_DONTNEED", st.present)
            })?;
        }
        println!("BENCH,cb_cost,{consumer},cow_break,{n},{rep},{cow_ns},{n}");
        println!("BENCH,cb_cost,{consumer},dontneed,{n},{rep},{dontneed_ns},1");
        ksm::write("run", "2")?;
    }
    Ok(())
}

/// `bench [MAX_N]`: the whole benchmark (see Documentation/benchmarks.md).
pub fn bench(args: &[String]) -> Result<(), String> {
    // Let the boot's delayed work settle first (the TSC's refined calibration runs about a
    // second after boot and switches the clocksource).
    while uptime()? < 5.0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sections 1-3 report the callbacks' own `_ns` counters.
    reload(true)?;
    // The largest N: the argument, else `shadowpt.bench_max=` on the kernel command line.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let from_cmdline = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("shadowpt.bench_max="))
        .map(str::to_string);
    let max: usize = match args.first().cloned().or(from_cmdline) {
        Some(a) => a.parse().map_err(|e| format!("{a}: {e}"))?,
        None => 65536,
    };
    // `shadowpt.bench_only=a,b` on the kernel command line runs only those sections (reaccess,
    // ksm, zap, hmm, kvm): for experiments, the report needs them all.
    let only: Option<Vec<String>> = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("shadowpt.bench_only="))
        .map(|l| l.split(',').map(str::to_string).collect());
    let run = |section: &str| only.as_ref().is_none_or(|l| l.iter().any(|s| s == section));
    let uname = sh("uname", &["-r"])?;
    println!("BENCH,machine,{},{}", uname.trim(), num_cpus());
    // The CPU features that choose how the kernel copies (`rep movsb` with ERMS/FSRM): under
    // TCG they decide what a copy to user space costs, so the report says which the boot had.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has = |f: &str| u8::from(flags.contains(&f));
    println!("BENCH,cpu,{},{}", has("erms"), has("fsrm"));
    let sizes: Vec<usize> = [1024usize, 4096, 16384, 65536, 262144]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let reps_for = |n: usize| match n {
        0..=16384 => 5,
        65536 => 3,
        _ => 1,
    };
    for &n in sizes.iter().filter(|_| run("reaccess")) {
        for rep in 0..reps_for(n) {
            for mode in [Some(MODE_CHANGE_PTE), Some(MODE_ZAP), None] {
                let t0 = Instant::now();
                reaccess(n, mode, rep)?;
                eprintln!(
                    "bench: N={n} {:?} rep {rep}: {:?}",
                    mode.map(mode_name),
                    t0.elapsed()
                );
            }
        }
    }
    for rep in (0..5).filter(|_| run("zap")) {
        zap_cost(rep)?;
    }
    for rep in (0..3).filter(|_| run("zap")) {
        zap_hold(rep)?;
    }
    if run("ksm") {
        // What a mirror costs ksmd, as it would be loaded: not timing itself.
        reload(false)?;
        for &n in sizes.iter().filter(|&&n| n <= 16384) {
            for rep in 0..KSM_REPS {
                ksm_cost(n, rep)?;
            }
        }
        reload(true)?;
        // The same merges of a KVM guest's memory, kvm.change_pte=Y against =N.
        let kvm_sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n <= 16384).collect();
        crate::kvm::ksm_cost(&kvm_sizes, KVM_KSM_REPS, "")?;
    }
    // Only when asked for by name: `ksm` measures the same with this kernel's KVM.
    if only.as_ref().is_some_and(|l| l.iter().any(|s| s == "kvmksm")) {
        // Only the KVM part of `ksm`, its modes labelled `shadowpt.kvm_label=` (make bench's
        // BENCH_KVM_BEFORE boot, with an older KVM).
        let label = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("shadowpt.kvm_label="))
            .unwrap_or("");
        let kvm_sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n <= 16384).collect();
        crate::kvm::ksm_cost(&kvm_sizes, KVM_KSM_REPS, label)?;
    }
    if !run("hmm") && !run("kvm") {
        println!("bench: done");
        return Ok(());
    }
    sh("insmod", &["/lib/modules/test_hmm.ko"])?;
    let r = (|| {
        let hmm = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/hmm_dmirror0")
            .map_err(|e| format!("/dev/hmm_dmirror0: {e}"))?;
        for rep in 0..5 {
            cb_costs(crate::kvm::BENCH_CB_N, rep, &hmm)?;
        }
        for &n in sizes.iter().filter(|&&n| n <= 65536 && run("hmm")) {
            // An even number: each mirror goes first in half of them.
            for rep in 0..2 * reps_for(n).div_ceil(2) + 2 {
                versus_hmm(n, rep, &hmm)?;
            }
        }
        Ok::<(), String>(())
    })();
    sh("rmmod", &["test_hmm"])?;
    r?;
    // KVM: the same N up to 64 Ki (the L2's results area), 3 repetitions.
    let kvm_sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n <= 65536).collect();
    if run("kvm") {
        crate::kvm::bench(&kvm_sizes, 3)?;
    }
    println!("bench: done");
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
