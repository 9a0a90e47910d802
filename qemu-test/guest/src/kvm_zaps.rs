// SPDX-License-Identifier: GPL-2.0

//! Where KVM must zap instead of keeping an SPTE for `->change_pte()`, with `kvm_ksm`'s VMM
//! (`kvm.rs`: slot 0 holds the L2's code and results, slot 1 the N pages it reads or writes on
//! command), the TDP MMU and `kvm.change_pte=Y`:
//!
//! - `kvm_memslot_race`: TDP MMU roots invalidated while flagged invalidations are in flight. The
//!   L2 re-reads 512 pages that KSM merges and the VMM COW-writes over and over, while another
//!   thread deletes, re-creates and moves a second memslot (each delete and move invalidates every
//!   root, `kvm_mmu_zap_all_fast()`). `->change_pte()` must zap the SPTEs it finds under invalid
//!   roots, silently, and count them in `change_pte_zapped`, which nothing else moves here (THP is
//!   off): the test runs until it moved, and checks every word the L2 read.
//! - `kvm_pfnmap_cow`: a COW break of a `MAP_PRIVATE` `VM_PFNMAP` mapping (`spt_pfnmap.ko`'s
//!   `remap_pfn_range()` of RAM): the old PTE maps no normal page and not the zero page, so
//!   `wp_page_copy()` does not flag the range; KVM zaps and the L2 refaults the copies. The same
//!   steps on anonymous memory (shared with a child after `fork()`, and the zero page) are
//!   flagged: updated in place, no fault.
//! - `kvm_gmem_slot`: a memslot backed by a guest_memfd (`GUEST_MEMFD_FLAG_MMAP |
//!   GUEST_MEMFD_FLAG_INIT_SHARED` on a default VM) whose `userspace_addr` is anonymous memory
//!   with other data. KSM merges and COW breaks there are flagged events at the slot's
//!   `userspace_addr`: KVM zaps, and the L2 must keep reading the guest_memfd's data.
//!
//! A kernel WARNING fails these tests twice: the suite boots with `panic_on_warn=1` (the guest
//! panics and `qemu-test/run` reports the console's `WARNING:` line), and with `panic_on_warn=0`
//! (breaktest's `kvm_warn_invalid_root`, `kvm_gmem_keep`) the test finds it in `dmesg` and fails
//! saying so.

use crate::ksm;
use crate::ktap;
use crate::kvm::{
    compaction_off, ksm_reset, load_kvm, merge, page_word, pattern, run_restoring, set_change_pte,
    set_page_word, Slot1, Vm, SLOT1_GPA, WORD,
};
use crate::mem::{Mapping, PAGE};
use crate::util::*;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// From the 7.3 uapi (<linux/kvm.h>); kvm-bindings 0.14 predates them.
/// `KVM_CHECK_EXTENSION` on a VM: the guest_memfd flags `KVM_CREATE_GUEST_MEMFD` accepts.
const KVM_CAP_GUEST_MEMFD_FLAGS: u64 = 244;
const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// Lines of `dmesg` that fail the suite's run as kernel reports (a subset of qemu-test/init's
/// list: what KVM's MMU code can print).
const REPORTS: [&str; 4] = [
    "WARNING:",
    "BUG:",
    "Call Trace:",
    "general protection fault",
];

/// The kernel log's length (lines) now: what [`check_kernel_log`] is to look at comes after it.
fn log_mark() -> Result<usize, String> {
    Ok(sh("dmesg", &[])?.lines().count())
}

/// Fails if the kernel log holds a report after line `since` ([`log_mark`]).
fn check_kernel_log(what: &str, since: usize) -> Result<(), String> {
    let log = sh("dmesg", &[])?;
    let mut lines = log.lines().skip(since);
    if let Some(l) = lines.find(|l| REPORTS.iter().any(|r| l.contains(r))) {
        return Err(format!(
            "{what}: the kernel warned (a kernel WARNING fails the suite): {}",
            l.trim()
        ));
    }
    Ok(())
}

/// Says what a kernel WARNING does in this boot.
fn say_panic_on_warn(name: &str) {
    let pow = read_trimmed_or("/proc/sys/kernel/panic_on_warn", "?");
    if pow == "0" {
        println!("{name}: panic_on_warn=0: a kernel WARNING fails this test (checked in dmesg)");
    } else {
        println!(
            "{name}: panic_on_warn={pow}: a kernel WARNING panics the guest; the run reports its \
             WARNING line from the console"
        );
    }
}

fn read_trimmed_or(path: &str, default: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| default.to_string())
}

/// The pfns mapping `n` pages from host address `addr` (all present).
fn pfns(addr: usize, n: usize) -> Result<Vec<u64>, String> {
    Mapping::view(addr, n * PAGE).present_pfns()
}

// ---------------------------------------------------------------------------------------------
// kvm_memslot_race

/// Slot 1's pages.
const RACE_N: usize = 512;
/// The test runs at least this long, and until the invalid-root path was taken...
const RACE_MIN: Duration = Duration::from_secs(20);
/// ...but not longer than this: then the race was never hit, and the test fails.
const RACE_MAX: Duration = Duration::from_secs(90);
/// How long the COW writer waits for KSM to merge an epoch's pages before it writes the next.
const MERGE_WAIT: Duration = Duration::from_secs(5);
/// Slot 2: a few pages of its own memory, never touched by the L2, alternating between two guest
/// physical addresses above slot 1.
const SLOT2: u32 = 2;
const SLOT2_PAGES: usize = 4;
const SLOT2_GPAS: [u64; 2] = [0x4000_0000, 0x4020_0000];

/// The word every page holds in epoch `e` (all pages identical within an epoch, so KSM merges
/// them).
fn epoch_word(e: u32) -> u32 {
    0xe000_0000 | e
}

/// The epoch of a word the L2 read, if it is an epoch word.
fn word_epoch(w: u32) -> Option<u32> {
    (w & 0xf000_0000 == 0xe000_0000).then_some(w & 0x0fff_ffff)
}

/// What the three threads share.
#[derive(Default)]
struct Race {
    stop: AtomicBool,
    /// The newest epoch the writer started to write, and the newest it finished writing.
    started: AtomicU32,
    done: AtomicU32,
    /// Epochs after which KSM merged all pages into one KSM page (and the writer's waits that
    /// timed out instead).
    merged: AtomicU32,
    unmerged: AtomicU32,
    /// Memslot changes of slot 2: creations, moves, deletions.
    creates: AtomicU64,
    moves: AtomicU64,
    deletes: AtomicU64,
    /// The first error of a helper thread (it also stops the test).
    error: Mutex<Option<String>>,
}

impl Race {
    fn fail(&self, e: String) {
        let mut err = self.error.lock().unwrap_or_else(|p| p.into_inner());
        err.get_or_insert(e);
        self.stop.store(true, SeqCst);
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The host-side COW writer: writes epoch e's word into every page (each write breaks COW on
/// the KSM page, a flagged invalidation and a `->change_pte()`), then waits until KSM has merged
/// the pages again (two flagged invalidations per page: write-protect, replace). An epoch, once
/// started, is always finished, so that all pages hold one word when the test stops.
fn cow_writer(race: &Race, mem: &Mapping) {
    let mut e = 0;
    while !race.stop.load(SeqCst) {
        e += 1;
        race.started.store(e, SeqCst);
        for i in 0..RACE_N {
            set_page_word(mem.page_addr(i), epoch_word(e));
        }
        race.done.store(e, SeqCst);
        // KSM needs two full scans after the writes (one records the new checksums, the next
        // merges), three counting the one the writes may have landed in; pages_sharing says
        // N - 1 once all N pages map one KSM page (until then it can still count the old
        // epoch's KSM page, whose stale entries the scans remove).
        let t0 = Instant::now();
        let scans = match ksm::read("full_scans") {
            Ok(s) => s,
            Err(err) => return race.fail(format!("COW writer: {err}")),
        };
        loop {
            if race.stop.load(SeqCst) {
                return;
            }
            let merged = (|| -> Result<bool, String> {
                Ok(ksm::read("full_scans")? >= scans + 3
                    && ksm::read("pages_sharing")? >= RACE_N as u64 - 1)
            })();
            match merged {
                Ok(true) => {
                    race.merged.fetch_add(1, SeqCst);
                    break;
                }
                Ok(false) if t0.elapsed() > MERGE_WAIT => {
                    race.unmerged.fetch_add(1, SeqCst);
                    break;
                }
                Ok(false) => std::thread::sleep(Duration::from_millis(2)),
                Err(err) => return race.fail(format!("COW writer: {err}")),
            }
        }
    }
}

/// Slot 2 at `gpa` (`size` 0 deletes it).
fn set_slot2(vm: &VmFd, mem: &Mapping, gpa: u64, size: usize) -> Result<(), String> {
    let r = kvm_userspace_memory_region {
        slot: SLOT2,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size as u64,
        userspace_addr: mem.addr as u64,
    };
    // SAFETY: `mem` outlives every use of slot 2: the thread deletes the slot before it returns,
    // and the mapping is the caller's, dropped after the thread. The L2 never touches slot 2.
    unsafe { vm.set_user_memory_region(r) }.map_err(|e| {
        format!("KVM_SET_USER_MEMORY_REGION slot {SLOT2} gpa {gpa:#x} size {size:#x}: {e}")
    })
}

/// The memslot thread: creates slot 2, moves it to the other address, deletes it, as fast as it
/// can. Deleting and moving a memslot invalidates all TDP MMU roots (`kvm_mmu_zap_all_fast()`
/// under the default KVM_X86_QUIRK_SLOT_ZAP_ALL), without waiting for invalidations that start
/// meanwhile. Ends with slot 2 deleted.
fn memslot_churn(race: &Race, vm: &VmFd, mem: &Mapping) {
    let size = SLOT2_PAGES * PAGE;
    let mut k = 0;
    while !race.stop.load(SeqCst) {
        let (a, b) = (SLOT2_GPAS[k % 2], SLOT2_GPAS[(k + 1) % 2]);
        k += 1;
        let r = set_slot2(vm, mem, a, size)
            .map(|()| race.creates.fetch_add(1, SeqCst))
            .and_then(|_| set_slot2(vm, mem, b, size))
            .map(|()| race.moves.fetch_add(1, SeqCst))
            .and_then(|_| set_slot2(vm, mem, b, 0))
            .map(|()| race.deletes.fetch_add(1, SeqCst));
        if let Err(e) = r {
            return race.fail(format!("memslot thread: {e}"));
        }
    }
}

/// `kvm_memslot_race [MIN_SECS]`.
pub fn kvm_memslot_race(args: &[String]) -> Result<(), String> {
    let min = match args.first() {
        Some(a) => Duration::from_secs(a.parse().map_err(|_| format!("bad MIN_SECS {a:?}"))?),
        None => RACE_MIN,
    };
    check(min < RACE_MAX, || {
        format!("MIN_SECS must stay below {RACE_MAX:?}")
    })?;
    say_panic_on_warn("kvm_memslot_race");
    let mark = log_mark()?;
    run_restoring(|| memslot_race(min, mark))
}

fn memslot_race(min: Duration, mark: usize) -> Result<(), String> {
    const W: &str = "kvm_memslot_race";
    compaction_off()?;
    load_kvm(true)?;
    set_change_pte(true)?;
    // KSM as fast as it goes: no sleep between batches, every page in one batch.
    ksm_reset(RACE_N)?;
    let n64 = RACE_N as u64;

    let mem = Mapping::anon(RACE_N)?;
    let page = {
        let mut p = pattern();
        p[WORD..WORD + 4].copy_from_slice(&epoch_word(0).to_le_bytes());
        p
    };
    for i in 0..RACE_N {
        mem.put(i * PAGE, &page);
    }
    mem.madvise(libc::MADV_MERGEABLE)?;
    let slot2 = Mapping::anon(SLOT2_PAGES)?;
    for i in 0..SLOT2_PAGES {
        slot2.fill(i, 0x22);
    }
    let slot1 = Slot1::User {
        owner: &mem,
        addr: mem.addr,
    };
    let mut vm = Vm::with(slot1, RACE_N, true)?;
    let first = vm.read_pass(&format!("{W}: first touch"), &vec![epoch_word(0); RACE_N])?;
    vm.expect(&format!("{W}: first touch"), &first, n64, 0, 0)?;

    let race = Race::default();
    let vmfd = vm.fd();
    let base = vm.counts()?;
    let t0 = Instant::now();
    let mut passes = 0u64;
    let mut first_zap = None;
    let mut last_log_check = Instant::now();
    ksm::write("run", "1")?;
    let r = std::thread::scope(|s| {
        s.spawn(|| cow_writer(&race, &mem));
        s.spawn(|| memslot_churn(&race, &vmfd, &slot2));
        // The vCPU: read passes until the race was hit (and `min` is over), checking every word
        // against the epochs the writer was in while the pass ran. A page's word only grows:
        // it is at least the epoch finished before the pass began (an SPTE left on an old or
        // freed page shows an older word, or garbage), at most the one started before it ended.
        let r = (|| -> Result<(), String> {
            loop {
                let lo = race.done.load(SeqCst);
                let words = vm.read_words()?;
                let hi = race.started.load(SeqCst);
                passes += 1;
                for (i, &w) in words.iter().enumerate() {
                    let ok = word_epoch(w).is_some_and(|e| (lo..=hi).contains(&e));
                    check(ok, || {
                        format!(
                            "{W}: pass {passes} ({:.1?} in): the L2 read {w:#x} from page {i} \
                             (GPA {:#x}), expected the word of epoch {lo}..={hi} ({:#x}..={:#x}): \
                             a stale SPTE",
                            t0.elapsed(),
                            SLOT1_GPA + (i * PAGE) as u64,
                            epoch_word(lo),
                            epoch_word(hi)
                        )
                    })?;
                }
                let zapped = vm.counts()?.since(&base).zapped.unwrap_or(0);
                if zapped > 0 && first_zap.is_none() {
                    first_zap = Some(t0.elapsed());
                }
                if let Some(e) = race.error() {
                    return Err(e);
                }
                if last_log_check.elapsed() > Duration::from_secs(2) {
                    check_kernel_log(&format!("{W}: after {:.1?}", t0.elapsed()), mark)?;
                    last_log_check = Instant::now();
                }
                let t = t0.elapsed();
                if zapped > 0 && t >= min {
                    return Ok(());
                }
                if t >= RACE_MAX {
                    return Err(format!(
                        "{W}: the race was never hit: change_pte_zapped did not move in \
                         {RACE_MAX:?} (no ->change_pte() found an SPTE under an invalid root)"
                    ));
                }
            }
        })();
        race.stop.store(true, SeqCst);
        r
    });
    let elapsed = t0.elapsed();
    ksm::write("run", "0")?;
    let end = vm.counts()?.since(&base);
    let (updated, zapped) = (end.updated.unwrap_or(0), end.zapped.unwrap_or(0));
    let (epochs, merged, unmerged) = (
        race.done.load(SeqCst),
        race.merged.load(SeqCst),
        race.unmerged.load(SeqCst),
    );
    let (creates, moves, deletes) = (
        race.creates.load(SeqCst),
        race.moves.load(SeqCst),
        race.deletes.load(SeqCst),
    );
    println!(
        "{W}: {elapsed:.1?}: {passes} L2 read passes of {RACE_N} pages; {epochs} COW epochs \
         ({merged} merged back by KSM, {unmerged} waits for KSM timed out); slot 2 created \
         {creates}, moved {moves}, deleted {deletes} times; change_pte_updated +{updated}, \
         change_pte_zapped +{zapped} ({})",
        first_zap.map_or("never".to_string(), |t| format!("the first after {t:.1?}"))
    );
    check_kernel_log(W, mark)?;
    r?;
    // The run did what it is for: flagged invalidations updated SPTEs in place, KSM merged the
    // pages back at least once, and the memslot thread invalidated roots.
    check(updated > 0, || {
        format!("{W}: change_pte_updated did not move: no SPTE was kept for ->change_pte()")
    })?;
    check(merged > 0, || {
        format!("{W}: KSM never merged all {RACE_N} pages back within {MERGE_WAIT:?}")
    })?;
    check(deletes > 0 && moves > 0, || {
        format!("{W}: the memslot thread made no deletion or move")
    })?;
    // Quiet now (KSM stopped, slot 2 deleted, every epoch finished): the L2 reads the last word
    // everywhere; then a re-read maps nothing new.
    check(race.started.load(SeqCst) == epochs, || {
        format!("{W}: the writer stopped in the middle of an epoch")
    })?;
    let last = vec![epoch_word(epochs); RACE_N];
    vm.read_pass(&format!("{W}: final read"), &last)?;
    let d = vm.read_pass(&format!("{W}: final re-read"), &last)?;
    eq(&format!("{W}: final re-read: NPT faults"), d.faults, 0)?;
    vm.cross_check()?;
    vm.quit()?;
    drop(vm);
    check_kernel_log(W, mark)
}

// ---------------------------------------------------------------------------------------------
// kvm_pfnmap_cow

const PFNMAP_MODULE: &str = "/lib/modules/spt_pfnmap.ko";
const PFNMAP_DEV: &str = "/dev/spt_pfnmap";
/// Pages per case (a power of two up to 16: spt_pfnmap allocates them as one block).
const PFNMAP_N: usize = 16;

/// What spt_pfnmap.ko puts into page i: every byte, and the word at `WORD`.
fn pfnmap_byte(i: usize) -> u8 {
    0x70 + (i % 16) as u8
}

fn pfnmap_word(i: usize) -> u32 {
    0x9f00_0000 | i as u32
}

/// What the VMM writes into page i to break COW.
fn cow_word(i: usize) -> u32 {
    0xc0c0_0000 | i as u32
}

/// A child that keeps the parent's anonymous pages shared copy-on-write while it lives; killed
/// and reaped on drop.
struct Sharer(libc::pid_t);

impl Sharer {
    fn fork() -> Result<Self, String> {
        // SAFETY: The child only calls pause(), async-signal-safe, until it is killed.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: Waits for the parent's SIGKILL.
                unsafe { libc::pause() };
            }
        }
        check(pid > 0, || {
            format!("fork: {}", std::io::Error::last_os_error())
        })?;
        Ok(Sharer(pid))
    }
}

impl Drop for Sharer {
    fn drop(&mut self) {
        // SAFETY: Our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// The device mapping: the file, and `PFNMAP_N` pages mapped `MAP_PRIVATE`.
struct PfnMap {
    map: Mapping,
    fd: libc::c_int,
}

impl PfnMap {
    fn new() -> Result<Self, String> {
        let dev = std::ffi::CString::new(PFNMAP_DEV).expect("no NUL");
        // SAFETY: A valid C string; the descriptor is closed on drop.
        let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR) };
        check(fd >= 0, || {
            format!("open {PFNMAP_DEV}: {}", std::io::Error::last_os_error())
        })?;
        match Mapping::map(PFNMAP_N, libc::MAP_PRIVATE, fd) {
            Ok(map) => Ok(PfnMap { map, fd }),
            Err(e) => {
                // SAFETY: Our descriptor, not used afterwards.
                unsafe { libc::close(fd) };
                Err(format!("mmap of {PFNMAP_DEV} (MAP_PRIVATE): {e}"))
            }
        }
    }
}

impl Drop for PfnMap {
    fn drop(&mut self) {
        // SAFETY: Our descriptor. The mapping (unmapped after this) holds the file's last
        // reference: its release frees spt_pfnmap's pages.
        unsafe { libc::close(self.fd) };
    }
}

/// First touch, re-read, a host-side write of every page (a COW break), re-read, on the `n`
/// pages of `mem` from `addr`, which hold `initial`. `flagged`: whether the COW break is a
/// flagged invalidation, so that `->change_pte()` points each SPTE at the copy (updated, no
/// fault), or a plain one that zaps the SPTE (the L2's re-read refaults it). With `pagemap`,
/// every page must map another pfn after the write (`/proc/self/pagemap` shows nothing of a
/// `VM_PFNMAP` mapping: the caller checks the COW break its own way).
fn cow_steps(
    name: &str,
    mem: &Mapping,
    addr: usize,
    initial: &[u32],
    flagged: bool,
    pagemap: bool,
) -> Result<(), String> {
    let w = |s: &str| format!("{name}: {s}");
    let n = initial.len();
    let n64 = n as u64;
    let mut vm = Vm::with(Slot1::User { owner: mem, addr }, n, true)?;
    // Every page is mapped read-only in the host (a COW mapping, a page shared with a child,
    // the zero page): one fault each, read-only SPTEs.
    let d = vm.read_pass(&w("first touch"), initial)?;
    vm.expect(&w("first touch"), &d, n64, 0, 0)?;
    let d = vm.read_pass(&w("re-read"), initial)?;
    vm.expect(&w("re-read"), &d, 0, 0, 0)?;
    let before_pfns = if pagemap { pfns(addr, n)? } else { vec![] };
    let before = vm.counts()?;
    for i in 0..n {
        set_page_word(addr + i * PAGE, cow_word(i));
    }
    let d = vm.counts()?.since(&before);
    if pagemap {
        let after_pfns = pfns(addr, n)?;
        for i in 0..n {
            check(after_pfns[i] != before_pfns[i], || {
                w(&format!(
                    "host-side write: page {i} still maps pfn {:#x}: no COW break",
                    before_pfns[i]
                ))
            })?;
        }
    }
    vm.expect(&w("host-side COW"), &d, 0, if flagged { n64 } else { 0 }, 0)?;
    let cows: Vec<u32> = (0..n).map(cow_word).collect();
    let d = vm.read_pass(&w("COW re-read"), &cows)?;
    vm.expect(&w("COW re-read"), &d, if flagged { 0 } else { n64 }, 0, 0)?;
    vm.cross_check()?;
    vm.quit()?;
    println!(
        "{name}: first touch {n} faults, host-side COW of {n} pages: change_pte_updated +{}, \
         re-read {} faults, new words read",
        if flagged { n } else { 0 },
        if flagged { 0 } else { n }
    );
    Ok(())
}

/// spt_pfnmap's pages mapped `MAP_PRIVATE`: the COW break has no old folio and is not flagged.
fn pfnmap_case() -> Result<(), String> {
    let name = "pfnmap";
    sh("insmod", &[PFNMAP_MODULE])?;
    let r = (|| {
        let pm = PfnMap::new()?;
        for i in 0..PFNMAP_N {
            let bytes = pm.map.bytes(i * PAGE, PAGE);
            let b = pfnmap_byte(i);
            let ok = bytes
                .iter()
                .enumerate()
                .all(|(j, &x)| (WORD..WORD + 4).contains(&j) || x == b);
            check(
                ok && page_word(pm.map.page_addr(i)) == pfnmap_word(i),
                || format!("{name}: page {i} of {PFNMAP_DEV} does not hold what spt_pfnmap wrote"),
            )?;
        }
        let initial: Vec<u32> = (0..PFNMAP_N).map(pfnmap_word).collect();
        cow_steps(name, &pm.map, pm.map.addr, &initial, false, false)?;
        // The writes went to copies: the device's pages (read() of the device) are unchanged.
        let mut dev = vec![0u8; PFNMAP_N * PAGE];
        // SAFETY: Reads into our own buffer of that length.
        let r = unsafe { libc::pread(pm.fd, dev.as_mut_ptr().cast(), dev.len(), 0) };
        check(r == dev.len() as isize, || {
            format!(
                "{name}: read of {PFNMAP_DEV}: {r} ({})",
                std::io::Error::last_os_error()
            )
        })?;
        for i in 0..PFNMAP_N {
            let p = &dev[i * PAGE..(i + 1) * PAGE];
            let word = u32::from_le_bytes([p[WORD], p[WORD + 1], p[WORD + 2], p[WORD + 3]]);
            check(word == pfnmap_word(i) && p[0] == pfnmap_byte(i), || {
                format!(
                    "{name}: after the host-side write, device page {i} holds {word:#x}, \
                     expected {:#x}: the write did not break COW",
                    pfnmap_word(i)
                )
            })?;
        }
        // The COW copies: the device's data with the new word.
        for i in 0..PFNMAP_N {
            let b = pm.map.bytes(i * PAGE, PAGE);
            check(
                b[0] == pfnmap_byte(i) && b[PAGE - 1] == pfnmap_byte(i),
                || format!("{name}: the COW copy of page {i} lost the device page's data"),
            )?;
        }
        Ok(())
    })();
    r.and(sh("rmmod", &["spt_pfnmap"]).map(|_| ()))
}

/// Anonymous pages shared copy-on-write with a child: the COW break copies a normal page and is
/// flagged.
fn fork_case() -> Result<(), String> {
    let mem = Mapping::anon(PFNMAP_N)?;
    for i in 0..PFNMAP_N {
        mem.fill(i, pfnmap_byte(i));
        set_page_word(mem.page_addr(i), pfnmap_word(i));
    }
    let _child = Sharer::fork()?;
    let initial: Vec<u32> = (0..PFNMAP_N).map(pfnmap_word).collect();
    cow_steps(
        "anon shared with a child",
        &mem,
        mem.addr,
        &initial,
        true,
        true,
    )
}

/// Anonymous pages never written, each mapping the zero page: `wp_page_copy()` has no old folio
/// either, yet the range is flagged (the zero page is RAM every process shares).
fn zero_case() -> Result<(), String> {
    let name = "anon zero page";
    let mem = Mapping::anon(PFNMAP_N)?;
    for i in 0..PFNMAP_N {
        eq(
            &format!("{name}: page {i} read by the host"),
            page_word(mem.page_addr(i)).into(),
            0,
        )?;
    }
    let p = pfns(mem.addr, PFNMAP_N)?;
    check(p.iter().all(|&x| x == p[0]), || {
        format!("{name}: the pages do not all map the zero page: {p:x?}")
    })?;
    cow_steps(name, &mem, mem.addr, &[0; PFNMAP_N], true, true)
}

pub fn kvm_pfnmap_cow(_args: &[String]) -> Result<(), String> {
    say_panic_on_warn("kvm_pfnmap_cow");
    run_restoring(|| {
        compaction_off()?;
        load_kvm(true)?;
        set_change_pte(true)?;
        ktap::start(Some(3));
        for (name, f) in [
            (
                "tdp change_pte=Y pfnmap MAP_PRIVATE (not flagged: zapped)",
                pfnmap_case as fn() -> Result<(), String>,
            ),
            (
                "tdp change_pte=Y anon shared with a child (flagged: updated)",
                fork_case,
            ),
            (
                "tdp change_pte=Y anon zero page (flagged: updated)",
                zero_case,
            ),
        ] {
            ktap::case(name, || {
                let mark = log_mark()?;
                f().and(check_kernel_log(name, mark))
            });
        }
        ktap::finish()
    })
}

// ---------------------------------------------------------------------------------------------
// kvm_gmem_slot

const GMEM_N: usize = 64;

/// The guest_memfd's page i: the word at `WORD` (the rest is `pattern()`).
fn gmem_word(i: usize) -> u32 {
    0xa000_0000 | i as u32
}

/// What the VMM writes into its anonymous page i to break COW.
fn anon_cow_word(i: usize) -> u32 {
    0xb0b0_0000 | i as u32
}

/// The anonymous memory at the slot's `userspace_addr`: every page identical and unlike the
/// guest_memfd's.
fn anon_page() -> Vec<u8> {
    pattern().iter().map(|b| b ^ 0xa5).collect()
}

/// The guest_memfd flags a default VM accepts.
fn gmem_flags() -> Result<u64, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let r = vm.check_extension_raw(KVM_CAP_GUEST_MEMFD_FLAGS);
    Ok(r.max(0) as u64)
}

fn gmem_case() -> Result<(), String> {
    let name = "guest_memfd slot";
    let w = |s: &str| format!("{name}: {s}");
    let n = GMEM_N;
    let n64 = n as u64;
    ksm_reset(n)?;
    let anon = Mapping::anon(n)?;
    let b = anon_page();
    let b_word = u32::from_le_bytes([b[WORD], b[WORD + 1], b[WORD + 2], b[WORD + 3]]);
    for i in 0..n {
        anon.put(i * PAGE, &b);
    }
    anon.madvise(libc::MADV_MERGEABLE)?;
    let slot1 = Slot1::Gmem {
        flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
        userspace: &anon,
    };
    let mut vm = Vm::with(slot1, n, true)?;
    let gmem = vm.gmem().expect("a guest_memfd slot").map.addr;
    for i in 0..n {
        Mapping::view(gmem + i * PAGE, PAGE).put(0, &pattern());
        set_page_word(gmem + i * PAGE, gmem_word(i));
    }
    let want: Vec<u32> = (0..n).map(gmem_word).collect();
    let anon_words = |what: &str, f: &dyn Fn(usize) -> u32| -> Result<(), String> {
        for i in 0..n {
            let (g, x) = (page_word(anon.page_addr(i)), f(i));
            check(g == x, || {
                w(&format!(
                    "{what}: the VMM's page {i} holds {g:#x}, expected {x:#x}"
                ))
            })?;
        }
        Ok(())
    };

    // 1-2. The L2 reads the guest_memfd's pages (one fault each), not the anonymous ones.
    let d = vm.read_pass(&w("first touch"), &want)?;
    vm.expect(&w("first touch"), &d, n64, 0, 0)?;
    let d = vm.read_pass(&w("re-read"), &want)?;
    vm.expect(&w("re-read"), &d, 0, 0, 0)?;

    // 3. KSM merges the anonymous pages: write-protect and replace are flagged invalidations of
    // the slot's userspace_addr. KVM must not point the slot's SPTEs at the anonymous page: it
    // zaps them through the normal unmap path, which neither change_pte stat counts.
    let before = vm.counts()?;
    let sharing0 = ksm::read("pages_sharing")?;
    merge(&w("merge"), || {
        Ok(ksm::read("pages_shared")? == 1 && ksm::read("pages_sharing")? == n64 - 1)
    })?;
    let d = vm.counts()?.since(&before);
    vm.expect(&w("KSM merge"), &d, 0, 0, 0)?;
    let merged = pfns(anon.addr, n)?;
    check(merged.iter().all(|&p| p == merged[0]), || {
        w("KSM merge: the VMM's pages do not all map one page")
    })?;
    anon_words("KSM merge", &|_| b_word)?;
    // Every page had a flagged event, so every SPTE was zapped: one fault per page.
    let d = vm.read_pass(&w("merged re-read"), &want)?;
    vm.expect(&w("merged re-read"), &d, n64, 0, 0)?;

    // 4. The VMM writes its anonymous pages: COW breaks of the KSM page, flagged too.
    let before = vm.counts()?;
    for i in 0..n {
        set_page_word(anon.page_addr(i), anon_cow_word(i));
    }
    let d = vm.counts()?.since(&before);
    vm.expect(&w("host-side COW"), &d, 0, 0, 0)?;
    let copies = pfns(anon.addr, n)?;
    check(copies.iter().all(|&p| p != merged[0]), || {
        w("host-side COW: a page still maps the KSM page")
    })?;
    anon_words("host-side COW", &|i| anon_cow_word(i))?;
    let d = vm.read_pass(&w("COW re-read"), &want)?;
    vm.expect(&w("COW re-read"), &d, n64, 0, 0)?;

    // 5. The L2 writes: into the guest_memfd (checked through the VMM's mapping of it), not
    // the anonymous pages. The re-read's faults mapped the guest_memfd's pages writable (the slot
    // is not read-only): no fault.
    let d = vm.write_pass(&w("L2 write"))?;
    vm.expect(&w("L2 write"), &d, 0, 0, 0)?;
    anon_words("L2 write", &|i| anon_cow_word(i))?;
    vm.cross_check()?;
    vm.quit()?;
    println!(
        "{name}: the L2 read the guest_memfd's words throughout; KSM merged the {n} pages at \
         userspace_addr (pages_sharing {sharing0} -> {}), then the VMM wrote them: each time \
         the {n} SPTEs were zapped (the L2 refaulted {n} pages), change_pte stats +0",
        n - 1
    );
    Ok(())
}

pub fn kvm_gmem_slot(_args: &[String]) -> Result<(), String> {
    say_panic_on_warn("kvm_gmem_slot");
    run_restoring(|| {
        compaction_off()?;
        load_kvm(true)?;
        set_change_pte(true)?;
        ktap::start(Some(1));
        let name = format!("tdp change_pte=Y guest_memfd slot N={GMEM_N}");
        let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
        let flags = gmem_flags()?;
        if flags & want != want {
            ktap::skip(
                &name,
                &format!(
                    "KVM_CAP_GUEST_MEMFD_FLAGS is {flags:#x}: no GUEST_MEMFD_FLAG_MMAP | \
                     GUEST_MEMFD_FLAG_INIT_SHARED for a default VM"
                ),
            );
        } else {
            ktap::case(&name, || {
                let mark = log_mark()?;
                gmem_case().and(check_kernel_log(&name, mark))
            });
        }
        ktap::finish()
    })
}
