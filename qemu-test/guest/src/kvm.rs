// SPDX-License-Identifier: GPL-2.0

//! `kvm_ksm`: KVM as the in-tree consumer of `change_pte`, measured with a minimal VMM.
//!
//! The VMM (rust-vmm's `kvm-ioctls` and `kvm-bindings`) runs one vCPU in 32-bit protected mode,
//! flat segments and no guest paging, so that NPT maps guest physical addresses directly:
//!
//! - slot 0 (not mergeable): the L2's code, its parameters and a results area;
//! - slot 1: N anonymous pages, `MADV_MERGEABLE`, every one populated by the VMM with the same
//!   content (real anon pages with writable, dirty PTEs), THP off except in the THP case. One more
//!   identical page, outside the memslot, is every case's merge partner: even N = 1 merges.
//!
//! The L2 takes commands over port I/O: a read pass loads one 32-bit word at a fixed offset of
//! every page of slot 1 into the results area, a write pass stores a word into every page. The
//! VMM reads KVM's binary stats (`KVM_GET_STATS_FD`, by name) around every step, and checks the
//! results area against what the L2 must have read (coherence, not just counts).
//!
//! Per MMU (TDP MMU, then the shadow/rmap MMU with `kvm.tdp_mmu=0`) and per mode
//! (`kvm.change_pte` Y: SPTEs updated in place; N: mainline's zap), for each N:
//!
//! 1. first touch: a read pass faults every page in (`pf_taken`: one NPT fault per page with the
//!    TDP MMU, one per 8 pages with the shadow MMU, which prefetches neighbouring SPTEs);
//! 2. re-read: no fault;
//! 3. KSM merges the N + 1 pages into one KSM page, then a re-read;
//! 4. host-side copy-on-write: the VMM writes a distinct word into every page, then a re-read that
//!    must see the new words;
//! 5. an L2 write pass, checked from the host side.
//!
//! N is 1, 256 and 4096. With change_pte=Y, per MMU, also zero pages (`use_zero_pages`) and a
//! THP-backed slot 1.
//!
//! `kvm_ksm [full] [mainline]`: `full` adds the zero-page and THP cases with change_pte=N;
//! `mainline` runs only the change_pte=N expectations (zero pages and THP included) and needs
//! neither the `change_pte` parameter nor its stats: it passes on a KVM without the series' KVM
//! patches, where the default run fails (saying so).

use crate::ksm;
use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::util::*;
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_segment, kvm_stats_desc, kvm_stats_header,
    kvm_userspace_memory_region, kvm_userspace_memory_region2, KVMIO, KVM_CAP_BINARY_STATS_FD,
    KVM_MEM_GUEST_MEMFD,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

// kvm-ioctls 0.25 has no wrapper for KVM_GET_STATS_FD, so the request number is made here the way
// kvm-ioctls makes its own (vmm-sys-util's macro, kvm-bindings' KVMIO), from the uapi definition
// `#define KVM_GET_STATS_FD _IO(KVMIO, 0xce)`. `StatsFd::open` checks what comes back (header,
// id string) and `Vm::cross_check` compares it with debugfs, so a wrong number cannot go unseen.
vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// The KVM modules in load order, where mkinitramfs puts them.
const MODULES: [(&str, &str); 3] = [
    ("irqbypass", "/lib/modules/irqbypass.ko"),
    ("kvm", "/lib/modules/kvm.ko"),
    ("kvm_amd", "/lib/modules/kvm-amd.ko"),
];
/// The series' switch, read by KVM_CREATE_VM: Y updates SPTEs through change_pte, N zaps.
const PARAM_CHANGE_PTE: &str = "/sys/module/kvm/parameters/change_pte";
const PARAM_TDP_MMU: &str = "/sys/module/kvm/parameters/tdp_mmu";
const PARAM_NPT: &str = "/sys/module/kvm_amd/parameters/npt";
const COMPACTION_PROACTIVENESS: &str = "/proc/sys/vm/compaction_proactiveness";

// Guest physical layout.
/// Slot 0: the code page (code at 0, parameters at `PARAMS`), then the results area: room for
/// 64 Ki pages in slot 1 (`make bench`'s largest N).
const SLOT0_GPA: u64 = 0;
const SLOT0_SIZE: usize = PAGE + 65536 * 4;
/// Parameters the L2 reads: [PARAMS] = GPA of the word in page 0 of slot 1, [PARAMS + 4] = N.
const PARAMS: usize = 0xf00;
/// Results: one 32-bit word per page of slot 1.
const RESULTS: usize = 0x1000;
const MAX_PAGES: usize = (SLOT0_SIZE - RESULTS) / 4;
/// Slot 1 starts at 2 MiB: 2 MiB-aligned (like its host address in the THP case), so KVM may map
/// it with a huge SPTE; also 8-page aligned, which the shadow MMU's prefetch depends on.
pub(crate) const SLOT1_GPA: u64 = 0x20_0000;
/// Offset in every page of the word the L2 reads and writes.
pub(crate) const WORD: usize = 0x100;
const HUGE: usize = 2 << 20;

// Ports and commands of the L2's protocol.
const PORT_CMD: u16 = 0x10;
const PORT_ARG: u16 = 0x11;
const PORT_DONE: u16 = 0x12;
const CMD_QUIT: u32 = 0;
const CMD_READ: u32 = 1;
const CMD_WRITE: u32 = 2;
const CMD_CLEAR: u32 = 3;

/// The L2, hand-assembled 32-bit code loaded at GPA 0 (CS base 0), entered at 0.
#[rustfmt::skip]
const L2_CODE: &[u8] = &[
    // 0x00 start:
    0xba, 0x10, 0x00, 0x00, 0x00,       // mov edx, 0x10          command port
    0xed,                               // in eax, dx             eax = command (VM exit)
    0x83, 0xf8, 0x01,                   // cmp eax, 1
    0x74, 0x0d,                         // je read (0x18)
    0x83, 0xf8, 0x02,                   // cmp eax, 2
    0x74, 0x2b,                         // je write (0x3b)
    0x83, 0xf8, 0x03,                   // cmp eax, 3
    0x74, 0x46,                         // je clear (0x5b)
    0xf4,                               // hlt                    any other command: quit
    0xeb, 0xe8,                         // jmp start (0x00)
    // 0x18 read: results[i] = word of page i
    0x8b, 0x35, 0x00, 0x0f, 0x00, 0x00, // mov esi, [0xf00]       GPA of the word in page 0
    0x8b, 0x0d, 0x04, 0x0f, 0x00, 0x00, // mov ecx, [0xf04]       N
    0xbf, 0x00, 0x10, 0x00, 0x00,       // mov edi, 0x1000        results
    // 0x29
    0x8b, 0x06,                         // mov eax, [esi]         load the word of this page
    0x89, 0x07,                         // mov [edi], eax         store it in the results
    0x81, 0xc6, 0x00, 0x10, 0x00, 0x00, // add esi, 0x1000        next page
    0x83, 0xc7, 0x04,                   // add edi, 4             next result
    0x49,                               // dec ecx
    0x75, 0xf0,                         // jnz 0x29
    0xeb, 0x35,                         // jmp done (0x70)
    // 0x3b write: word of page i = arg + i
    0xba, 0x11, 0x00, 0x00, 0x00,       // mov edx, 0x11          argument port
    0xed,                               // in eax, dx             eax = value for page 0 (VM exit)
    0x8b, 0x35, 0x00, 0x0f, 0x00, 0x00, // mov esi, [0xf00]
    0x8b, 0x0d, 0x04, 0x0f, 0x00, 0x00, // mov ecx, [0xf04]
    // 0x4d
    0x89, 0x06,                         // mov [esi], eax         store into this page
    0x40,                               // inc eax                next page, next value
    0x81, 0xc6, 0x00, 0x10, 0x00, 0x00, // add esi, 0x1000
    0x49,                               // dec ecx
    0x75, 0xf4,                         // jnz 0x4d
    0xeb, 0x15,                         // jmp done (0x70)
    // 0x5b clear: results[i] = 0 (faults the results pages in before anything is measured)
    0x8b, 0x0d, 0x04, 0x0f, 0x00, 0x00, // mov ecx, [0xf04]
    0xbf, 0x00, 0x10, 0x00, 0x00,       // mov edi, 0x1000
    0x31, 0xc0,                         // xor eax, eax
    // 0x68
    0x89, 0x07,                         // mov [edi], eax
    0x83, 0xc7, 0x04,                   // add edi, 4
    0x49,                               // dec ecx
    0x75, 0xf8,                         // jnz 0x68
    // 0x70 done:
    0xba, 0x12, 0x00, 0x00, 0x00,       // mov edx, 0x12          done port
    0xee,                               // out dx, al             (VM exit)
    0xeb, 0x88,                         // jmp start (0x00)
];

pub(crate) fn read_trimmed(path: &str) -> Result<String, String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// KVM's binary statistics.

/// A stats fd (`KVM_GET_STATS_FD` on a VM or vCPU fd), its descriptors parsed once.
struct StatsFd {
    file: File,
    what: String,
    /// Name, offset in the data block, number of u64 items.
    descs: Vec<(String, usize, usize)>,
    data_offset: u64,
    data_len: usize,
}

/// A NUL-terminated name out of a fixed-size field.
fn c_name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl StatsFd {
    fn open<F: AsRawFd>(fd: &F, what: &str, id_prefix: &str) -> Result<Self, String> {
        // SAFETY: KVM_GET_STATS_FD takes no argument; it returns a new descriptor or -1.
        let r = unsafe { vmm_sys_util::ioctl::ioctl(fd, KVM_GET_STATS_FD()) };
        if r < 0 {
            return Err(format!(
                "{what}: KVM_GET_STATS_FD: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `r` is a descriptor the kernel just gave us and nothing else owns.
        let file = unsafe { File::from_raw_fd(r) };
        let read_at = |len: usize, off: u64, part: &str| -> Result<Vec<u8>, String> {
            let mut b = vec![0u8; len];
            file.read_exact_at(&mut b, off)
                .map_err(|e| format!("{what} stats {part}: {e}"))?;
            Ok(b)
        };
        let hb = read_at(std::mem::size_of::<kvm_stats_header>(), 0, "header")?;
        // SAFETY: kvm_stats_header is six u32s: any bytes are a valid value.
        let h: kvm_stats_header = unsafe { std::ptr::read_unaligned(hb.as_ptr().cast()) };
        let name_size = h.name_size as usize;
        check((8..=4096).contains(&name_size) && h.num_desc > 0, || {
            format!("{what} stats header makes no sense: {h:?}")
        })?;
        let id = c_name(&read_at(name_size, h.id_offset.into(), "id")?);
        // VM stats are "kvm-PID", vCPU stats "kvm-PID/vcpu-N".
        check(id.starts_with(id_prefix), || {
            format!("{what} stats id is {id:?}, expected {id_prefix}...")
        })?;
        // Each descriptor is followed by its name (name_size bytes).
        let stride = std::mem::size_of::<kvm_stats_desc>() + name_size;
        let db = read_at(
            stride * h.num_desc as usize,
            h.desc_offset.into(),
            "descriptors",
        )?;
        let mut descs = Vec::new();
        let mut data_len = 0;
        for chunk in db.chunks_exact(stride) {
            // SAFETY: kvm_stats_desc is plain integers and a zero-sized name marker: any bytes
            // are a valid value; the chunk holds at least its size.
            let d: kvm_stats_desc = unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast()) };
            let name = c_name(&chunk[std::mem::size_of::<kvm_stats_desc>()..]);
            let (off, size) = (d.offset as usize, d.size as usize);
            data_len = data_len.max(off + 8 * size);
            descs.push((name, off, size));
        }
        Ok(StatsFd {
            file,
            what: what.to_string(),
            descs,
            data_offset: h.data_offset.into(),
            data_len,
        })
    }

    /// Every scalar stat (histograms, size > 1, are left out), by name.
    fn read(&self) -> Result<HashMap<String, u64>, String> {
        let mut b = vec![0u8; self.data_len];
        self.file
            .read_exact_at(&mut b, self.data_offset)
            .map_err(|e| format!("{} stats data: {e}", self.what))?;
        Ok(self
            .descs
            .iter()
            .filter(|(_, _, size)| *size == 1)
            .map(|(name, off, _)| {
                let mut v = [0u8; 8];
                v.copy_from_slice(&b[*off..*off + 8]);
                (name.clone(), u64::from_ne_bytes(v))
            })
            .collect())
    }
}

fn stat(m: &HashMap<String, u64>, name: &str, what: &str) -> Result<u64, String> {
    m.get(name)
        .copied()
        .ok_or_else(|| format!("{what} stat {name} missing"))
}

/// The counters a step is judged by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counts {
    /// vCPU `pf_taken`: NPT faults KVM handled.
    pub(crate) faults: u64,
    /// VM `change_pte_updated` / `change_pte_zapped` (the series' stats; None on a mainline KVM).
    pub(crate) updated: Option<u64>,
    pub(crate) zapped: Option<u64>,
    /// VM `pages_2m`: huge SPTEs now (an instant counter, not a delta).
    pub(crate) pages_2m: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Delta {
    pub(crate) faults: u64,
    pub(crate) updated: Option<u64>,
    pub(crate) zapped: Option<u64>,
}

impl Counts {
    pub(crate) fn since(&self, before: &Counts) -> Delta {
        let d = |a: Option<u64>, b: Option<u64>| Some(a? - b?);
        Delta {
            faults: self.faults - before.faults,
            updated: d(self.updated, before.updated),
            zapped: d(self.zapped, before.zapped),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel state: modules, knobs.

fn module_loaded(name: &str) -> bool {
    fs::read_to_string("/proc/modules")
        .map(|m| m.lines().any(|l| l.split(' ').next() == Some(name)))
        .unwrap_or(false)
}

/// Unloads kvm_amd and kvm (and irqbypass with `all`) if loaded.
fn unload_kvm(all: bool) -> Result<(), String> {
    for name in ["kvm_amd", "kvm", "irqbypass"] {
        if name == "irqbypass" && !all {
            continue;
        }
        if module_loaded(name) {
            sh("rmmod", &[name])?;
        }
    }
    Ok(())
}

/// (Re)loads KVM with the TDP MMU or the shadow MMU; kvm_amd must load and use NPT.
pub(crate) fn load_kvm(tdp_mmu: bool) -> Result<(), String> {
    for (_, path) in MODULES {
        check(Path::new(path).exists(), || {
            format!("{path} missing: the initramfs was built from a kernel without KVM_AMD=m")
        })?;
    }
    unload_kvm(false)?;
    if !module_loaded("irqbypass") {
        sh("insmod", &[MODULES[0].1])?;
    }
    let tdp = if tdp_mmu { "tdp_mmu=1" } else { "tdp_mmu=0" };
    sh("insmod", &[MODULES[1].1, tdp])?;
    sh("insmod", &[MODULES[2].1]).map_err(|e| {
        format!("kvm_amd did not load (QEMU's -cpu max offers SVM with NPT under TCG): {e}")
    })?;
    let npt = read_trimmed(PARAM_NPT)?;
    check(npt == "Y", || {
        format!("kvm_amd loaded without nested paging (npt={npt}); the test needs NPT")
    })?;
    let got = read_trimmed(PARAM_TDP_MMU)?;
    let want = if tdp_mmu { "Y" } else { "N" };
    check(got == want, || {
        format!("kvm loaded with {tdp}, but {PARAM_TDP_MMU} reads {got}")
    })
}

/// Sets `kvm.change_pte` for the VMs created from now on, and reads it back.
pub(crate) fn set_change_pte(keep: bool) -> Result<(), String> {
    let v = if keep { "Y" } else { "N" };
    check(Path::new(PARAM_CHANGE_PTE).exists(), || {
        format!(
            "{PARAM_CHANGE_PTE} missing: this KVM lacks the series' change_pte patches \
             (`kvm_ksm mainline` tests mainline KVM's behaviour)"
        )
    })?;
    fs::write(PARAM_CHANGE_PTE, v).map_err(|e| format!("{PARAM_CHANGE_PTE}={v}: {e}"))?;
    let got = read_trimmed(PARAM_CHANGE_PTE)?;
    check(got == v, || {
        format!("{PARAM_CHANGE_PTE} reads {got} after writing {v}")
    })
}

/// The KSM knobs this test changes (with vm.compaction_proactiveness): saved first, restored at
/// the end.
const KSM_KNOBS: [&str; 6] = [
    "sleep_millisecs",
    "pages_to_scan",
    "smart_scan",
    "use_zero_pages",
    "max_page_sharing",
    "run",
];

struct Saved {
    ksm: Vec<(&'static str, String)>,
    proactiveness: Option<String>,
}

impl Saved {
    fn take() -> Result<Self, String> {
        let mut ksm = Vec::new();
        for k in KSM_KNOBS {
            let p = format!("/sys/kernel/mm/ksm/{k}");
            if Path::new(&p).exists() {
                ksm.push((k, read_trimmed(&p)?));
            }
        }
        let proactiveness = if Path::new(COMPACTION_PROACTIVENESS).exists() {
            Some(read_trimmed(COMPACTION_PROACTIVENESS)?)
        } else {
            None
        };
        Ok(Saved { ksm, proactiveness })
    }

    fn restore(&self) -> Result<(), String> {
        // Unmerge everything first: max_page_sharing can only change with no KSM pages. `run`
        // comes last in KSM_KNOBS, so KSM restarts (if it ran) with the old settings.
        ksm::write("run", "2")?;
        for (k, v) in &self.ksm {
            ksm::write(k, v)?;
        }
        if let Some(v) = &self.proactiveness {
            fs::write(COMPACTION_PROACTIVENESS, v)
                .map_err(|e| format!("{COMPACTION_PROACTIVENESS}={v}: {e}"))?;
        }
        Ok(())
    }
}

/// Runs a KVM test `f`: KSM's knobs and vm.compaction_proactiveness are saved first and restored
/// afterwards (unmerging everything), and KVM is unloaded, whether `f` failed or not.
pub(crate) fn run_restoring(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let saved = Saved::take()?;
    let r = f();
    let cleanup = saved.restore().and(unload_kvm(true));
    match (r, cleanup) {
        (Ok(()), c) => c,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(format!("{e}; cleaning up: {c}")),
    }
}

/// Turns proactive compaction off (restored by [`run_restoring`]): it could migrate guest pages
/// in the middle of a step (a zap, and faults nobody asked for).
pub(crate) fn compaction_off() -> Result<(), String> {
    if Path::new(COMPACTION_PROACTIVENESS).exists() {
        fs::write(COMPACTION_PROACTIVENESS, "0")
            .map_err(|e| format!("{COMPACTION_PROACTIVENESS}=0: {e}"))?;
    }
    Ok(())
}

/// Stops KSM, unmerges everything, and sets it up for `pages` pages merged into one KSM page.
pub(crate) fn ksm_reset(pages: usize) -> Result<(), String> {
    ksm::reset(pages)?;
    ksm::write("max_page_sharing", &(pages + 2).to_string())
}

// ---------------------------------------------------------------------------------------------
// Slot 1's memory.

/// The identical content of every page: its word at `WORD` is `pattern_word()`.
pub(crate) fn pattern() -> Vec<u8> {
    (0..PAGE)
        .map(|j| (j as u8).wrapping_mul(7) ^ 0x3c)
        .collect()
}

fn pattern_word() -> u32 {
    let p = pattern();
    u32::from_le_bytes([p[WORD], p[WORD + 1], p[WORD + 2], p[WORD + 3]])
}

/// What the VMM writes into page `i` to break COW: distinct per page, unlike anything else.
fn cow_word(i: usize) -> u32 {
    0xc000_0000 | i as u32
}

/// What the L2's write pass stores into page 0 (page i gets WRITE_BASE + i).
const WRITE_BASE: u32 = 0x5000_0000;
/// What the VMM puts into the results area before a read pass, so every result must be written.
const POISON: u32 = 0xdead_0000;

/// The word at `WORD` of the page at host address `page` (one 32-bit load).
pub(crate) fn page_word(page: usize) -> u32 {
    // SAFETY: Callers pass a page of a mapping they own (or borrow), readable; WORD is aligned.
    unsafe { std::ptr::read_volatile((page + WORD) as *const u32) }
}

/// Writes `w` at `WORD` of the page at host address `page`, in one 32-bit store (an L2 reading the
/// page meanwhile sees the old word or the new one, never a mix).
pub(crate) fn set_page_word(page: usize, w: u32) {
    // SAFETY: Callers pass a page of a writable mapping they own (or borrow); WORD is aligned.
    unsafe { std::ptr::write_volatile((page + WORD) as *mut u32, w) }
}

/// Slot 1's backing: `n` guest pages and one partner page, outside the memslot, just before.
struct Region {
    map: Mapping,
    guest: usize,
    partner: usize,
    n: usize,
}

impl Region {
    /// `n` pages (THP off) after the partner.
    fn small(n: usize) -> Result<Self, String> {
        let map = Mapping::anon(n + 1)?;
        let partner = map.addr;
        Ok(Region {
            guest: partner + PAGE,
            partner,
            map,
            n,
        })
    }

    /// 512 pages in one 2 MiB-aligned range, THP allowed there only (MADV_HUGEPAGE).
    fn huge() -> Result<Self, String> {
        // 4 MiB hold a 2 MiB-aligned range with a page before it.
        let map = Mapping::anon(2 * HUGE / PAGE)?;
        let guest = (map.addr + PAGE).next_multiple_of(HUGE);
        Mapping::view(guest, HUGE).madvise(libc::MADV_HUGEPAGE)?;
        Ok(Region {
            partner: guest - PAGE,
            guest,
            map,
            n: HUGE / PAGE,
        })
    }

    fn page(&self, i: usize) -> usize {
        self.guest + i * PAGE
    }

    /// Writes `content` to the partner and to every guest page (populating them: a write fault
    /// allocates a real page even for zeroes).
    fn fill(&self, content: &[u8]) {
        let v = Mapping::view(self.partner, (self.n + 1) * PAGE);
        for i in 0..=self.n {
            v.put(i * PAGE, content);
        }
    }

    fn set_word(&self, i: usize, w: u32) {
        set_page_word(self.page(i), w);
    }

    /// The pfns of the partner (index 0) and the guest pages (1..=n).
    fn pfns(&self) -> Result<Vec<u64>, String> {
        Mapping::view(self.partner, (self.n + 1) * PAGE).present_pfns()
    }

    fn madvise(&self, advice: libc::c_int) -> Result<(), String> {
        Mapping::view(self.partner, (self.n + 1) * PAGE).madvise(advice)
    }

    /// AnonHugePages of the mapping (kB), from /proc/self/smaps.
    fn anon_huge_kb(&self) -> Result<u64, String> {
        let smaps = fs::read_to_string("/proc/self/smaps").map_err(|e| format!("smaps: {e}"))?;
        let (lo, hi) = (self.map.addr, self.map.addr + self.map.len);
        let mut inside = false;
        let mut kb = 0;
        for l in smaps.lines() {
            let first = l.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a >= lo && b <= hi;
                    continue;
                }
            }
            if inside {
                if let Some(v) = l.strip_prefix("AnonHugePages:") {
                    kb += v
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .map_err(|e| format!("smaps {l:?}: {e}"))?;
                }
            }
        }
        Ok(kb)
    }
}

// ---------------------------------------------------------------------------------------------
// The VM.

/// What backs slot 1 (`n` pages at `SLOT1_GPA`).
#[derive(Clone, Copy)]
pub(crate) enum Slot1<'a> {
    /// The VMM's memory: the pages from host address `addr`, inside `owner`, which outlives the
    /// VM (KVM_SET_USER_MEMORY_REGION).
    User { owner: &'a Mapping, addr: usize },
    /// A guest_memfd the VM creates with `flags` (and the VMM maps shared, [`Vm::gmem`]), with
    /// `userspace` as the slot's `userspace_addr` (KVM_SET_USER_MEMORY_REGION2,
    /// KVM_MEM_GUEST_MEMFD). The guest's pages are the guest_memfd's, whatever `userspace` holds.
    Gmem { flags: u64, userspace: &'a Mapping },
}

/// A guest_memfd and the VMM's shared mapping of it.
pub(crate) struct Gmem {
    pub(crate) map: Mapping,
    _file: File,
}

pub(crate) struct Vm<'a> {
    // Fds before slot 0's mapping: the VM is gone before its memory is unmapped (slot 1's is
    // borrowed, so it outlives the VM).
    vcpu: VcpuFd,
    vm_stats: StatsFd,
    vcpu_stats: StatsFd,
    /// Shared with threads that change memslots while the vCPU runs ([`Vm::fd`]).
    vm: Arc<VmFd>,
    _kvm: Kvm,
    gmem: Option<Gmem>,
    slot0: Mapping,
    slot1: Slot1<'a>,
    n: usize,
    /// Whether the series' stats are required (not in `mainline` runs).
    patched: bool,
}

fn segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1, // 32-bit
        s: 1,  // code/data
        l: 0,
        g: 1, // 4 KiB granularity: the limit covers 4 GiB
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl<'a> Vm<'a> {
    /// A VM with slot 0 (code, results) and slot 1 = `region`'s guest pages, its vCPU at the L2's
    /// entry in flat 32-bit protected mode.
    fn new(region: &'a Region, patched: bool) -> Result<Self, String> {
        let slot1 = Slot1::User {
            owner: &region.map,
            addr: region.guest,
        };
        Self::with(slot1, region.n, patched)
    }

    /// A VM with slot 0 (code, results) and slot 1 = `n` pages of `slot1`, its vCPU at the L2's
    /// entry in flat 32-bit protected mode.
    pub(crate) fn with(slot1: Slot1<'a>, n: usize, patched: bool) -> Result<Self, String> {
        check((1..=MAX_PAGES).contains(&n), || {
            format!("N={n} outside 1..={MAX_PAGES}")
        })?;
        if let Slot1::User { owner, addr } = slot1 {
            check(
                addr >= owner.addr && addr + n * PAGE <= owner.addr + owner.len,
                || format!("slot 1's {n} pages at {addr:#x} lie outside their mapping"),
            )?;
        }
        let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        check(
            vm.check_extension_raw(KVM_CAP_BINARY_STATS_FD.into()) > 0,
            || "KVM lacks KVM_CAP_BINARY_STATS_FD".into(),
        )?;

        let slot0 = Mapping::anon(SLOT0_SIZE / PAGE)?;
        slot0.put(0, L2_CODE);
        slot0.put(PARAMS, &((SLOT1_GPA + WORD as u64) as u32).to_le_bytes());
        slot0.put(PARAMS + 4, &(n as u32).to_le_bytes());
        let mut regions = vec![(0, SLOT0_GPA, SLOT0_SIZE, slot0.addr)];
        if let Slot1::User { addr, .. } = slot1 {
            regions.push((1, SLOT1_GPA, n * PAGE, addr));
        }
        for (slot, gpa, size, addr) in regions {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size as u64,
                userspace_addr: addr as u64,
            };
            // SAFETY: Both mappings outlive the VM (slot 0's is dropped after the fds, see the
            // field order; slot 1's is borrowed for the VM's lifetime), and nothing in this
            // process keeps data there that the guest could corrupt.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION slot {slot}: {e}"))?;
        }
        let gmem = match slot1 {
            Slot1::User { .. } => None,
            Slot1::Gmem { flags, userspace } => Some(Self::gmem_slot(&vm, n, flags, userspace)?),
        };

        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        // Flat 32-bit segments straight into the segment registers: no GDT is needed as long as
        // the L2 never loads a selector. Type 0xb = code, execute/read, accessed; 0x3 = data,
        // read/write, accessed.
        sregs.cs = segment(0x8, 0xb);
        let data = segment(0x10, 0x3);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        // CR0.PE | CR0.ET: protected mode, no paging, caches enabled. NPT translates GPAs.
        sregs.cr0 = 0x11;
        sregs.cr4 = 0;
        sregs.efer = 0;
        vcpu.set_sregs(&sregs)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
        regs.rip = 0;
        regs.rflags = 0x2; // interrupts off: there is no IDT
        vcpu.set_regs(&regs)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

        let pid = std::process::id();
        let vm_stats = StatsFd::open(&vm, "VM", &format!("kvm-{pid}"))?;
        let vcpu_stats = StatsFd::open(&vcpu, "vCPU", &format!("kvm-{pid}/vcpu-0"))?;
        let mut v = Vm {
            vcpu,
            vm_stats,
            vcpu_stats,
            vm: Arc::new(vm),
            _kvm: kvm,
            gmem,
            slot0,
            slot1,
            n,
            patched,
        };
        // The first command runs the L2 from its entry: it faults in the code page, and CLEAR
        // faults in the results pages, so that from here on only slot 1 faults.
        v.command(CMD_CLEAR, 0)?;
        Ok(v)
    }

    /// Slot 1 from a new guest_memfd of `n` pages (created with `flags`, mapped shared by the VMM)
    /// with `userspace` as its `userspace_addr`.
    fn gmem_slot(vm: &VmFd, n: usize, flags: u64, userspace: &Mapping) -> Result<Gmem, String> {
        check(userspace.len >= n * PAGE, || {
            format!("slot 1's userspace_addr mapping is shorter than {n} pages")
        })?;
        let size = (n * PAGE) as u64;
        let fd = vm
            .create_guest_memfd(kvm_create_guest_memfd {
                size,
                flags,
                reserved: [0; 6],
            })
            .map_err(|e| format!("KVM_CREATE_GUEST_MEMFD (flags {flags:#x}): {e}"))?;
        // SAFETY: A descriptor the kernel just returned, owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let map = Mapping::map(n, libc::MAP_SHARED, file.as_raw_fd())
            .map_err(|e| format!("mmap of the guest_memfd: {e}"))?;
        let r = kvm_userspace_memory_region2 {
            slot: 1,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: SLOT1_GPA,
            memory_size: size,
            userspace_addr: userspace.addr as u64,
            guest_memfd_offset: 0,
            guest_memfd: file.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `userspace` is borrowed for the VM's lifetime; the guest's pages are the
        // guest_memfd's, which the VM owns (with the mapping, dropped with the VM).
        unsafe { vm.set_user_memory_region2(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION2 slot 1 (guest_memfd): {e}"))?;
        Ok(Gmem { map, _file: file })
    }

    /// The VM fd, for threads that change memslots while this thread runs the vCPU.
    pub(crate) fn fd(&self) -> Arc<VmFd> {
        Arc::clone(&self.vm)
    }

    /// The guest_memfd behind slot 1, if it is one ([`Slot1::Gmem`]).
    pub(crate) fn gmem(&self) -> Option<&Gmem> {
        self.gmem.as_ref()
    }

    /// Host address of slot 1's page `i` as the VMM sees the guest's data: in its own memory, or
    /// in its mapping of the guest_memfd.
    fn host_page(&self, i: usize) -> usize {
        match (&self.slot1, &self.gmem) {
            (_, Some(g)) => g.map.addr + i * PAGE,
            (Slot1::User { addr, .. }, None) => addr + i * PAGE,
            (Slot1::Gmem { .. }, None) => unreachable!("a guest_memfd slot without its mapping"),
        }
    }

    /// Runs the vCPU to its next exit, which must be the L2's `in` from `port`; answers `value`.
    fn answer_in(&mut self, port: u16, value: u32) -> Result<(), String> {
        match self.vcpu.run() {
            Ok(VcpuExit::IoIn(p, data)) if p == port && data.len() == 4 => {
                data.copy_from_slice(&value.to_le_bytes());
                Ok(())
            }
            other => Err(format!(
                "expected the L2 to read a dword from port {port:#x}, got {other:?}"
            )),
        }
    }

    /// One command: the L2 reads it (and for a write its argument), performs it, reports done.
    fn command(&mut self, cmd: u32, arg: u32) -> Result<(), String> {
        self.answer_in(PORT_CMD, cmd)?;
        if cmd == CMD_WRITE {
            self.answer_in(PORT_ARG, arg)?;
        }
        let exit = match self.vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_DONE, _)) => return Ok(()),
            other => format!("{other:?}"),
        };
        Err(format!(
            "expected the L2's out to port {PORT_DONE:#x} after command {cmd}, got {exit}{}",
            self.internal_error()
        ))
    }

    /// What `KVM_EXIT_INTERNAL_ERROR` said (suberror and data), if the last exit was one.
    fn internal_error(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return String::new();
        }
        // SAFETY: `internal` is the union member KVM fills for KVM_EXIT_INTERNAL_ERROR.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        format!(
            " (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        )
    }

    pub(crate) fn quit(&mut self) -> Result<(), String> {
        self.answer_in(PORT_CMD, CMD_QUIT)?;
        match self.vcpu.run() {
            Ok(VcpuExit::Hlt) => Ok(()),
            other => Err(format!("expected the L2 to halt on quit, got {other:?}")),
        }
    }

    pub(crate) fn counts(&self) -> Result<Counts, String> {
        let vm = self.vm_stats.read()?;
        let vcpu = self.vcpu_stats.read()?;
        let opt = |name: &str| -> Result<Option<u64>, String> {
            match vm.get(name) {
                Some(&v) => Ok(Some(v)),
                None if !self.patched => Ok(None),
                None => Err(format!(
                    "VM stat {name} missing: this KVM lacks the series' change_pte stats"
                )),
            }
        };
        Ok(Counts {
            faults: stat(&vcpu, "pf_taken", "vCPU")?,
            updated: opt("change_pte_updated")?,
            zapped: opt("change_pte_zapped")?,
            pages_2m: stat(&vm, "pages_2m", "VM")?,
        })
    }

    /// A read pass: the L2 must have read `want[i]` from page i. Returns what it cost.
    pub(crate) fn read_pass(&mut self, what: &str, want: &[u32]) -> Result<Delta, String> {
        let before = self.counts()?;
        let got = self.read_words()?;
        let d = self.counts()?.since(&before);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            check(g == w, || {
                format!("{what}: the L2 read {g:#x} from page {i}, expected {w:#x}")
            })?;
        }
        Ok(d)
    }

    /// A read pass, unchecked: the word the L2 read from each page.
    pub(crate) fn read_words(&mut self) -> Result<Vec<u32>, String> {
        for i in 0..self.n {
            self.slot0
                .put(RESULTS + 4 * i, &(POISON | i as u32).to_le_bytes());
        }
        self.command(CMD_READ, 0)?;
        let got = self.slot0.bytes(RESULTS, 4 * self.n);
        Ok(got
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// A write pass: the L2 stores WRITE_BASE + i into page i; checked from the host side (in
    /// the guest_memfd for a guest_memfd slot).
    pub(crate) fn write_pass(&mut self, what: &str) -> Result<Delta, String> {
        let before = self.counts()?;
        self.command(CMD_WRITE, WRITE_BASE)?;
        let d = self.counts()?.since(&before);
        for i in 0..self.n {
            let (g, w) = (page_word(self.host_page(i)), WRITE_BASE + i as u32);
            check(g == w, || {
                format!("{what}: the host reads {g:#x} in page {i}, the L2 wrote {w:#x}")
            })?;
        }
        Ok(d)
    }

    /// Checks a step's counter deltas: `faults` NPT faults, `updated`/`zapped` change_pte stats
    /// (when the series' stats are there).
    pub(crate) fn expect(
        &self,
        what: &str,
        d: &Delta,
        faults: u64,
        updated: u64,
        zapped: u64,
    ) -> Result<(), String> {
        eq(&format!("{what}: NPT faults (pf_taken)"), d.faults, faults)?;
        if let Some(u) = d.updated {
            eq(&format!("{what}: change_pte_updated"), u, updated)?;
        }
        if let Some(z) = d.zapped {
            eq(&format!("{what}: change_pte_zapped"), z, zapped)?;
        }
        Ok(())
    }

    /// The stats fd agrees with debugfs (`/sys/kernel/debug/kvm/PID-VMFD/`): the ioctl and the
    /// parsing read the counters they claim to.
    pub(crate) fn cross_check(&self) -> Result<(), String> {
        let dir = format!(
            "/sys/kernel/debug/kvm/{}-{}",
            std::process::id(),
            self.vm.as_raw_fd()
        );
        let c = self.counts()?;
        let mut pairs = vec![("pf_taken", c.faults)];
        if let Some(u) = c.updated {
            pairs.push(("change_pte_updated", u));
        }
        for (name, v) in pairs {
            let p = format!("{dir}/{name}");
            let s = read_trimmed(&p)?;
            let d: u64 = s.parse().map_err(|e| format!("{p} {s:?}: {e}"))?;
            eq(&format!("{p} vs the stats fd"), d, v)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The cases.

#[derive(Clone, Copy)]
struct Mode {
    /// "tdp" or "shadow".
    mmu: &'static str,
    /// change_pte=Y.
    keep: bool,
    /// The series' parameter and stats are required.
    patched: bool,
}

impl Mode {
    fn name(&self) -> String {
        format!(
            "{} change_pte={}",
            self.mmu,
            if self.keep { "Y" } else { "N" }
        )
    }

    /// NPT faults to map `n` pages (slot 1 from its start) that are not mapped yet.
    ///
    /// The TDP MMU faults once per page. The shadow MMU, after a fault, prefetches the other
    /// unmapped SPTEs of the fault's aligned group of 8 (direct_pte_prefetch(), with A/D bits,
    /// which NPT has), through GUP-fast with FOLL_WRITE: only host pages mapped writable are
    /// prefetched (not KSM pages), and only runs that fit in the memslot (so a trailing partial
    /// group faults page by page).
    fn map_faults(&self, n: usize, host_writable: bool) -> u64 {
        if self.mmu == "tdp" || !host_writable {
            n as u64
        } else {
            (n / 8 + n % 8) as u64
        }
    }
}

/// What slot 1 holds.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// N identical pages (and the partner), THP off: KSM merges them into one KSM page.
    Identical,
    /// N pages of zeroes, THP off, `use_zero_pages`: KSM maps the shared zero page instead.
    Zero,
    /// 512 identical pages backed by one THP, mapped by KVM with one huge SPTE.
    Thp,
}

/// KVM's change_pte updates while KSM merges the THP-backed slot: none. KSM's first merge attempt
/// on a subpage splits the THP (split_huge_page() in try_to_merge_one_page()), and the split
/// unmaps the whole PMD through an unflagged invalidation, which zaps the huge SPTE: when the
/// write-protects and replacements follow, KVM has no SPTE left to update.
const THP_MERGE_UPDATED: u64 = 0;

/// Runs KSM until `done` holds; stops it (merged pages stay merged).
pub(crate) fn merge(
    what: &str,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<(u64, Duration), String> {
    let t0 = Instant::now();
    let scans = ksm::run_until(Duration::from_secs(60), &mut done).map_err(|e| {
        format!(
            "{what}: {e}: pages_shared {:?} pages_sharing {:?} ksm_zero_pages {:?}",
            ksm::read("pages_shared"),
            ksm::read("pages_sharing"),
            ksm::read("ksm_zero_pages")
        )
    })?;
    Ok((scans, t0.elapsed()))
}

/// A case's name, e.g. "tdp change_pte=Y zero pages N=256".
fn case_name(mode: Mode, kind: Kind, n: usize) -> String {
    match kind {
        Kind::Identical => format!("{} N={n}", mode.name()),
        Kind::Zero => format!("{} zero pages N={n}", mode.name()),
        Kind::Thp => format!("{} THP N={n}", mode.name()),
    }
}

/// Steps 1-5 for `n` pages of `kind`.
/// What one case measured: NPT faults per step and KVM's change_pte stats.
struct Row {
    first: u64,
    merged_reread: u64,
    cow_reread: u64,
    write: u64,
    updated: Option<u64>,
}

fn case(mode: Mode, kind: Kind, n: usize) -> Result<Row, String> {
    let t0 = Instant::now();
    let name = case_name(mode, kind, n);
    let w = |s: &str| format!("{name} {s}");
    let keep = mode.keep;
    let n64 = n as u64;
    ksm_reset(n + 1)?;
    if kind == Kind::Zero {
        ksm::write("use_zero_pages", "1")?;
    }
    // `mainline` on a KVM with the patches: change_pte=N is mainline's behaviour.
    if mode.patched || Path::new(PARAM_CHANGE_PTE).exists() {
        set_change_pte(keep)?;
    }
    let region = if kind == Kind::Thp {
        Region::huge()?
    } else {
        Region::small(n)?
    };
    check(region.n == n, || {
        w(&format!("region of {} pages", region.n))
    })?;
    let (content, word) = if kind == Kind::Zero {
        (vec![0u8; PAGE], 0)
    } else {
        (pattern(), pattern_word())
    };
    region.fill(&content);
    if kind == Kind::Thp {
        let kb = region.anon_huge_kb()?;
        eq(
            &w("populated: AnonHugePages (kB)"),
            kb,
            (HUGE / 1024) as u64,
        )?;
        // Keeps khugepaged from collapsing the pages again once KSM has split the THP and the
        // host-side COW has made them ordinary anon pages (a collapse would zap the SPTEs in the
        // middle of a step). Only the VMA's flags change: the THP stays mapped by its PMD.
        Mapping::view(region.guest, HUGE).madvise(libc::MADV_NOHUGEPAGE)?;
    }
    region.madvise(libc::MADV_MERGEABLE)?;
    let mut vm = Vm::new(&region, mode.patched)?;

    // 1-2. First touch, then a re-read that must not fault. A THP is mapped by one huge SPTE.
    let same = vec![word; n];
    let first = vm.read_pass(&w("first touch"), &same)?;
    let first_faults = if kind == Kind::Thp {
        1
    } else {
        mode.map_faults(n, true)
    };
    vm.expect(&w("first touch"), &first, first_faults, 0, 0)?;
    let huge = vm.counts()?.pages_2m;
    eq(
        &w("first touch: huge SPTEs (pages_2m)"),
        huge,
        u64::from(kind == Kind::Thp),
    )?;
    let reread = vm.read_pass(&w("re-read"), &same)?;
    vm.expect(&w("re-read"), &reread, 0, 0, 0)?;

    // 3. KSM merges.
    //
    // Identical pages: KSM scans in address order, puts the partner into its unstable tree,
    // finds guest page 0 identical: page 0 becomes the KSM page (write-protected in place: one
    // change_pte), the partner is replaced by it (no SPTE). Pages 1..n-1 each are write-protected,
    // then replaced by the KSM page: two change_pte. 2n - 1 SPTE updates, every SPTE present.
    // One KSM page (max_page_sharing is n + 3) shared by n + 1 mappings: pages_sharing n.
    //
    // Zero pages: every page is write-protected, then replaced by the zero page, which is no
    // KSM page: 2n updates (the partner has no SPTE), ksm_zero_pages n + 1 (the partner too),
    // pages_shared and pages_sharing 0.
    //
    // KVM counts an SPTE only when ->change_pte() changes it (one already read-only on the new
    // pfn is left alone, issue 25 item 7), and each of these calls does: the first touch mapped
    // every page writable (the host PTE was), so a write-protect turns a writable SPTE read-only
    // and a replace moves a read-only one to another pfn. Hence exactly 2n - 1 (2n), as before
    // that rule; so is the COW step's n below (read-only on the KSM or zero page -> the copy).
    let before = vm.counts()?;
    let (scans, merge_time) = if kind == Kind::Zero {
        merge(&w("merge"), || {
            Ok(ksm::read("ksm_zero_pages")? == n64 + 1
                && ksm::read("pages_shared")? == 0
                && ksm::read("pages_sharing")? == 0)
        })?
    } else {
        merge(&w("merge"), || {
            Ok(ksm::read("pages_shared")? == 1 && ksm::read("pages_sharing")? == n64)
        })?
    };
    let merged = vm.counts()?.since(&before);
    let pfns = region.pfns()?;
    check(pfns.iter().all(|&p| p == pfns[0]), || {
        w("merge: the partner and the guest pages do not all map one page")
    })?;
    let merge_updated = match kind {
        Kind::Identical => 2 * n64 - 1,
        Kind::Zero => 2 * n64,
        Kind::Thp => THP_MERGE_UPDATED,
    };
    vm.expect(
        &w("merge"),
        &merged,
        0,
        if keep { merge_updated } else { 0 },
        0,
    )?;
    if kind == Kind::Thp {
        eq(&w("merged: AnonHugePages (kB)"), region.anon_huge_kb()?, 0)?;
        eq(
            &w("merged: huge SPTEs (pages_2m)"),
            vm.counts()?.pages_2m,
            0,
        )?;
    }
    let mreread = vm.read_pass(&w("merged re-read"), &same)?;
    // The merged pages are read-only in the host: no shadow-MMU prefetch. The THP's huge SPTE
    // went with the split in either mode: its 512 pages fault in one by one.
    let mreread_faults = if keep && kind != Kind::Thp {
        0
    } else {
        mode.map_faults(n, false)
    };
    vm.expect(&w("merged re-read"), &mreread, mreread_faults, 0, 0)?;

    // 4. Host-side COW: the VMM writes a distinct word into every page. Each write copies the
    // KSM (or zero) page: change_pte points the SPTE at the copy (read-only), or the range is
    // zapped.
    let before = vm.counts()?;
    for i in 0..n {
        region.set_word(i, cow_word(i));
    }
    let cow = vm.counts()?.since(&before);
    let merged_pfn = pfns[0];
    let pfns = region.pfns()?;
    check(pfns[1..].iter().all(|&p| p != merged_pfn), || {
        w("host-side COW: a guest page still maps the merged page")
    })?;
    if kind == Kind::Zero {
        // Only the partner is left on the zero page.
        eq(
            &w("host-side COW: ksm_zero_pages"),
            ksm::read("ksm_zero_pages")?,
            1,
        )?;
    }
    vm.expect(&w("host-side COW"), &cow, 0, if keep { n64 } else { 0 }, 0)?;
    let cows: Vec<u32> = (0..n).map(cow_word).collect();
    let creread = vm.read_pass(&w("COW re-read"), &cows)?;
    vm.expect(
        &w("COW re-read"),
        &creread,
        if keep { 0 } else { mode.map_faults(n, true) },
        0,
        0,
    )?;

    // 5. The L2 writes every page. With change_pte the SPTEs of the copies are read-only: one
    // fault each makes them writable. Without, the COW re-read has just mapped the copies, which
    // the host maps writable, writable already (KVM maps a read fault writable when GUP-fast
    // with FOLL_WRITE succeeds): no fault.
    let write = vm.write_pass(&w("L2 write"))?;
    vm.expect(&w("L2 write"), &write, if keep { n64 } else { 0 }, 0, 0)?;
    vm.cross_check()?;
    vm.quit()?;
    drop(vm);
    if kind == Kind::Zero {
        ksm::write("use_zero_pages", "0")?;
    }

    let s = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
    println!(
        "kvm_ksm: {name}: first {}, reread {}, merged reread {}, cow reread {}, write {}, \
         updated {}+{}, zapped {}+{} ({scans} KSM scans, merge {:.1?}, case {:.1?})",
        first.faults,
        reread.faults,
        mreread.faults,
        creread.faults,
        write.faults,
        s(merged.updated),
        s(cow.updated),
        s(merged.zapped),
        s(cow.zapped),
        merge_time,
        t0.elapsed()
    );
    Ok(Row {
        first: first.faults,
        merged_reread: mreread.faults,
        cow_reread: creread.faults,
        write: write.faults,
        updated: merged.updated.zip(cow.updated).map(|(m, c)| m + c),
    })
}

pub fn kvm_ksm(args: &[String]) -> Result<(), String> {
    let mut full = false;
    let mut mainline = false;
    let mut demo = false;
    for a in args {
        match a.as_str() {
            "full" => full = true,
            "mainline" => mainline = true,
            "demo" => demo = true,
            _ => return Err(format!("unknown argument {a:?} (full, mainline, demo)")),
        }
    }
    run_restoring(|| {
        if demo {
            demo_table()
        } else {
            matrix(full, mainline)
        }
    })
}

/// `make run`'s KVM rows: one L2, TDP MMU, 1024 pages, change_pte=Y next to change_pte=N (what
/// mainline KVM does), as a table. The same assertions as the suite's cases.
fn demo_table() -> Result<(), String> {
    const N: usize = 1024;
    load_kvm(true)?;
    let mut rows = Vec::new();
    for keep in [true, false] {
        let mode = Mode {
            mmu: "tdp",
            keep,
            patched: true,
        };
        rows.push(case(mode, Kind::Identical, N)?);
    }
    let (y, n) = (&rows[0], &rows[1]);
    let u = |r: &Row| r.updated.map_or("-".to_string(), |v| v.to_string());
    println!("NPT faults of an L2 reading {N} pages (KVM TDP MMU on AMD NPT):");
    println!(
        "  {:<36} {:>14} {:>24}",
        "step", "change_pte=Y", "change_pte=N (mainline)"
    );
    for (step, a, b) in [
        ("first touch", y.first, n.first),
        (
            "re-read after KSM merged them",
            y.merged_reread,
            n.merged_reread,
        ),
        (
            "re-read after the VMM wrote them",
            y.cow_reread,
            n.cow_reread,
        ),
        ("L2 writes them", y.write, n.write),
    ] {
        println!("  {step:<36} {a:>14} {b:>24}");
    }
    println!(
        "  {:<36} {:>14} {:>24}",
        "SPTEs updated in place (KVM stats)",
        u(y),
        u(n)
    );
    Ok(())
}

fn matrix(full: bool, mainline: bool) -> Result<(), String> {
    // Proactive compaction could migrate slot 1's pages in the middle of a step: off while we
    // count.
    compaction_off()?;
    let t0 = Instant::now();
    // kvm.ko's parameters exist once it is loaded.
    load_kvm(true)?;
    if !mainline && !Path::new(PARAM_CHANGE_PTE).exists() {
        // A KVM without the series' KVM patches: say so, and show what it does where change_pte
        // mode expects no fault (one case, its fault counts only: it has no change_pte stats).
        println!(
            "kvm_ksm: {PARAM_CHANGE_PTE} missing: checking change_pte=Y's fault counts anyway"
        );
        let mode = Mode {
            mmu: "tdp",
            keep: true,
            patched: false,
        };
        let r = case(mode, Kind::Identical, 256);
        return Err(format!(
            "{PARAM_CHANGE_PTE} missing: this KVM lacks the series' change_pte patches \
             (`kvm_ksm mainline` tests mainline KVM's behaviour); {}",
            match r {
                Ok(_) => "yet it kept its SPTEs as change_pte=Y expects".to_string(),
                Err(e) => e,
            }
        ));
    }
    // A KTAP case per MMU, mode, kind and N; after a failure the rest are not run (KSM's and
    // KVM's state may be left behind).
    let modes: &[bool] = if mainline { &[false] } else { &[true, false] };
    let extra = |keep: bool| keep || full || mainline;
    let per_mmu: usize = modes.iter().map(|&k| 3 + 2 * usize::from(extra(k))).sum();
    ktap::start(Some(2 * per_mmu));
    ktap::stop_at_failure();
    for (mmu, tdp) in [("tdp", true), ("shadow", false)] {
        if !tdp && !ktap::failed() {
            load_kvm(tdp)?;
        }
        for &keep in modes {
            let mode = Mode {
                mmu,
                keep,
                patched: !mainline,
            };
            for n in [1, 256, 4096] {
                ktap::case(&case_name(mode, Kind::Identical, n), || {
                    case(mode, Kind::Identical, n).map(|_| ())
                });
            }
            // Zero pages and THP: change_pte=Y (the full matrix and `mainline` in N mode too).
            if extra(keep) {
                ktap::case(&case_name(mode, Kind::Zero, 256), || {
                    case(mode, Kind::Zero, 256).map(|_| ())
                });
                ktap::case(&case_name(mode, Kind::Thp, HUGE / PAGE), || {
                    case(mode, Kind::Thp, HUGE / PAGE).map(|_| ())
                });
            }
        }
    }
    println!("kvm_ksm: {:.1?} in all", t0.elapsed());
    ktap::finish()
}

// ---------------------------------------------------------------------------------------------
// `make bench`'s KVM section.

/// `make bench`'s KVM measurements (the TDP MMU), printed as `BENCH,` lines for
/// `scripts/bench-report`: for each N and both `kvm.change_pte` modes, the NPT faults and the wall
/// time of the L2's read pass over its N pages at first touch, after a KSM merge and after the
/// host broke copy-on-write on every page (`kvm,STEP,MODE,N,REP,FAULTS,US`); at N = 4096, the wall
/// time of the host's N COW-breaking writes and of one `MADV_DONTNEED` of the N pages
/// (`cb_cost,kvm_MODE,OP,N,REP,NS,OPS`), which `bench` measures for the other mirrors too. The
/// fault counts are asserted as in `kvm_ksm`: a benchmark of wrong behaviour is worthless.
pub fn bench(sizes: &[usize], reps: usize) -> Result<(), String> {
    let saved = Saved::take()?;
    let r = (|| {
        if Path::new(COMPACTION_PROACTIVENESS).exists() {
            fs::write(COMPACTION_PROACTIVENESS, "0")
                .map_err(|e| format!("{COMPACTION_PROACTIVENESS}=0: {e}"))?;
        }
        load_kvm(true)?;
        for &n in sizes {
            for rep in 0..reps {
                for keep in [true, false] {
                    let t0 = Instant::now();
                    bench_case(n, rep, keep)?;
                    eprintln!(
                        "bench: kvm N={n} change_pte={keep} rep {rep}: {:?}",
                        t0.elapsed()
                    );
                }
            }
        }
        Ok(())
    })();
    let cleanup = saved.restore().and(unload_kvm(true));
    r.and(cleanup)
}

/// KSM's cost when the pages it merges are a KVM guest's memory: for each N and repetition, an L2
/// reads its N pages (every page has an SPTE), then KSM merges them with the N pages and a
/// partner page (`bench::merge`, ksmd's CPU time: instructions under `-icount`), with
/// `kvm.change_pte=Y` (`kvm_change_pte`: SPTEs kept and updated, 2N-1 updates) and `=N`
/// (`kvm_zap`: zapped in the flagged starts, no updates), printed as `ksm_cost` records with
/// `calls` = KVM's change_pte updates + zaps over the merge. The update counts are asserted as in
/// `kvm_ksm`.
///
/// `label`, if not empty, goes into the mode names (`kvm_LABEL_change_pte`): `make bench`'s
/// `BENCH_KVM_BEFORE` boot measures another KVM (the series' KVM patches of an older commit,
/// built as modules against this kernel) under the label `before`, whose update counts are
/// printed instead of asserted.
pub(crate) fn ksm_cost(sizes: &[usize], reps: usize, label: &str) -> Result<(), String> {
    run_restoring(|| {
        compaction_off()?;
        load_kvm(true)?;
        for &n in sizes {
            for rep in 0..reps {
                for keep in [true, false] {
                    ksm_cost_case(n, rep, keep, label)?;
                }
            }
        }
        Ok(())
    })
}

fn ksm_cost_case(n: usize, rep: usize, keep: bool, label: &str) -> Result<(), String> {
    let name = format!(
        "kvm_{}{}",
        if label.is_empty() {
            String::new()
        } else {
            format!("{label}_")
        },
        if keep { "change_pte" } else { "zap" }
    );
    let what = format!("ksm_cost {name} N={n} rep {rep}");
    set_change_pte(keep)?;
    ksm_reset(n + 1)?;
    let region = Region::small(n)?;
    region.fill(&pattern());
    let mut vm = Vm::new(&region, true)?;
    vm.read_pass(&format!("{what}: first touch"), &vec![pattern_word(); n])?;
    let before = vm.counts()?;
    let c = crate::bench::merge(&region.map, n + 1)?;
    let d = vm.counts()?.since(&before);
    let (updated, zapped) = (d.updated.unwrap_or(0), d.zapped.unwrap_or(0));
    if label.is_empty() {
        eq(
            &format!("{what}: change_pte_updated"),
            updated,
            if keep { 2 * n as u64 - 1 } else { 0 },
        )?;
        eq(&format!("{what}: change_pte_zapped"), zapped, 0)?;
    } else {
        // Another KVM (BENCH_KVM_BEFORE) is measured as it behaves: its counts are reported,
        // not judged by this KVM's rules.
        println!("{what}: change_pte_updated {updated}, change_pte_zapped {zapped}");
    }
    println!(
        "BENCH,ksm_cost,{name},{n},{rep},{},{},{},{},{}",
        c.wall.as_micros(),
        c.ksmd_ns,
        c.full_scans,
        c.pages_scanned,
        updated + zapped
    );
    vm.quit()
}

fn bench_case(n: usize, rep: usize, keep: bool) -> Result<(), String> {
    let mode = Mode {
        mmu: "tdp",
        keep,
        patched: true,
    };
    let name = if keep { "change_pte" } else { "zap" };
    let w = |s: &str| format!("bench kvm {} N={n} {s}", mode.name());
    let n64 = n as u64;
    ksm_reset(n + 1)?;
    set_change_pte(keep)?;
    let region = Region::small(n)?;
    region.fill(&pattern());
    region.madvise(libc::MADV_MERGEABLE)?;
    let mut vm = Vm::new(&region, true)?;
    let same = vec![pattern_word(); n];
    let timed = |vm: &mut Vm, what: &str, want: &[u32]| -> Result<(Delta, u128), String> {
        let t0 = Instant::now();
        let d = vm.read_pass(&w(what), want)?;
        Ok((d, t0.elapsed().as_micros()))
    };

    let (d, us) = timed(&mut vm, "first touch", &same)?;
    vm.expect(&w("first touch"), &d, mode.map_faults(n, true), 0, 0)?;
    println!("BENCH,kvm,first,{name},{n},{rep},{},{us}", d.faults);

    merge(&w("merge"), || {
        Ok(ksm::read("pages_shared")? == 1 && ksm::read("pages_sharing")? == n64)
    })?;
    let (d, us) = timed(&mut vm, "merged re-read", &same)?;
    let faults = if keep { 0 } else { mode.map_faults(n, false) };
    vm.expect(&w("merged re-read"), &d, faults, 0, 0)?;
    println!("BENCH,kvm,merged_reread,{name},{n},{rep},{},{us}", d.faults);

    let t0 = Instant::now();
    for i in 0..n {
        region.set_word(i, cow_word(i));
    }
    let cow_ns = t0.elapsed().as_nanos();
    let cows: Vec<u32> = (0..n).map(cow_word).collect();
    let (d, us) = timed(&mut vm, "COW re-read", &cows)?;
    let faults = if keep { 0 } else { mode.map_faults(n, true) };
    vm.expect(&w("COW re-read"), &d, faults, 0, 0)?;
    println!("BENCH,kvm,cow_reread,{name},{n},{rep},{},{us}", d.faults);

    // Every SPTE is present again: one invalidation zaps them all.
    let t0 = Instant::now();
    region.madvise(libc::MADV_DONTNEED)?;
    let dontneed_ns = t0.elapsed().as_nanos();
    if n == BENCH_CB_N {
        println!("BENCH,cb_cost,kvm_{name},cow_break,{n},{rep},{cow_ns},{n}");
        println!("BENCH,cb_cost,kvm_{name},dontneed,{n},{rep},{dontneed_ns},1");
    }
    vm.quit()
}

/// The N at which `make bench` compares what each mirror adds to a COW break and a
/// `MADV_DONTNEED`.
pub const BENCH_CB_N: usize = 4096;
