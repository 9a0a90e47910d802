// SPDX-License-Identifier: GPL-2.0

//! Coherence under churn: secondary reads, writes and faults from several threads while other
//! threads change the same memory in every way the core mm can, with every value read through the
//! table checked against a model of what the process wrote. Seeded and reproducible from the
//! printed seed; bounded in time.
//!
//! # The model
//!
//! Region A (process-owned): page `i` holds an 8-byte version stamp at offset 0 (the rest of the
//! page repeats it, so that pages of the same version are identical and KSM merges them). Only the
//! churn thread changes A, and it brackets every change: `started[i]` is raised before,
//! `committed[i]` after. A reader samples `committed[i]` (c0) and `started[i]` (s0) before its
//! read through the table and `started[i]` (s1) after. If no change overlapped (c0 == s0 == s1),
//! the value read must be exactly the committed version: anything else is a **stale read**. If a
//! change overlapped, any version in `[c0, s1]` is accepted (the read raced a write).
//! `MADV_DONTNEED` and unmap+remap are changes to version 0 (zero-filled pages).
//!
//! Region B (device-owned): only a writer thread writes it, through the table (like DMA). After
//! each write returns, the process's own mapping must show the value: otherwise the table wrote
//! into a page the process no longer maps (a **lost write**). The churn on B preserves data (KSM,
//! fork, mprotect, migration, compaction, THP, `MADV_COLD`, `MADV_PAGEOUT`), except
//! `madv-free-b`: `MADV_FREE` then `MADV_PAGEOUT` of part of B, which may discard what was
//! written before it. The writer also re-reads, from the process, a page it wrote earlier: if no
//! `madv-free-b` began since that write (`b_frees` unchanged and even), the page must still hold
//! the value, or reclaim discarded data written through the table (also a **lost write**).

use crate::ksm;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// xorshift64*: small, seedable, good enough to pick operations.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Region A is one 2 MiB huge page worth of base pages, 2 MiB aligned.
const A_PAGES: usize = 512;
/// `MADV_COLLAPSE` (Linux 6.1).
const MADV_COLLAPSE: libc::c_int = 25;
/// Pages of A that the hammer thread owns: written and zapped in a tight loop.
const HOT: usize = 8;
const B_PAGES: usize = 64;

#[derive(Default)]
struct Counts {
    reads_checked: AtomicU64,
    reads_raced: AtomicU64,
    reads_efault: AtomicU64,
    stale: AtomicU64,
    dev_writes: AtomicU64,
    lost_writes: AtomicU64,
    /// Earlier device writes re-read from the process and found intact or lost.
    dev_rechecked: AtomicU64,
    /// Device writes that raced a `madv-free-b` and read back as zeros (allowed).
    dev_raced_free: AtomicU64,
    hammer: AtomicU64,
}

/// What the churn thread did and what the kernel made of it (the churn thread's own).
#[derive(Default)]
struct Churn {
    ops: [u64; OPS.len()],
    /// "operation: error" -> count.
    errors: BTreeMap<String, u64>,
    /// `MADV_COLLAPSE` calls that returned success.
    collapsed: u64,
    /// Pages `move_pages` reported on the node it was asked for, after being on the other.
    migrated: u64,
    /// The most pages KSM had merged (`pages_sharing`) after a merge operation.
    ksm_sharing_peak: u64,
    /// KSM full scans done while merge operations waited.
    ksm_scans: u64,
}

const OPS: [&str; 16] = [
    "write",
    "dontneed",
    "remap",
    "mremap",
    "mprotect",
    "fork",
    "ksm-merge",
    "ksm-unmerge",
    "thp-collapse",
    "thp-split",
    "compact",
    "migrate",
    "prefault",
    "madv-free-b",
    "pageout",
    "cold",
];

struct Shared {
    a: usize,
    b: usize,
    started: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
    stop: AtomicBool,
    /// Held by the hammer for each of its iterations, by the churn thread to remap all of A.
    hammer_lock: std::sync::RwLock<()>,
    counts: Counts,
    version: AtomicU64,
    /// Raised before and after every `madv-free-b`: odd while one runs.
    b_frees: AtomicU64,
}

fn fill_version(addr: usize, v: u64) {
    // SAFETY: `addr` is a page of region A, mapped read-write by the churn thread (the only
    // writer of A).
    let p = addr as *mut u64;
    for k in 0..PAGE / 8 {
        // SAFETY: Inside the page.
        unsafe { p.add(k).write_volatile(v) };
    }
}

fn read_u64(addr: usize) -> u64 {
    // SAFETY: A mapped, readable page of our own.
    unsafe { (addr as *const u64).read_volatile() }
}

/// One churn operation on region A (and the data-preserving ones on B), recorded in `out`.
fn churn(sh: &Shared, s: &Spt, rng: &mut Rng, out: &mut Churn) {
    let op = rng.below(OPS.len());
    // Pages 0..HOT belong to the hammer thread; the churn thread changes only the others.
    let first = HOT + rng.below(A_PAGES - HOT);
    let len = 1 + rng.below((A_PAGES - first).min(64));
    let addr = sh.a + first * PAGE;
    // A change of the values of `pages`: `begin` before, `end` after (see the model).
    let begin = |pages: std::ops::Range<usize>| {
        for i in pages {
            sh.started[i].fetch_add(1, SeqCst);
        }
    };
    let end = |pages: std::ops::Range<usize>, value: u64| {
        for i in pages {
            VALUE[i].store(value, SeqCst);
            sh.committed[i].store(sh.started[i].load(SeqCst), SeqCst);
        }
    };
    let pages = first..first + len;
    let r: Result<(), String> = match OPS[op] {
        "write" => {
            let v = sh.version.fetch_add(1, SeqCst) + 1;
            begin(pages.clone());
            for i in pages.clone() {
                fill_version(sh.a + i * PAGE, v);
            }
            end(pages.clone(), v);
            Ok(())
        }
        "dontneed" => {
            begin(pages.clone());
            let r = Mapping::view(addr, len * PAGE).madvise(libc::MADV_DONTNEED);
            end(pages.clone(), 0);
            r
        }
        "remap" => {
            // munmap + mmap reuse: fresh memory in place of all of A. All of it, so that A
            // stays one area (two areas with their own anon_vma never merge again, and a huge
            // page cannot span them). The hammer's pages are part of it: pause the hammer.
            let _hammer = sh.hammer_lock.write().unwrap_or_else(|e| e.into_inner());
            begin(0..A_PAGES);
            // SAFETY: Replacing region A, which this program owns, with fresh anonymous memory.
            let p = unsafe {
                libc::mmap(
                    sh.a as *mut libc::c_void,
                    A_PAGES * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            end(0..A_PAGES, 0);
            if p as usize == sh.a {
                Ok(())
            } else {
                Err(format!("mmap: {}", std::io::Error::last_os_error()))
            }
        }
        "mremap" => {
            // Move the pages away and back: same data, new page tables, and a window in which
            // the range is unmapped (reads may get EFAULT). Data-preserving: no version change.
            Mapping::anon(len).and_then(|tmp| {
                // SAFETY: Moving part of region A onto our scratch mapping and back.
                let r = unsafe {
                    let p = libc::mremap(
                        addr as *mut libc::c_void,
                        len * PAGE,
                        len * PAGE,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        tmp.addr as *mut libc::c_void,
                    );
                    let q = libc::mremap(
                        tmp.addr as *mut libc::c_void,
                        len * PAGE,
                        len * PAGE,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        addr as *mut libc::c_void,
                    );
                    if p == libc::MAP_FAILED || q == libc::MAP_FAILED {
                        Err("mremap".to_string())
                    } else {
                        Ok(())
                    }
                };
                std::mem::forget(tmp);
                r
            })
        }
        "mprotect" | "thp-split" => {
            // Read-only and back. On a single page in the middle of a huge page (thp-split),
            // the protection change splits it.
            let pages = if OPS[op] == "thp-split" { 1 } else { len };
            let m = Mapping::view(addr, pages * PAGE);
            m.mprotect(libc::PROT_READ)
                .and_then(|_| m.mprotect(libc::PROT_READ | libc::PROT_WRITE))
        }
        "fork" => {
            // SAFETY: The child only writes its own copies and leaves with `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                for i in 0..A_PAGES.min(32) {
                    fill_version(sh.a + i * PAGE, u64::MAX - 1);
                }
                for i in 0..B_PAGES {
                    // SAFETY: Region B page, a private copy in the child.
                    unsafe { ((sh.b + i * PAGE) as *mut u64).write_volatile(u64::MAX - 2) };
                }
                // SAFETY: Leaving the child.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: Waiting for our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Ok(())
        }
        "ksm-merge" => {
            // MADV_UNMERGEABLE first: after `run=2` KSM has forgotten this mm, and
            // MADV_MERGEABLE on areas that still carry VM_MERGEABLE would not register it again.
            // Then let ksmd do two full scans (bounded), so that merges race the readers.
            let r = [(sh.a, A_PAGES), (sh.b, B_PAGES)]
                .iter()
                .try_for_each(|&(a, n)| {
                    let m = Mapping::view(a, n * PAGE);
                    m.madvise(libc::MADV_UNMERGEABLE)
                        .and_then(|_| m.madvise(libc::MADV_MERGEABLE))
                })
                .and_then(|_| ksm::write("run", "1"))
                .and_then(|_| ksm::read("full_scans"));
            r.and_then(|scans0| {
                let t0 = Instant::now();
                let mut scans = scans0;
                while scans < scans0 + 2 && t0.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(10));
                    scans = ksm::read("full_scans")?;
                }
                out.ksm_scans += scans - scans0;
                let sharing = ksm::read("pages_sharing")?;
                out.ksm_sharing_peak = out.ksm_sharing_peak.max(sharing);
                Ok(())
            })
        }
        "ksm-unmerge" => {
            // Either KSM's global unmerge or MADV_UNMERGEABLE (unshare) of part of A.
            if rng.below(2) == 0 {
                ksm::write("run", "2").and_then(|_| ksm::write("run", "1"))
            } else {
                Mapping::view(addr, len * PAGE).madvise(libc::MADV_UNMERGEABLE)
            }
        }
        "thp-collapse" => {
            // Region A is exactly one 2 MiB-aligned huge page: collapse it into a THP. KSM pages
            // cannot be collapsed, so unshare A first (it becomes mergeable again at the next
            // ksm-merge). It may still fail (EAGAIN: a page is busy, e.g. under a secondary
            // fault's GUP); errors are counted by kind.
            let m = Mapping::view(sh.a, A_PAGES * PAGE);
            let r = m
                .madvise(libc::MADV_UNMERGEABLE)
                .and_then(|_| m.madvise(libc::MADV_HUGEPAGE))
                .and_then(|_| m.madvise(MADV_COLLAPSE));
            if r.is_ok() {
                out.collapsed += 1;
            }
            r
        }
        "compact" => std::fs::write("/proc/sys/vm/compact_memory", "1").map_err(|e| e.to_string()),
        "migrate" => {
            // Ask where the pages are, then move each present one to the other node.
            let addrs: Vec<usize> = (0..len).map(|k| addr + k * PAGE).collect();
            move_pages(&addrs, None).and_then(|now| {
                let (addrs, to): (Vec<usize>, Vec<i32>) = addrs
                    .iter()
                    .zip(&now)
                    .filter(|(_, &n)| n >= 0)
                    .map(|(&a, &n)| (a, 1 - n.min(1)))
                    .unzip();
                let after = move_pages(&addrs, Some(&to))?;
                out.migrated += after.iter().zip(&to).filter(|(a, t)| a == t).count() as u64;
                // Pages that could not move (e.g. -EACCES: a KSM page is shared) are counted.
                for &st in after.iter().filter(|&&st| st < 0) {
                    *out.errors
                        .entry(format!("migrate page: {}", errname(-st)))
                        .or_default() += 1;
                }
                Ok(())
            })
        }
        "prefault" => s
            .try_fault(addr, len * PAGE, rng.below(2) == 0)
            .map(|_| ())
            .or(Ok(())),
        "madv-free-b" => {
            // The process frees part of B, then reclaim runs over it: pages the device did not
            // write since are discarded (zeros), pages it wrote since must keep the data.
            let first = rng.below(B_PAGES);
            let m = Mapping::view(sh.b + first * PAGE, (1 + rng.below(B_PAGES - first)) * PAGE);
            sh.b_frees.fetch_add(1, SeqCst);
            let r = m
                .madvise(libc::MADV_FREE)
                .and_then(|_| m.madvise(libc::MADV_PAGEOUT));
            sh.b_frees.fetch_add(1, SeqCst);
            r
        }
        "pageout" | "cold" => {
            // Data-preserving on both regions: no swap, so dirty anonymous pages stay; reclaim
            // and deactivation still walk the rmap (and ask the table for its accessed bits).
            let advice = if OPS[op] == "pageout" {
                libc::MADV_PAGEOUT
            } else {
                libc::MADV_COLD
            };
            if rng.below(2) == 0 {
                Mapping::view(addr, len * PAGE).madvise(advice)
            } else {
                Mapping::view(sh.b, B_PAGES * PAGE).madvise(advice)
            }
        }
        _ => Ok(()),
    };
    out.ops[op] += 1;
    if let Err(e) = r {
        *out.errors.entry(format!("{}: {e}", OPS[op])).or_default() += 1;
    }
}

/// `move_pages(2)` on our own pages: with `nodes`, moves them; without, asks where they are.
/// Returns the per-page status (a node, or a negative errno).
pub(crate) fn move_pages(addrs: &[usize], nodes: Option<&[i32]>) -> Result<Vec<i32>, String> {
    let mut status = vec![0i32; addrs.len()];
    // SAFETY: `addrs`, `nodes` (if any) and `status` all have `addrs.len()` entries; pid 0 is
    // this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            addrs.len() as libc::c_ulong,
            addrs.as_ptr(),
            nodes.map_or(std::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            0,
        )
    };
    if r < 0 {
        return Err(format!("move_pages: {}", std::io::Error::last_os_error()));
    }
    Ok(status)
}

/// The value the process last stored in page `i` of A (0 after a zap or remap).
static VALUE: [AtomicU64; A_PAGES] = [const { AtomicU64::new(0) }; A_PAGES];

/// The hammer: on the HOT pages of A, write a new version then `MADV_DONTNEED`, as fast as it
/// can, so that secondary faults keep racing invalidations that change the page.
fn hammer(sh: &Shared, mut rng: Rng) {
    while !sh.stop.load(SeqCst) {
        let _turn = sh.hammer_lock.read().unwrap_or_else(|e| e.into_inner());
        let i = rng.below(HOT);
        let addr = sh.a + i * PAGE;
        let v = sh.version.fetch_add(1, SeqCst) + 1;
        sh.started[i].fetch_add(1, SeqCst);
        fill_version(addr, v);
        VALUE[i].store(v, SeqCst);
        sh.committed[i].store(sh.started[i].load(SeqCst), SeqCst);
        std::thread::yield_now();
        sh.started[i].fetch_add(1, SeqCst);
        // SAFETY: One page of region A, owned by this thread.
        unsafe { libc::madvise(addr as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
        VALUE[i].store(0, SeqCst);
        sh.committed[i].store(sh.started[i].load(SeqCst), SeqCst);
        sh.counts.hammer.fetch_add(1, SeqCst);
        std::thread::yield_now();
    }
}

/// A reader: random reads through the table, checked against the model.
fn reader(sh: &Shared, s: &Spt, mut rng: Rng) {
    let mut buf = [0u8; 8];
    while !sh.stop.load(SeqCst) {
        // Half of the reads go to the hammered pages, where faults race invalidations most.
        let i = if rng.below(2) == 0 {
            rng.below(HOT)
        } else {
            rng.below(A_PAGES)
        };
        let c0 = sh.committed[i].load(SeqCst);
        let s0 = sh.started[i].load(SeqCst);
        let v0 = VALUE[i].load(SeqCst);
        let r = s.try_read(sh.a + i * PAGE + 8 * rng.below(PAGE / 8), &mut buf);
        let s1 = sh.started[i].load(SeqCst);
        match r {
            Err(_) => {
                sh.counts.reads_efault.fetch_add(1, SeqCst);
            }
            Ok(_) => {
                let got = u64::from_ne_bytes(buf);
                if c0 == s0 && s0 == s1 {
                    sh.counts.reads_checked.fetch_add(1, SeqCst);
                    if got != v0 {
                        sh.counts.stale.fetch_add(1, SeqCst);
                        eprintln!(
                            "stress: STALE read of page {i}: got {got:#x}, the process has {v0:#x}"
                        );
                    }
                } else {
                    sh.counts.reads_raced.fetch_add(1, SeqCst);
                }
            }
        }
    }
}

/// The device writer of region B: write through the table, then check the process sees it.
fn dev_writer(sh: &Shared, s: &Spt, mut rng: Rng) {
    let mut v = 1u64 << 48;
    // Per page of B: the last write (address, value) and the `b_frees` epoch it completed in,
    // if no `madv-free-b` overlapped it.
    let mut last: Vec<Option<(usize, u64, u64)>> = vec![None; B_PAGES];
    let c = &sh.counts;
    while !sh.stop.load(SeqCst) {
        // An earlier write must still be there unless a madv-free-b began since.
        let j = rng.below(B_PAGES);
        if let Some((addr, want, epoch)) = last[j] {
            let seen = read_u64(addr);
            if sh.b_frees.load(SeqCst) == epoch {
                c.dev_rechecked.fetch_add(1, SeqCst);
                if seen != want {
                    c.lost_writes.fetch_add(1, SeqCst);
                    eprintln!("stress: LOST device write to B page {j}: wrote {want:#x} earlier, reclaim left {seen:#x}");
                }
            }
        }
        let i = rng.below(B_PAGES);
        v += 1;
        let addr = sh.b + i * PAGE + 8 * rng.below(PAGE / 8);
        let e0 = sh.b_frees.load(SeqCst);
        if s.try_write(addr, &v.to_ne_bytes()).is_ok() {
            c.dev_writes.fetch_add(1, SeqCst);
            let seen = read_u64(addr);
            let e1 = sh.b_frees.load(SeqCst);
            let quiet = e0 == e1 && e0 % 2 == 0;
            if seen != v && (quiet || seen != 0) {
                c.lost_writes.fetch_add(1, SeqCst);
                eprintln!("stress: LOST device write to B page {i}: wrote {v:#x}, the process sees {seen:#x}");
            } else if seen != v {
                c.dev_raced_free.fetch_add(1, SeqCst);
            }
            last[i] = quiet.then_some((addr, v, e0));
        }
    }
}

/// The `/proc/vmstat` counters that show the churn did what it asked for.
const VMSTAT: [&str; 6] = [
    "thp_collapse_alloc",
    "thp_split_pmd",
    "pgmigrate_success",
    "compact_isolated",
    "pglazyfree",
    "pglazyfreed",
];

fn vmstat() -> Vec<u64> {
    let s = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    VMSTAT
        .iter()
        .map(|k| {
            s.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.trim().parse().ok()))
                .unwrap_or(0)
        })
        .collect()
}

/// Region A: 2 MiB, 2 MiB aligned, so that it can become one transparent huge page.
fn aligned_region() -> Result<Mapping, String> {
    const HUGE: usize = 2 << 20;
    let big = Mapping::anon(2 * HUGE / PAGE)?;
    let start = (big.addr + HUGE - 1) & !(HUGE - 1);
    let (addr, len) = (big.addr, big.len);
    std::mem::forget(big);
    // SAFETY: Trimming our own fresh mapping to the aligned 2 MiB inside it.
    unsafe {
        if start > addr {
            libc::munmap(addr as *mut libc::c_void, start - addr);
        }
        let end = start + HUGE;
        if addr + len > end {
            libc::munmap(end as *mut libc::c_void, addr + len - end);
        }
    }
    Ok(Mapping {
        addr: start,
        len: HUGE,
    })
}

/// `stress [SECONDS] [SEED]`.
pub fn stress(args: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let param = |k: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let secs: u64 = args
        .first()
        .cloned()
        .or(param("shadowpt.stress_secs="))
        .map(|a| a.parse().unwrap_or(20))
        .unwrap_or(20);
    let seed = seed(args.get(1).cloned().or(param("shadowpt.seed=")).as_deref())?;
    println!("stress: seed {seed}, {secs} s (rerun: sptest stress {secs} {seed})");
    ksm::reset(A_PAGES + B_PAGES)?;
    let _ = std::fs::write("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
    let a = aligned_region()?;
    let b = Mapping::anon(B_PAGES)?;
    for i in 0..B_PAGES {
        b.fill(i, 0);
        b.put(i * PAGE, &[1]);
    }
    let sa = Arc::new(Spt::open()?);
    sa.attach(a.addr, a.len, MODE_CHANGE_PTE)?;
    let sb = Arc::new(Spt::open()?);
    sb.attach(b.addr, b.len, MODE_CHANGE_PTE)?;
    let sh = Arc::new(Shared {
        a: a.addr,
        b: b.addr,
        started: (0..A_PAGES).map(|_| AtomicU64::new(0)).collect(),
        committed: (0..A_PAGES).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        hammer_lock: std::sync::RwLock::new(()),
        counts: Counts::default(),
        version: AtomicU64::new(1),
        b_frees: AtomicU64::new(0),
    });
    let mut rng = Rng::new(seed);
    let mut threads = Vec::new();
    for t in 0..2 {
        let (sh, s, r) = (sh.clone(), sa.clone(), Rng::new(rng.next() ^ t));
        threads.push(std::thread::spawn(move || reader(&sh, &s, r)));
    }
    {
        let (sh, s, r) = (sh.clone(), sb.clone(), Rng::new(rng.next()));
        threads.push(std::thread::spawn(move || dev_writer(&sh, &s, r)));
    }
    {
        let (sh, r) = (sh.clone(), Rng::new(rng.next()));
        threads.push(std::thread::spawn(move || hammer(&sh, r)));
    }
    let vm0 = vmstat();
    let t0 = Instant::now();
    let mut churn_rng = Rng::new(rng.next());
    let mut done = Churn::default();
    // The churn runs for `secs`, and on (up to `3 * secs` in all) while one of the effects it
    // must have had is still missing: a slow or loaded host draws fewer operations per second,
    // and a random draw can miss a rare effect (a migration that moved a page) in the time
    // given. The check below still fails a churn that never had it.
    let mut last_check = Instant::now();
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= Duration::from_secs(3 * secs) {
            break;
        }
        if elapsed >= Duration::from_secs(secs) && last_check.elapsed() >= Duration::from_secs(1)
        {
            last_check = Instant::now();
            let st = sa.stats()?;
            if missing_effects(&done, &delta(&vm0, &vmstat()), &sh.counts, &st).is_empty() {
                break;
            }
        }
        churn(&sh, &sa, &mut churn_rng, &mut done);
    }
    let churn_secs = t0.elapsed().as_secs_f64();
    sh.stop.store(true, SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let vm1 = vmstat();
    ksm::write("run", "2")?;
    let c = &sh.counts;
    let vm = delta(&vm0, &vm1);
    let vm_text: Vec<String> = VMSTAT
        .iter()
        .zip(&vm)
        .map(|(k, d)| format!("{k}=+{d}"))
        .collect();
    println!(
        "stress: churn ran {churn_secs:.1} s; kernel effects: {} ksm: full scans {} (while merge operations waited), pages_sharing peak {}; collapses {}, pages migrated {}",
        vm_text.join(" "),
        done.ksm_scans,
        done.ksm_sharing_peak,
        done.collapsed,
        done.migrated
    );
    let ops: Vec<String> = OPS
        .iter()
        .zip(&done.ops)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!(
        "stress: operations: {} hammer(write+zap)={}",
        ops.join(" "),
        c.hammer.load(SeqCst)
    );
    println!(
        "stress: reads checked {} (raced a write {}, EFAULT while unmapped {}), device writes {} (re-read later {}, raced MADV_FREE {})",
        c.reads_checked.load(SeqCst),
        c.reads_raced.load(SeqCst),
        c.reads_efault.load(SeqCst),
        c.dev_writes.load(SeqCst),
        c.dev_rechecked.load(SeqCst),
        c.dev_raced_free.load(SeqCst),
    );
    let errors: Vec<String> = done
        .errors
        .iter()
        .map(|(k, v)| format!("[{k}]={v}"))
        .collect();
    println!(
        "stress: operation errors by kind: {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(" ")
        }
    );
    let st = sa.stats()?;
    println!(
        "stress: region A counters: faults {} retries {} invalidations {} zapped {} change_pte {} (updated {}, absent {}, illegal {})",
        st.faults, st.fault_retries, st.invalidate_start, st.zapped, st.change_pte, st.change_pte_updated, st.change_pte_absent, st.change_pte_illegal
    );
    let stale = c.stale.load(SeqCst);
    let lost = c.lost_writes.load(SeqCst);
    println!("stress: stale reads {stale}, lost device writes {lost}");
    check(stale == 0 && lost == 0, || {
        format!("{stale} stale reads, {lost} lost writes (seed {seed})")
    })?;
    check(
        c.reads_checked.load(SeqCst) > 0 && c.dev_writes.load(SeqCst) > 0,
        || "nothing was checked".into(),
    )?;
    check(st.change_pte_illegal == 0, || "illegal change_pte".into())?;
    // The churn must have done what it claims, or a clean run proves little.
    let missing = missing_effects(&done, &vm, c, &st);
    check(missing.is_empty(), || {
        format!(
            "the churn had no effect in {churn_secs:.1} s: {} (seed {seed})",
            missing.join(", ")
        )
    })
}

/// `after - before`, counter by counter.
fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(a, b)| b.saturating_sub(*a)).collect()
}

/// The effects the churn must have had that it did not (yet): `vm` is the change of the
/// [`VMSTAT`] counters since the churn started, `st` region A's counters.
fn missing_effects(done: &Churn, vm: &[u64], c: &Counts, st: &Stats) -> Vec<&'static str> {
    [
        ("KSM merged nothing", done.ksm_sharing_peak > 0),
        ("no THP collapse", done.collapsed > 0 && vm[0] > 0),
        ("no THP split", vm[1] > 0),
        ("no page migrated", done.migrated > 0 && vm[2] > 0),
        ("compaction isolated nothing", vm[3] > 0),
        ("MADV_FREE freed nothing", vm[4] > 0),
        ("reclaim discarded no lazily freed page", vm[5] > 0),
        ("no device write re-read", c.dev_rechecked.load(SeqCst) > 0),
        ("no change_pte", st.change_pte_updated > 0),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| *what)
    .collect()
}
