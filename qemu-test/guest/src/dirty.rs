// SPDX-License-Identifier: GPL-2.0

//! Data written through the table survives the core mm's reclaim: a write through the secondary
//! MMU must make the page dirty, as a CPU write through the PTE does (issue: a lazily freed page
//! written by the mirror was discarded by reclaim, and the data was lost).
//!
//! Every case writes through the table into some pages ("written") and leaves others alone
//! ("control"), lets reclaim run over all of them, and then asserts two things:
//!
//! - reclaim really ran over the region: the control pages, which are clean and reclaimable,
//!   were discarded (`/proc/self/pagemap` no longer shows them), so a case cannot pass because
//!   reclaim never looked at the pages;
//! - every written page reads back, from the process, exactly as the table wrote it.
//!
//! The cases: `MADV_FREE` then a write through the table then `MADV_PAGEOUT`; the same with
//! reclaim driven by memory pressure; a shared memory (memfd) page read-faulted by the process
//! (mapped writable but clean) then written through the table and paged out; KSM merging the
//! written pages (the entry is downgraded and moved by `change_pte`), then a copy-on-write
//! through the table; fork and copy-on-write after a write through the table. Each runs in both
//! modes.

use crate::ksm;
use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::time::Duration;

const MODES: [(u32, &str); 2] = [(MODE_CHANGE_PTE, "change_pte"), (MODE_ZAP, "zap")];

/// Byte `j` of page `i` of generation `g`: never zero, so a discarded page (zeros) is told apart.
fn pat(i: usize, j: usize, g: u8) -> u8 {
    ((i as u8).wrapping_mul(13) ^ (j as u8).wrapping_mul(5) ^ g) | 1
}

fn page_of(i: usize, g: u8) -> Vec<u8> {
    (0..PAGE).map(|j| pat(i, j, g)).collect()
}

/// Whether page `i` is written through the table (the even pages) or a control page.
fn written(i: usize) -> bool {
    i % 2 == 0
}

/// One case: `n` pages of `m` attached in `mode`.
struct Case {
    m: Mapping,
    s: Spt,
    n: usize,
    what: String,
}

impl Case {
    /// Maps `n` pages with `flags`/`fd`, fills them from the process (generation 1) so that
    /// every page is a present, process-written page, and attaches them.
    fn new(
        name: &str,
        n: usize,
        mode: (u32, &str),
        flags: libc::c_int,
        fd: libc::c_int,
    ) -> Result<Self, String> {
        let m = Mapping::map(n, flags, fd)?;
        let s = Spt::open()?;
        s.attach(m.addr, m.len, mode.0)?;
        Ok(Case {
            m,
            s,
            n,
            what: format!("{name} [{}]", mode.1),
        })
    }

    fn fill_from_process(&self, g: u8) {
        for i in 0..self.n {
            self.m.put(i * PAGE, &page_of(i, g));
        }
    }

    /// Writes generation `g` into the written pages through the table; each takes one fault
    /// (the entries were zapped or never existed). Returns the faults.
    fn write_through_table(&self, g: u8) -> Result<u64, String> {
        let mut faults = 0;
        for i in (0..self.n).filter(|&i| written(i)) {
            faults += self.s.write(self.m.page_addr(i), &page_of(i, g))?;
        }
        Ok(faults)
    }

    /// Whether every control page has been discarded.
    fn controls_gone(&self) -> Result<bool, String> {
        let pfns = self.m.pfns()?;
        Ok((0..self.n).all(|i| written(i) || pfns[i].is_none()))
    }

    /// `MADV_PAGEOUT` until reclaim has discarded every control page (a page still in a
    /// per-CPU LRU batch is skipped by one call).
    fn pageout(&self) -> Result<(), String> {
        for _ in 0..50 {
            self.m.madvise(libc::MADV_PAGEOUT)?;
            if self.controls_gone()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "{}: MADV_PAGEOUT never discarded the control pages: the case proves nothing",
            self.what
        ))
    }

    /// Every written page reads back as generation `g`, from the process and (with `table`)
    /// through the table.
    fn check_written(&self, g: u8, table: bool) -> Result<(), String> {
        let mut lost = 0;
        let mut first = None;
        for i in (0..self.n).filter(|&i| written(i)) {
            if self.m.bytes(i * PAGE, PAGE) != page_of(i, g) {
                lost += 1;
                first.get_or_insert(i);
            }
        }
        if let Some(i) = first {
            let zeros = self.m.bytes(i * PAGE, PAGE).iter().all(|&b| b == 0);
            return Err(format!(
                "{}: {lost} of {} pages written through the table lost (page {i} reads {})",
                self.what,
                self.n.div_ceil(2),
                if zeros { "zeros" } else { "other data" }
            ));
        }
        if table {
            for i in (0..self.n).filter(|&i| written(i)) {
                let (got, _) = self.s.read(self.m.page_addr(i), PAGE)?;
                check(got == page_of(i, g), || {
                    format!("{}: page {i} through the table differs", self.what)
                })?;
            }
        }
        Ok(())
    }
}

const ANON: libc::c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;

/// `MADV_FREE`, a write through the table, then `MADV_PAGEOUT`.
fn madv_free_pageout(mode: (u32, &str)) -> Result<(), String> {
    const N: usize = 64;
    let c = Case::new("madv_free+pageout", N, mode, ANON, -1)?;
    c.fill_from_process(1);
    c.m.madvise(libc::MADV_FREE)?;
    let faults = c.write_through_table(2)?;
    check(faults == N as u64 / 2, || {
        format!("{}: {faults} faults for {} pages", c.what, N / 2)
    })?;
    c.pageout()?;
    c.check_written(2, true)?;
    println!(
        "  {}: {} pages written through the table after MADV_FREE survive MADV_PAGEOUT; {} control pages discarded",
        c.what,
        N / 2,
        N / 2
    );
    Ok(())
}

/// `/proc/vmstat`'s `key`.
fn vmstat(key: &str) -> Result<u64, String> {
    let s = std::fs::read_to_string("/proc/vmstat").map_err(|e| format!("vmstat: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("vmstat: no {key}"))
}

/// The NUMA node of the page at `addr` (present), from `move_pages(2)`.
fn node_of(addr: usize) -> Result<usize, String> {
    let mut status = -1i32;
    let pages = [addr];
    // SAFETY: One address and one status slot; no move (null nodes); pid 0 is us.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1 as libc::c_ulong,
            pages.as_ptr(),
            std::ptr::null::<i32>(),
            &mut status as *mut i32,
            0,
        )
    };
    check(r == 0 && status >= 0, || {
        format!("move_pages: {r} status {status}")
    })?;
    Ok(status as usize)
}

/// Free memory of NUMA node `node` in KiB.
fn node_free(node: usize) -> Result<u64, String> {
    let p = format!("/sys/devices/system/node/node{node}/meminfo");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    s.lines()
        .find_map(|l| l.split_once("MemFree:"))
        .and_then(|(_, v)| v.trim().trim_end_matches(" kB").parse().ok())
        .ok_or_else(|| format!("{p}: no MemFree"))
}

/// `size` bytes of anonymous memory on NUMA node `node` only (`mbind(MPOL_BIND)`), populated.
fn balloon_on(node: usize, size: usize) -> Result<Mapping, String> {
    const MPOL_BIND: libc::c_int = 2;
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let b = Mapping::map(size / PAGE, ANON, -1)?;
    let mask: u64 = 1 << node;
    // SAFETY: Our own fresh mapping; `mask` is one word of node bits (maxnode 64).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            b.addr,
            b.len,
            MPOL_BIND,
            &mask as *const u64,
            64 as libc::c_ulong,
            0,
        )
    };
    check(r == 0, || {
        format!("mbind: {}", std::io::Error::last_os_error())
    })?;
    b.madvise(MADV_POPULATE_WRITE)?;
    Ok(b)
}

/// `MADV_FREE` and a write through the table, then memory pressure on the region's NUMA node:
/// the test allocates memory bound to that node until reclaim has discarded the control pages.
/// The guest has no swap, so lazily freed pages and the page cache are all reclaim can take.
/// `vm.watermark_scale_factor` is raised for the duration (10% of the node between the
/// watermarks), so that kswapd starts far above the point where the OOM killer would run, and
/// the allocation stops 48 MiB short of it; the test fails if the OOM killer ran anyway.
fn madv_free_pressure(mode: (u32, &str)) -> Result<(), String> {
    const N: usize = 256;
    const CHUNK: usize = 8 << 20;
    const WSF: &str = "/proc/sys/vm/watermark_scale_factor";
    let c = Case::new("madv_free+memory pressure", N, mode, ANON, -1)?;
    c.fill_from_process(3);
    c.m.madvise(libc::MADV_FREE)?;
    c.write_through_table(4)?;
    // `MADV_FREE` leaves the last pages it freed in this CPU's LRU batch, where reclaim cannot
    // see them; `MADV_COLD` of an unrelated page drains the batch (`lru_add_drain()`).
    Mapping::anon(1)?.madvise(libc::MADV_COLD)?;
    let node = node_of(c.m.addr)?;
    let oom0 = vmstat("oom_kill")?;
    let scan0 = vmstat("pgscan_kswapd")? + vmstat("pgscan_direct")?;
    let wsf = std::fs::read_to_string(WSF).map_err(|e| format!("{WSF}: {e}"))?;
    std::fs::write(WSF, "1000").map_err(|e| format!("{WSF}: {e}"))?;
    let mut balloon = Vec::new();
    let mut allocated = 0;
    let mut waits = 0;
    let r = loop {
        if c.controls_gone()? {
            break Ok(());
        }
        // Allocate while well above the OOM zone; below it, give kswapd time.
        if node_free(node)? > 48 << 10 {
            match balloon_on(node, CHUNK) {
                Ok(b) => balloon.push(b),
                Err(e) => break Err(e),
            }
            allocated += CHUNK;
        } else if waits < 500 {
            waits += 1;
            std::thread::sleep(Duration::from_millis(10));
        } else {
            break Err(format!(
                "{}: {} MiB allocated on node {node}, its free memory low for 5 s, control pages still there",
                c.what,
                allocated >> 20
            ));
        }
    };
    let scanned = vmstat("pgscan_kswapd")? + vmstat("pgscan_direct")? - scan0;
    drop(balloon);
    std::fs::write(WSF, wsf.trim()).map_err(|e| format!("{WSF}: {e}"))?;
    r?;
    let ooms = vmstat("oom_kill")? - oom0;
    check(ooms == 0, || {
        format!("{}: the OOM killer ran {ooms} times", c.what)
    })?;
    c.check_written(4, true)?;
    println!(
        "  {}: {} pages survive reclaim after {} MiB of allocations on node {node} ({scanned} pages scanned); control pages discarded",
        c.what,
        N / 2,
        allocated >> 20
    );
    Ok(())
}

/// A memfd page that the process only read (mapped writable, clean), written through the table,
/// then paged out: a clean shmem page is dropped from the page cache.
fn shmem_pageout(mode: (u32, &str)) -> Result<(), String> {
    const N: usize = 64;
    let name = c"spt-dirty";
    // SAFETY: A valid C string; the descriptor is ours and closed below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    check(fd >= 0, || {
        format!("memfd_create: {}", std::io::Error::last_os_error())
    })?;
    // SAFETY: Our own descriptor.
    if unsafe { libc::ftruncate(fd, (N * PAGE) as libc::off_t) } != 0 {
        return Err(format!("ftruncate: {}", std::io::Error::last_os_error()));
    }
    let r = (|| {
        let c = Case::new("memfd read-faulted+pageout", N, mode, libc::MAP_SHARED, fd)?;
        // Read faults: clean zero-filled pages in the page cache, mapped writable.
        let sum: u64 = (0..N).map(|i| c.m.bytes(i * PAGE, 1)[0] as u64).sum();
        check(sum == 0, || format!("{}: new memfd not zero", c.what))?;
        c.write_through_table(5)?;
        c.pageout()?;
        c.check_written(5, true)?;
        // What the file holds, not only what the mapping shows.
        let mut buf = vec![0u8; PAGE];
        // SAFETY: `buf` is a valid buffer of `PAGE` bytes; our own descriptor.
        let got = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), PAGE, 0) };
        check(got == PAGE as isize && buf == page_of(0, 5), || {
            format!(
                "{}: pread of page 0 does not return the table's write",
                c.what
            )
        })?;
        println!(
            "  {}: {} shmem pages written through the table survive MADV_PAGEOUT; {} clean ones dropped",
            c.what,
            N / 2,
            N / 2
        );
        Ok(())
    })();
    // SAFETY: Our own descriptor, not used after this.
    unsafe { libc::close(fd) };
    r
}

/// Pages written through the table after `MADV_FREE`, merged by KSM (each entry is
/// write-protected, then moved to the KSM page by `change_pte`), paged out, then written through
/// the table again (copy-on-write through the table's own fault) and paged out again.
fn ksm_merge_cow(mode: (u32, &str)) -> Result<(), String> {
    const N: usize = 32;
    ksm::reset(N)?;
    let c = Case::new("ksm merge+cow", N, mode, ANON, -1)?;
    c.fill_from_process(6);
    c.m.madvise(libc::MADV_FREE)?;
    // Every page gets the same content through the table, so that KSM merges them all (the
    // control pages get theirs from the process, after MADV_FREE: they stay lazily freed).
    let same = vec![0x5au8; PAGE];
    for i in 0..N {
        c.s.write(c.m.page_addr(i), &same)?;
    }
    let before = c.s.stats()?;
    c.m.madvise(libc::MADV_MERGEABLE)?;
    ksm::run_until(Duration::from_secs(60), || {
        Ok(ksm::read("pages_shared")? + ksm::read("pages_sharing")? == N as u64)
    })?;
    let after = c.s.stats()?;
    if mode.0 == MODE_CHANGE_PTE {
        check(after.change_pte_updated > before.change_pte_updated, || {
            format!("{}: KSM merged without updating an entry", c.what)
        })?;
    }
    // KSM pages are never discarded; pageout must leave the data alone.
    c.m.madvise(libc::MADV_PAGEOUT)?;
    for i in 0..N {
        check(c.m.bytes(i * PAGE, PAGE) == same, || {
            format!("{}: merged page {i} lost the table's write", c.what)
        })?;
    }
    // Copy-on-write through the table: every written page gets its own copy again.
    let faults = c.write_through_table(7)?;
    check(faults == N as u64 / 2, || {
        format!(
            "{}: {faults} faults for {} copy-on-write writes",
            c.what,
            N / 2
        )
    })?;
    c.m.madvise(libc::MADV_UNMERGEABLE)?;
    ksm::write("run", "2")?;
    // The control pages are KSM-unshared copies now, no longer lazily freed: free them again.
    for i in (0..N).filter(|&i| !written(i)) {
        Mapping::view(c.m.page_addr(i), PAGE).madvise(libc::MADV_FREE)?;
    }
    c.pageout()?;
    c.check_written(7, true)?;
    println!(
        "  {}: written pages merged by KSM and broken again by copy-on-write through the table keep their data",
        c.what
    );
    Ok(())
}

/// A write through the table after `MADV_FREE`, then fork: the child sees the data and breaks
/// copy-on-write on every page; after it exits the parent pages out and still has the data.
fn fork_cow(mode: (u32, &str)) -> Result<(), String> {
    const N: usize = 64;
    let c = Case::new("fork+cow", N, mode, ANON, -1)?;
    c.fill_from_process(8);
    c.m.madvise(libc::MADV_FREE)?;
    c.write_through_table(9)?;
    // SAFETY: The child only reads and writes its copy of the mapping, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = (0..N)
            .filter(|&i| written(i))
            .all(|i| c.m.bytes(i * PAGE, PAGE) == page_of(i, 9));
        for i in 0..N {
            c.m.put(i * PAGE + 1, &[0]);
        }
        // SAFETY: Ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    check(pid > 0, || "fork failed".into())?;
    let mut status = 0;
    // SAFETY: Waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || {
            format!(
                "{}: the child did not see the table's writes (status {status:#x})",
                c.what
            )
        },
    )?;
    c.pageout()?;
    c.check_written(9, true)?;
    println!(
        "  {}: the child saw the table's writes; the parent's pages survive MADV_PAGEOUT",
        c.what
    );
    Ok(())
}

/// The `mirror_dirty` test.
pub fn dirty(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    // One CPU for the whole test: `MADV_FREE` puts pages on a per-CPU LRU batch that only that
    // CPU's `lru_add_drain()` (done by `MADV_PAGEOUT` and `MADV_COLD`) hands to reclaim.
    // SAFETY: A zeroed `cpu_set_t` with CPU 0 set, for this process (0).
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    check(pinned == 0, || {
        format!("sched_setaffinity: {}", std::io::Error::last_os_error())
    })?;
    let cases: [(&str, fn((u32, &str)) -> Result<(), String>); 5] = [
        ("madv_free_pageout", madv_free_pageout),
        ("madv_free_pressure", madv_free_pressure),
        ("shmem_pageout", shmem_pageout),
        ("ksm_merge_cow", ksm_merge_cow),
        ("fork_cow", fork_cow),
    ];
    // A KTAP case per case and mode; a failure does not stop the others.
    ktap::start(Some(cases.len() * MODES.len()));
    for (name, f) in cases {
        for mode in MODES {
            ktap::case(&format!("{name} [{}]", mode.1), || f(mode));
        }
    }
    ktap::finish()
}
