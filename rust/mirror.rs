// SPDX-License-Identifier: GPL-2.0

//! The secondary MMU of one attachment: its page table, its fault path and its MMU notifier.
//!
//! # Protocol
//!
//! This follows KVM's (`virt/kvm/kvm_main.c`, `mmu_invalidate_*`):
//!
//! - [`invalidate_range_start`] takes the table lock, raises `in_progress`, widens the
//!   invalidated range, zaps the entries of the range and releases the lock. A range larger than
//!   [`ZAP_CHUNK`] is zapped a bounded number of slots per hold, the lock dropped in between
//!   (`in_progress` keeps faults out meanwhile). In `change_pte` mode an invalidation flagged
//!   [`Range::change_pte`] keeps its single entry: the matching [`change_pte`] call updates it
//!   in place.
//! - [`invalidate_range_end`] takes the lock, bumps `seq` and lowers `in_progress`.
//! - A fault samples `seq` under the lock, drops the lock, looks the pages up with
//!   [`gup::get_user_pages_fast`] (which may sleep and fault), allocates the tables it may need,
//!   then takes the lock again and installs the entries only if `seq` did not move and no
//!   invalidation in progress covers the pages. Otherwise it retries. The page references are
//!   dropped right after the entries are installed: the table holds none, so KSM can merge the
//!   pages. A fault covers a batch: the absent pages of one leaf table (up to 512), looked up by
//!   one call and installed under one acquisition of the lock.
//!
//! An installed entry therefore always maps the page the primary page table mapped at some point
//! after the last invalidation of its address ended, and every later change of that primary entry
//! goes through an invalidation that zaps it (or a `change_pte` that updates it) before the old
//! page can be freed. That is what makes the `unsafe` page accesses in [`Mirror::write`] and
//! [`Mirror::read`] sound.
//!
//! # Locking
//!
//! One lock, [`State::inner`], a spinlock (callbacks may not sleep: `change_pte` runs under the
//! primary page table lock, and OOM-reaper invalidations are non-blockable). Lock order:
//! `mmap_lock` / primary PTL (held by the core mm around callbacks) -> `State::inner`; the
//! registry of the global counters (`global::REGISTRY`, a mutex) -> `State::inner`. Nothing is
//! allocated and no user memory is touched with `inner` held; GUP and allocations happen between
//! the two lock sections of a fault. The attachment's counters live under `inner` too: every
//! callback takes it anyway, so counting costs it no atomic operation.
//!
//! [`invalidate_range_start`]: MmuNotifier::invalidate_range_start
//! [`invalidate_range_end`]: MmuNotifier::invalidate_range_end
//! [`change_pte`]: MmuNotifier::change_pte

use crate::{
    stats::{Counter, Counters},
    table::{leaf_end, Entry, NodeCache, Table},
    uapi,
};
use kernel::{
    mm::{
        gup::{self, UserPage},
        mmu_notifier::{MmuNotifier, Pte, Range},
        Mm,
    },
    new_spinlock,
    page::{PAGE_SHIFT, PAGE_SIZE},
    prelude::*,
    sync::{aref::ARef, Arc, SpinLock, SpinLockGuard},
    task::might_sleep,
    time::{delay::fsleep, Delta, Instant, Monotonic},
    warn_on,
};

/// The most one hold of the table's lock zaps: 16 MiB's worth of entries, 4096, about 0.3 ms
/// under TCG with the debug test kernel. An invalidation of a larger range (a `munmap` of a
/// 64 GiB attachment: 16.7 M entries) zaps it a chunk at a time, dropping the lock in between
/// (see `Mirror::zap`); `release` swaps the whole table out instead.
///
/// The lock is dropped between chunks; where the kernel preempts (full or lazy preemption) the
/// unlock is the preemption point, and the `might_sleep()` of a blockable range reschedules on
/// a kernel with voluntary preemption. The crate has no `cond_resched()` binding, which a kernel
/// without preemption would need here.
const ZAP_CHUNK: usize = 16 << 20;

/// Invalidation mode of an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Keep entries of flagged invalidations and update them in `change_pte`.
    ChangePte,
    /// Zap every invalidated entry: `change_pte` finds nothing (mainline since 2012).
    Zap,
}

impl Mode {
    pub(crate) fn from_abi(mode: u32) -> Result<Self> {
        match mode {
            uapi::MODE_CHANGE_PTE => Ok(Self::ChangePte),
            uapi::MODE_ZAP => Ok(Self::Zap),
            _ => Err(EINVAL),
        }
    }

    pub(crate) fn to_abi(self) -> u32 {
        match self {
            Self::ChangePte => uapi::MODE_CHANGE_PTE,
            Self::Zap => uapi::MODE_ZAP,
        }
    }
}

/// State protected by [`State::inner`].
struct Inner {
    table: Table,
    /// The attachment's counters; the gauges are kept equal to the table's size.
    counters: Counters,
    /// Bumped by every `invalidate_range_end` (KVM's `mmu_invalidate_seq`).
    seq: u64,
    /// Invalidations between start and end (KVM's `mmu_invalidate_in_progress`).
    in_progress: u64,
    /// Union of the ranges of the invalidations in progress, valid while `in_progress > 0`.
    inv_start: usize,
    inv_end: usize,
    /// Set by `release`: the address space is gone, nothing may be mapped any more.
    dead: bool,
    /// Set by [`Mirror::detaching`]: the coming `release` comes from unregistration, not exit.
    detaching: bool,
    /// An empty table, allocated with the attachment, that `release` swaps in for `table` so
    /// that it neither allocates (it runs in the exit path) nor frees tables under the lock.
    spare: Option<Table>,
}

impl Inner {
    /// Whether a fault that sampled `seq` must retry instead of installing `[start, end)`
    /// (KVM's `mmu_invalidate_retry_gfn`).
    fn must_retry(&self, seq: u64, start: usize, end: usize) -> bool {
        if cfg!(shadowpt_break = "no_seq_check") {
            return false;
        }
        (self.in_progress > 0 && start < self.inv_end && end > self.inv_start) || self.seq != seq
    }
}

/// The table and counters of one attachment behind their lock: shared by its [`Mirror`], its
/// debugfs directory and the registry of the global counters, which read the counters.
#[pin_data]
pub(crate) struct State {
    #[pin]
    inner: SpinLock<Inner>,
}

impl State {
    /// An empty table, every counter at 0.
    pub(crate) fn new() -> Result<Arc<Self>> {
        let table = Table::new()?;
        let spare = Some(Table::new()?);
        let mut counters = Counters::new();
        counters.set(Counter::present, table.present());
        counters.set(Counter::table_pages, table.pages());
        Arc::pin_init(
            pin_init!(Self {
                inner <- new_spinlock!(
                    Inner {
                        table,
                        counters,
                        seq: 0,
                        in_progress: 0,
                        inv_start: 0,
                        inv_end: 0,
                        dead: false,
                        detaching: false,
                        spare,
                    },
                    "shadowpt::State::inner"
                ),
            }),
            GFP_KERNEL,
        )
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> Counters {
        self.inner.lock().counters
    }
}

impl crate::stats::Source for State {
    fn counter(&self, c: Counter) -> u64 {
        self.counters().get(c)
    }
}

/// What a task faulting pages in reuses from one fault to the next: tables allocated ahead of
/// the lock and the buffer of the page lookup.
pub(crate) struct FaultContext {
    cache: NodeCache,
    pages: KVec<ARef<UserPage>>,
}

impl FaultContext {
    pub(crate) fn new() -> Self {
        Self {
            cache: NodeCache::new(),
            pages: KVec::new(),
        }
    }
}

/// Why [`Mirror::populate`] stopped, and where.
pub(crate) struct FaultError {
    /// The page that could not be mapped.
    pub(crate) addr: usize,
    pub(crate) err: Error,
}

impl FaultError {
    fn at(addr: usize, err: Error) -> Self {
        Self { addr, err }
    }
}

/// The secondary MMU of one attachment; the data of its MMU notifier registration.
///
/// # Invariants
///
/// Every present entry of `inner.table` maps a page frame that the attached address space
/// mapped at the same address after the last invalidation of that address ended, and that is
/// not freed before the entry is gone or moved: the core mm frees the page only after the
/// `invalidate_range_start` that zaps the entry, or (for a range flagged `change_pte`, in
/// `change_pte` mode, where the entry is kept through the start) after the `change_pte` that
/// moves it; both take `inner`. The primary PTE itself may be cleared without `inner` (KSM and
/// copy-on-write clear it before `change_pte`), so "present" does not mean "mapped right now".
/// A writable entry is only created by a write fault, which marked its page dirty, and is never
/// kept through a flagged start without `change_pte` making it read-only or zapping it.
#[pin_data(PinnedDrop)]
pub(crate) struct Mirror {
    start: usize,
    end: usize,
    mode: Mode,
    /// Most tables the table may use (0: no limit), from the `max_table_pages` parameter.
    max_pages: u64,
    /// Whether the callbacks time themselves into the `_ns` counters (`time_callbacks`).
    timed: bool,
    state: Arc<State>,
}

#[pinned_drop]
impl PinnedDrop for Mirror {
    fn drop(self: Pin<&mut Self>) {
        // `release` emptied the table; what is left of it goes with us, out of the global
        // gauges (the state outlives us in the debugfs directory and the registry).
        let mut inner = self.lock();
        inner.counters.set(Counter::present, 0);
        inner.counters.set(Counter::table_pages, 0);
    }
}

/// Result of a snapshot of one page.
type PageState = u8;

impl Mirror {
    /// A mirror of `[start, end)` keeping its table and counters in `state`.
    pub(crate) fn new(
        start: usize,
        end: usize,
        mode: Mode,
        state: Arc<State>,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            start,
            end,
            mode,
            max_pages: crate::module_parameters::max_table_pages.value(),
            timed: crate::module_parameters::time_callbacks.value() != 0,
            state,
        }? Error)
    }

    /// Locks the table and counters.
    #[inline]
    fn lock(&self) -> SpinLockGuard<'_, Inner> {
        self.state.inner.lock()
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> Counters {
        self.lock().counters
    }

    /// Checks that `[addr, addr + len)` is inside the attachment.
    ///
    /// # Errors
    ///
    /// `EOVERFLOW` if the end overflows, `ERANGE` if the range leaves the attachment.
    pub(crate) fn check_range(&self, addr: usize, len: usize) -> Result<usize> {
        let end = addr.checked_add(len).ok_or(EOVERFLOW)?;
        if addr < self.start || end > self.end {
            return Err(ERANGE);
        }
        Ok(end)
    }

    /// Brings the gauges up to date with the table. Called with `inner` held, after every
    /// change of the table.
    fn update_gauges(inner: &mut Inner) {
        let (present, pages) = (inner.table.present(), inner.table.pages());
        inner.counters.set(Counter::present, present);
        inner.counters.set(Counter::table_pages, pages);
    }

    /// Makes sure the table maps every page of `[start, end)` (page aligned, inside the
    /// attachment), writable if `write`, and adds the entries it created or upgraded to
    /// `faults`.
    ///
    /// Must be called by a task of the mirrored address space. May sleep. Works in batches: the
    /// run of pages the table lacks in one leaf table is looked up with one call and installed
    /// under one acquisition of the lock. (`change_pte` never makes an entry writable, so a
    /// write fault always installs its own entry, even when the write broke copy-on-write and
    /// `change_pte` moved the old entry to the new page.)
    ///
    /// Holds no page reference when it returns, whatever it returns: the lookup's references go
    /// once their entries are installed, or at the error that stopped the batch.
    ///
    /// # Errors
    ///
    /// The first page that could not be mapped and why: `EFAULT` if the process cannot access
    /// it that way (the caller refines it), `ENOMEM` (also when `max_table_pages` is reached),
    /// `EINTR` on a pending signal while retrying, `ENXIO` once the address space is gone. The
    /// pages before it are mapped.
    pub(crate) fn populate(
        &self,
        start: usize,
        end: usize,
        write: bool,
        ctx: &mut FaultContext,
        faults: &mut u64,
    ) -> core::result::Result<(), FaultError> {
        let r = self.populate_batches(start, end, write, ctx, faults);
        // Up to a batch (512 pages) of references is still held if a step after the lookup
        // failed (tables, the `max_table_pages` cap, ENXIO): drop them here, after the lock,
        // rather than keep them, and the pages unmovable, while the caller goes on (a READ
        // copies on after a failed fault-ahead).
        ctx.pages.clear();
        r
    }

    /// [`Mirror::populate`]'s batches; may return with references left in `ctx.pages`.
    fn populate_batches(
        &self,
        start: usize,
        end: usize,
        write: bool,
        ctx: &mut FaultContext,
        faults: &mut u64,
    ) -> core::result::Result<(), FaultError> {
        let satisfied = |entry: Entry| entry.present() && (!write || entry.writable());
        let flags = if write {
            gup::Flag::Write.into()
        } else {
            gup::Flags::empty()
        };
        let mut addr = start;
        while addr < end {
            let span_end = leaf_end(addr, end);
            // The run to fault: from the first page of this leaf table the table lacks to the
            // next one it has.
            let (first, stop, seq) = {
                let inner = self.lock();
                if inner.dead {
                    return Err(FaultError::at(addr, ENXIO));
                }
                let first = inner.table.first_failing(addr, span_end, satisfied);
                if first >= span_end {
                    addr = span_end;
                    continue;
                }
                let stop = inner
                    .table
                    .first_failing(first, span_end, |e| !satisfied(e));
                (first, stop, inner.seq)
            };
            let pages = &mut ctx.pages;
            pages.clear();
            let got = gup::get_user_pages_fast(first, (stop - first) >> PAGE_SHIFT, flags, pages)
                .map_err(|e| FaultError::at(first, e))?;
            let batch_end = first + (got << PAGE_SHIFT);
            ctx.cache.top_up().map_err(|e| FaultError::at(first, e))?;

            let mut inner = self.lock();
            if inner.dead {
                return Err(FaultError::at(first, ENXIO));
            }
            if inner.must_retry(seq, first, batch_end) {
                inner.counters.inc(Counter::fault_retries);
                drop(inner);
                pages.clear();
                if kernel::current!().signal_pending() {
                    return Err(FaultError::at(first, EINTR));
                }
                // Let the invalidation finish (the guest kernel may not be preemptible), then
                // look again at what is missing: another thread's fault may have installed the
                // entries meanwhile (a read is also satisfied by an entry `change_pte` moved).
                fsleep(Delta::from_micros(20));
                addr = first;
                continue;
            }
            // The run lies in one leaf table: only its first installation can add tables.
            if self.max_pages != 0
                && inner.table.pages() + inner.table.missing_tables(first) > self.max_pages
            {
                // Empty tables left by invalidations count too: free them first.
                inner.table.prune();
                if inner.table.pages() + inner.table.missing_tables(first) > self.max_pages {
                    Self::update_gauges(&mut inner);
                    return Err(FaultError::at(first, ENOMEM));
                }
            }
            let mut installed = 0;
            for (i, page) in pages.iter().enumerate() {
                let page_addr = first + (i << PAGE_SHIFT);
                if satisfied(inner.table.lookup(page_addr)) {
                    continue;
                }
                // A writable entry is only ever created here, and the page is marked dirty
                // with it (below): writes through the table never touch the primary PTE's
                // dirty bit, so this is how the core mm learns that the page holds data. The
                // core mm cleans a page (`MADV_FREE`, writeback) only inside an invalidation,
                // which zaps the entry first: while the entry exists, the page stays dirty
                // (KVM's `kvm_release_faultin_page()`).
                let entry = Entry::new(page.pfn(), page.is_zero_page(), write, true, write);
                inner
                    .table
                    .install(page_addr, entry, &mut ctx.cache)
                    .map_err(|e| FaultError::at(page_addr, e))?;
                if write && !cfg!(shadowpt_break = "no_dirty") {
                    // SAFETY: `must_retry()` is false with `inner` held: no invalidation of
                    // `[first, batch_end)` has begun since `seq` was sampled, before the lookup,
                    // and none can get past its `invalidate_range_start` (which takes `inner`)
                    // to change the primary PTEs before we unlock; `release`, after which the
                    // exit unmaps without invalidations, has not run (`dead` is false, checked
                    // under this `inner`). So the primary page table still maps `page` at
                    // `page_addr`.
                    unsafe { page.mark_dirty() };
                }
                installed += 1;
            }
            Self::update_gauges(&mut inner);
            inner.counters.add(Counter::faults, installed);
            drop(inner);
            // The table holds no page reference: from here on the notifier keeps it coherent.
            pages.clear();
            *faults += installed;
            addr = batch_end;
        }
        Ok(())
    }

    /// [`Mirror::populate`] for the one page at `addr`: returns whether an entry was created or
    /// upgraded.
    pub(crate) fn fault(&self, addr: usize, write: bool, ctx: &mut FaultContext) -> Result<bool> {
        let mut faults = 0;
        self.populate(addr, addr + PAGE_SIZE, write, ctx, &mut faults)
            .map_err(|e| e.err)?;
        Ok(faults > 0)
    }

    /// Copies the bytes at `addr` out of the attachment through the table into `buf`
    /// (`addr..addr + buf.len()` must lie in one page and inside the attachment), faulting the
    /// entry in first if it is absent. Returns the number of faults taken.
    ///
    /// The copy is to kernel memory, under `inner`, which keeps the frame from being freed for
    /// the copy: no page reference is taken, and none is held when the caller then copies `buf`
    /// to user space, which may block for as long as the destination takes to resolve (a
    /// userfaultfd or FUSE-backed buffer) without keeping a mirrored page from migrating.
    pub(crate) fn read(&self, addr: usize, buf: &mut [u8], ctx: &mut FaultContext) -> Result<u64> {
        let page_addr = addr & !(PAGE_SIZE - 1);
        let offset = addr - page_addr;
        let mut faults = 0;
        loop {
            {
                let mut inner = self.lock();
                if inner.dead {
                    return Err(ENXIO);
                }
                let entry = inner.table.lookup(page_addr);
                if entry.present() {
                    // SAFETY: The entry is present and `inner` is held: by the type invariant
                    // its frame stays allocated to the process's mapping until an invalidation
                    // zaps the entry or a `change_pte` moves it, and both need `inner`, which we
                    // hold for the whole copy.
                    unsafe { gup::copy_from_pfn(entry.pfn(), offset, buf)? };
                    inner.table.update(page_addr, |e| e.touched(false));
                    return Ok(faults);
                }
            }
            if self.fault(page_addr, false, ctx)? {
                faults += 1;
            }
        }
    }

    /// Copies `buf` into the attachment at `addr` through the table (`addr..addr + buf.len()`
    /// must lie in one page and inside the attachment). An absent or read-only entry is faulted
    /// in writable first. Returns the number of faults taken.
    pub(crate) fn write(&self, addr: usize, buf: &[u8], ctx: &mut FaultContext) -> Result<u64> {
        let page_addr = addr & !(PAGE_SIZE - 1);
        let offset = addr - page_addr;
        let mut faults = 0;
        loop {
            {
                let mut inner = self.lock();
                if inner.dead {
                    return Err(ENXIO);
                }
                let entry = inner.table.lookup(page_addr);
                if entry.present() && entry.writable() {
                    // SAFETY: The entry is present and writable and `inner` is held. The frame
                    // can only be freed after an invalidation of the address zapped the entry in
                    // `invalidate_range_start` or a `change_pte` moved it, and both need
                    // `inner`; a writable entry is never kept through a flagged range's start
                    // without `change_pte` making it read-only first. So the frame stays the
                    // process's page, writable by it and marked dirty (see `populate`), for the
                    // whole copy.
                    unsafe { gup::copy_to_pfn(entry.pfn(), offset, buf)? };
                    inner.table.update(page_addr, |e| e.touched(true));
                    return Ok(faults);
                }
            }
            if self.fault(page_addr, true, ctx)? {
                faults += 1;
            }
        }
    }

    /// The snapshot state of the page at `addr` (page aligned, inside the attachment): the entry's
    /// bits, and whether it maps the page the primary page table maps now, looked up without
    /// faulting. Both are sampled in the same invalidation epoch (retrying like a fault), so the
    /// answer is consistent even while the range changes.
    pub(crate) fn snapshot(&self, addr: usize) -> Result<PageState> {
        loop {
            let seq = self.lock().seq;
            let primary = gup::get_user_page_fast(addr, gup::Flag::NoFault.into()).ok();
            let inner = self.lock();
            if inner.must_retry(seq, addr, addr + PAGE_SIZE) {
                drop(inner);
                drop(primary);
                if kernel::current!().signal_pending() {
                    return Err(EINTR);
                }
                fsleep(Delta::from_micros(20));
                continue;
            }
            let entry = inner.table.lookup(addr);
            drop(inner);
            let mut state = 0;
            if entry.present() {
                state |= uapi::PAGE_PRESENT;
                if entry.writable() {
                    state |= uapi::PAGE_WRITABLE;
                }
                if entry.accessed() {
                    state |= uapi::PAGE_ACCESSED;
                }
                if entry.dirty() {
                    state |= uapi::PAGE_DIRTY;
                }
                if entry.zero() {
                    state |= uapi::PAGE_ZERO;
                }
            }
            if let Some(page) = primary {
                state |= uapi::PAGE_PRIMARY;
                if entry.present() && page.pfn() == entry.pfn() {
                    state |= uapi::PAGE_PFN_MATCH;
                }
            }
            return Ok(state);
        }
    }

    /// Announces that the registration is about to be dropped (detach or close), so that the
    /// `release` it triggers is not counted as an exit.
    pub(crate) fn detaching(&self) {
        self.lock().detaching = true;
    }

    /// The start time of a callback if callbacks are timed (`time_callbacks`), else `None`:
    /// the two clock reads are most of a callback's fixed cost.
    fn clock(&self) -> Option<Instant<Monotonic>> {
        self.timed.then(Instant::<Monotonic>::now)
    }

    /// Whether `[start, end)` intersects the attachment.
    #[inline]
    fn overlaps(&self, start: usize, end: usize) -> bool {
        start < self.end && end > self.start
    }

    /// Zaps `[start, end)` clipped to the attachment, `inner` being locked, and returns the lock
    /// held again. A range larger than [`ZAP_CHUNK`] is zapped at most a chunk's worth of
    /// entries (4096) and the rest of a leaf table per hold ([`Table::zap_some`]): the lock is
    /// dropped in between (with a scheduling point if `may_sleep`), each hold that zapped is
    /// counted in `zap_chunks` and every hold is timed into `zap_hold_max_ns`. Empty stretches
    /// cost nothing: a sparse range is zapped in one hold. The caller counted its invalidation in `in_progress`
    /// before: while the lock is dropped no fault installs in the range ([`Inner::must_retry`]),
    /// and entries not zapped yet are still mapped by the primary, which changes its page
    /// tables only after `invalidate_range_start` returns.
    fn zap<'a>(
        &'a self,
        mut inner: SpinLockGuard<'a, Inner>,
        start: usize,
        end: usize,
        may_sleep: bool,
    ) -> SpinLockGuard<'a, Inner> {
        let (start, end) = (start.max(self.start), end.min(self.end));
        if end.saturating_sub(start) <= ZAP_CHUNK {
            self.zap_locked(&mut inner, start, end);
            return inner;
        }
        // The hold started before this call: its time is not known, and it did nothing long.
        let mut held = Instant::<Monotonic>::now();
        let mut addr = start;
        loop {
            let (zapped, next) = inner.table.zap_some(addr, end, ZAP_CHUNK >> PAGE_SHIFT);
            inner.counters.add(Counter::zapped, zapped.entries);
            Self::update_gauges(&mut inner);
            if zapped.entries > 0 {
                inner.counters.inc(Counter::zap_chunks);
            }
            let ns = u64::try_from(held.elapsed().as_nanos()).unwrap_or(0);
            inner.counters.raise_max(Counter::zap_hold_max_ns, ns);
            if next >= end {
                return inner;
            }
            drop(inner);
            if may_sleep {
                might_sleep();
            }
            inner = self.lock();
            held = Instant::<Monotonic>::now();
            addr = next;
        }
    }

    /// Zaps `[start, end)` clipped to the attachment in one hold of `inner` and counts the
    /// entries removed.
    fn zap_locked(&self, inner: &mut Inner, start: usize, end: usize) {
        let start = start.max(self.start);
        let end = end.min(self.end);
        if start >= end {
            return;
        }
        let zapped = inner.table.zap(start, end).entries;
        inner.counters.add(Counter::zapped, zapped);
        Self::update_gauges(inner);
    }
}

#[vtable]
impl MmuNotifier for Mirror {
    fn release(&self, _mm: &Mm) {
        let mut inner = self.lock();
        let held = Instant::<Monotonic>::now();
        // May run twice (exit, then unregistration): count the exit only.
        if !inner.dead && !inner.detaching {
            inner.counters.inc(Counter::releases);
        }
        inner.dead = true;
        // Nothing will be mapped any more: the whole table goes, swapped for the spare empty one
        // and freed after unlocking, so that the hold does not grow with the attachment. The
        // second call finds the table empty and the spare gone, and does nothing.
        if cfg!(shadowpt_break = "release_whole") {
            // The broken build: every entry zapped, and the tables freed, in this one hold.
            self.zap_locked(&mut inner, self.start, self.end);
            inner.table.prune();
        }
        let old = match inner.spare.take() {
            Some(empty) => {
                let old = core::mem::replace(&mut inner.table, empty);
                inner.counters.add(Counter::zapped, old.present());
                Some(old)
            }
            None => None,
        };
        Self::update_gauges(&mut inner);
        // This hold counts in the longest (not in `zap_chunks`: it zapped nothing in place).
        let ns = u64::try_from(held.elapsed().as_nanos()).unwrap_or(0);
        inner.counters.raise_max(Counter::zap_hold_max_ns, ns);
        drop(inner);
        drop(old);
    }

    fn invalidate_range_start(&self, range: &Range) -> Result {
        let (start, end) = (range.start(), range.end());
        // Like KVM with memslots: ranges that miss the attachment are not ours to track.
        if !self.overlaps(start, end) {
            return Ok(());
        }
        // A flagged range covers one base page whose entry `change_pte` will update: keep it.
        let keep = self.mode == Mode::ChangePte
            && range.change_pte()
            && end - start == PAGE_SIZE
            && !cfg!(shadowpt_break = "ignore_flag");
        let t0 = self.clock();
        let mut inner = self.lock();
        inner.in_progress = inner.in_progress.saturating_add(1);
        if inner.in_progress == 1 {
            inner.inv_start = start;
            inner.inv_end = end;
        } else {
            inner.inv_start = inner.inv_start.min(start);
            inner.inv_end = inner.inv_end.max(end);
        }
        if !(keep || cfg!(shadowpt_break = "no_zap")) {
            inner = self.zap(inner, start, end, range.blockable());
        }
        inner.counters.inc(Counter::invalidate_start);
        if !range.blockable() {
            inner.counters.inc(Counter::invalidate_nonblock);
        }
        if let Some(ns) = nanos(t0) {
            inner.counters.add(Counter::invalidate_ns, ns);
        }
        Ok(())
    }

    fn invalidate_range_end(&self, range: &Range) {
        // Same test as in `invalidate_range_start`, on the same range: starts and ends pair up.
        if !self.overlaps(range.start(), range.end()) {
            return;
        }
        let mut inner = self.lock();
        inner.seq = inner.seq.wrapping_add(1);
        // Starts and ends pair up (same overlap test on the same range); an end without its
        // start would be a core mm bug. Warn, and do not panic under the PTE lock.
        match inner.in_progress.checked_sub(1) {
            Some(n) => inner.in_progress = n,
            None => {
                warn_on!(true);
            }
        }
        inner.counters.inc(Counter::invalidate_end);
    }

    fn change_pte(&self, _mm: &Mm, address: usize, pte: Pte) {
        if address < self.start || address >= self.end {
            return;
        }
        let t0 = self.clock();
        // Each accessor of `pte` decodes it anew: the two every call needs are decoded once,
        // outside the lock; the zero page test below reuses the pfn.
        let (present, pfn) = (pte.present(), pte.pfn());
        let mut inner = self.lock();
        inner.counters.inc(Counter::change_pte);
        // The contract: always inside a flagged invalidation of this address.
        warn_on!(!(inner.in_progress > 0 && address >= inner.inv_start && address < inner.inv_end));
        let mut counter = Counter::change_pte_updated;
        // One walk: `update` hands the old entry over and stores what we return.
        let old = inner.table.update(address, |old| {
            if !present || (old.writable() && pfn != old.pfn()) {
                // A writable entry must never move to a new page: its writes would be lost.
                counter = Counter::change_pte_illegal;
                return Entry::NONE;
            }
            // The broken build skips the moves to a new page (and counts them as updates), as
            // if it could not handle them.
            if cfg!(shadowpt_break = "skip_update") && pfn != old.pfn() {
                return old;
            }
            let zero = Pte::is_zero_pfn(pfn);
            // Dirty is carried over; the zero page is never dirty through us.
            let dirty = !zero && ((old.dirty() && old.pfn() == pfn) || pte.dirty());
            // Read-only, whatever `pte` allows (KVM's policy before 6.10, and the contract's):
            // a writable entry must come with the page marked dirty, which only the fault path
            // does, holding a reference on the page. A later write through the table faults and
            // upgrades the entry. Update or zap: never leave the kept entry as it was.
            let writable = cfg!(shadowpt_break = "writable_install") && pte.writable();
            Entry::new(pfn, zero, writable, old.accessed(), dirty)
        });
        if !old.present() {
            counter = Counter::change_pte_absent;
        } else if matches!(counter, Counter::change_pte_illegal) {
            // The entry was zapped: the table shrank.
            Self::update_gauges(&mut inner);
        }
        inner.counters.inc(counter);
        if let Some(ns) = nanos(t0) {
            inner.counters.add(Counter::change_pte_ns, ns);
        }
    }

    fn clear_flush_young(&self, _mm: &Mm, start: usize, end: usize) -> bool {
        self.clear_young(_mm, start, end)
    }

    fn clear_young(&self, _mm: &Mm, start: usize, end: usize) -> bool {
        let (start, end) = (start.max(self.start), end.min(self.end));
        if start >= end {
            return false;
        }
        let mut inner = self.lock();
        inner.counters.inc(Counter::young);
        let mut young = false;
        inner.table.for_each_present(start, end, |e| {
            young |= e.accessed();
            e.old()
        });
        young
    }

    fn test_young(&self, _mm: &Mm, address: usize) -> bool {
        if address < self.start || address >= self.end {
            return false;
        }
        let mut inner = self.lock();
        inner.counters.inc(Counter::young);
        inner.table.lookup(address & !(PAGE_SIZE - 1)).accessed()
    }
}

/// Nanoseconds since `t0`, or `None` for an untimed call.
#[inline]
fn nanos(t0: Option<Instant<Monotonic>>) -> Option<u64> {
    t0.map(|t0| u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0))
}

/// Pages of `len` bytes (rounded down).
pub(crate) fn pages(len: usize) -> usize {
    len >> PAGE_SHIFT
}
