// SPDX-License-Identifier: GPL-2.0

//! The secondary page table: a four-level radix tree of 512-entry tables, like x86-64's.
//!
//! Level 3 (the root) is indexed by address bits 47..39, level 0 (the leaves) by bits 20..12.
//! A leaf entry holds a page frame number and the present, writable, accessed and dirty bits;
//! it holds no reference on the page (the MMU notifier keeps it coherent instead).
//!
//! Every table is allocated by the caller *before* it takes the lock protecting the tree (see
//! [`NodeCache`]). Each table counts the present entries below it, and walks only descend into
//! tables that have some, so an invalidation costs in proportion to the present entries in its
//! range, not to the size of the range. Invalidations clear entries but leave the tables in
//! place, as KVM's TDP MMU does (`tdp_mmu_zap_leafs()`): freeing them inside an MMU notifier
//! callback would make the core mm pay for them, and the next fault in the same region reuses
//! them. [`Table::prune`] frees the empty ones; the owner calls it where it may take its time.

use kernel::{page::PAGE_SHIFT, prelude::*};

/// Entries per table.
pub(crate) const FANOUT: usize = 512;
/// Address bits translated by one level.
const LEVEL_BITS: usize = 9;
/// Number of levels; the root is level `LEVELS - 1`.
pub(crate) const LEVELS: usize = 4;
/// Bytes mapped by one leaf table (2 MiB).
const LEAF_SPAN: usize = 1 << (PAGE_SHIFT + LEVEL_BITS);

/// The end of the span of the leaf table that maps `addr`, or `end` if that comes first.
pub(crate) fn leaf_end(addr: usize, end: usize) -> usize {
    core::cmp::min(end, (addr | (LEAF_SPAN - 1)).saturating_add(1))
}
/// First address the table cannot map (48-bit user address space).
pub(crate) const ADDRESS_LIMIT: usize = 1 << (PAGE_SHIFT + LEVEL_BITS * LEVELS);

/// A leaf entry: `pfn << PAGE_SHIFT | flags`; zero when absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry(u64);

impl Entry {
    const PRESENT: u64 = 1 << 0;
    const WRITABLE: u64 = 1 << 1;
    const ACCESSED: u64 = 1 << 2;
    const DIRTY: u64 = 1 << 3;
    const ZERO: u64 = 1 << 4;

    /// The absent entry.
    pub(crate) const NONE: Entry = Entry(0);

    /// A present entry mapping `pfn`, which is the shared zero page if `zero`.
    pub(crate) fn new(pfn: usize, zero: bool, writable: bool, accessed: bool, dirty: bool) -> Self {
        let mut bits = ((pfn as u64) << PAGE_SHIFT) | Self::PRESENT;
        if zero {
            bits |= Self::ZERO;
        }
        if writable {
            bits |= Self::WRITABLE;
        }
        if accessed {
            bits |= Self::ACCESSED;
        }
        if dirty {
            bits |= Self::DIRTY;
        }
        Entry(bits)
    }

    pub(crate) fn present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }

    pub(crate) fn writable(self) -> bool {
        self.0 & Self::WRITABLE != 0
    }

    pub(crate) fn accessed(self) -> bool {
        self.0 & Self::ACCESSED != 0
    }

    pub(crate) fn dirty(self) -> bool {
        self.0 & Self::DIRTY != 0
    }

    /// Whether the entry maps the shared zero page.
    pub(crate) fn zero(self) -> bool {
        self.0 & Self::ZERO != 0
    }

    pub(crate) fn pfn(self) -> usize {
        (self.0 >> PAGE_SHIFT) as usize
    }

    /// The same entry with the accessed bit set, and the dirty bit too if `write`.
    pub(crate) fn touched(self, write: bool) -> Self {
        let mut bits = self.0 | Self::ACCESSED;
        if write {
            bits |= Self::DIRTY;
        }
        Entry(bits)
    }

    /// The same entry with the accessed bit cleared.
    pub(crate) fn old(self) -> Self {
        Entry(self.0 & !Self::ACCESSED)
    }
}

/// Slots of an interior table.
type DirSlots = [Option<KBox<Node>>; FANOUT];
/// Slots of a leaf table: raw [`Entry`] values, so that a zeroed allocation is all absent.
type LeafSlots = [u64; FANOUT];

/// The 512 slots of one table.
enum Slots {
    Dir(KBox<DirSlots>),
    Leaf(KBox<LeafSlots>),
}

/// One table of the tree, with the number of its populated slots and of the present entries
/// below it.
///
/// # Invariants
///
/// `count` is the number of `Some` slots of a `Dir`, or of present entries of a `Leaf`;
/// `present` is the number of present leaf entries in this table's subtree (`count` for a
/// leaf). A child table may be empty (`present == 0`) until [`Table::prune`] frees it. In a
/// `Dir`, bit `i` of `live` is set if and only if slot `i` holds a child with `present > 0`
/// (a leaf's `live` is all zero).
struct Node {
    count: usize,
    present: usize,
    /// The slots whose subtrees hold present entries: a walk finds them a word at a time
    /// instead of looking at all 512 slots of a sparse table.
    live: LiveSlots,
    slots: Slots,
}

/// One bit per slot of a table.
type LiveSlots = [u64; FANOUT / 64];

/// Calls `f` on each slot index in `first..last` whose bit is set in `live`, in order; stops
/// when `f` returns `false`.
fn for_each_live(live: &LiveSlots, first: usize, last: usize, mut f: impl FnMut(usize) -> bool) {
    let mut i = first;
    while i < last {
        let word = live[i / 64] >> (i % 64);
        if word == 0 {
            i = (i / 64 + 1) * 64;
            continue;
        }
        i += word.trailing_zeros() as usize;
        if i >= last || !f(i) {
            return;
        }
        i += 1;
    }
}

fn set_live(live: &mut LiveSlots, i: usize) {
    live[i / 64] |= 1 << (i % 64);
}

fn clear_live(live: &mut LiveSlots, i: usize) {
    live[i / 64] &= !(1 << (i % 64));
}

impl Node {
    // Tables are charged to the memory cgroup of the task that faults them in, like KVM's MMU
    // caches (`GFP_KERNEL_ACCOUNT`): a process cannot grow kernel memory outside its limit.
    fn new_dir() -> Result<KBox<Self>> {
        let slots = KBox::<DirSlots>::zeroed(GFP_KERNEL_ACCOUNT)?;
        Ok(KBox::new(
            Node {
                count: 0,
                present: 0,
                live: [0; FANOUT / 64],
                slots: Slots::Dir(slots),
            },
            GFP_KERNEL_ACCOUNT,
        )?)
    }

    fn new_leaf() -> Result<KBox<Self>> {
        let slots = KBox::<LeafSlots>::zeroed(GFP_KERNEL_ACCOUNT)?;
        Ok(KBox::new(
            Node {
                count: 0,
                present: 0,
                live: [0; FANOUT / 64],
                slots: Slots::Leaf(slots),
            },
            GFP_KERNEL_ACCOUNT,
        )?)
    }
}

/// Index of `addr` in a table of level `level`.
fn index(addr: usize, level: usize) -> usize {
    (addr >> (PAGE_SHIFT + LEVEL_BITS * level)) & (FANOUT - 1)
}

/// Bytes mapped by one slot of a table of level `level`.
fn slot_span(level: usize) -> usize {
    1 << (PAGE_SHIFT + LEVEL_BITS * level)
}

/// The slots `first..last` of a table whose first slot maps `base`, each spanning `span` bytes,
/// that intersect `[start, end)` (which must intersect the table).
fn slot_range(span: usize, base: usize, start: usize, end: usize) -> (usize, usize) {
    let first = start.saturating_sub(base) / span;
    let last = core::cmp::min(FANOUT, (end - base).div_ceil(span));
    (first, last)
}

/// Tables allocated ahead of an insertion, so that [`Table::install`] never allocates with the
/// tree's lock held (KVM's `kvm_mmu_memory_cache`).
pub(crate) struct NodeCache {
    dirs: KVec<KBox<Node>>,
    leaves: KVec<KBox<Node>>,
}

impl NodeCache {
    pub(crate) fn new() -> Self {
        Self {
            dirs: KVec::new(),
            leaves: KVec::new(),
        }
    }

    /// Makes sure one insertion can be done: one table per level below the root.
    ///
    /// # Errors
    ///
    /// `ENOMEM`. May sleep: call it without the tree's lock.
    pub(crate) fn top_up(&mut self) -> Result {
        while self.dirs.len() < LEVELS - 2 {
            self.dirs.push(Node::new_dir()?, GFP_KERNEL_ACCOUNT)?;
        }
        if self.leaves.is_empty() {
            self.leaves.push(Node::new_leaf()?, GFP_KERNEL_ACCOUNT)?;
        }
        Ok(())
    }
}

/// What a walk removed.
#[derive(Default)]
pub(crate) struct Zapped {
    /// Present entries cleared.
    pub(crate) entries: u64,
}

/// How much a [`Table::zap_some`] walk may still clear, and where it stopped.
struct Budget {
    left: usize,
    resume: Option<usize>,
}

/// The secondary page table of one attachment.
///
/// # Invariants
///
/// `present` is the number of present leaf entries and `pages` the number of tables, including
/// the root, in the tree.
pub(crate) struct Table {
    root: KBox<Node>,
    present: u64,
    pages: u64,
}

impl Table {
    /// Creates an empty table (just the root).
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            root: Node::new_dir()?,
            present: 0,
            pages: 1,
        })
    }

    /// Present entries.
    pub(crate) fn present(&self) -> u64 {
        self.present
    }

    /// 4 KiB tables in use, including the root.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// The entry mapping `addr` (`Entry::NONE` if absent). O(levels).
    pub(crate) fn lookup(&self, addr: usize) -> Entry {
        self.leaf(addr)
            .map_or(Entry::NONE, |slots| Entry(slots[index(addr, 0)]))
    }

    /// The leaf table whose slots map `addr`, if it exists. O(levels).
    fn leaf(&self, addr: usize) -> Option<&LeafSlots> {
        let mut node = &*self.root;
        let mut level = LEVELS - 1;
        loop {
            match &node.slots {
                Slots::Dir(slots) => node = slots[index(addr, level)].as_deref()?,
                Slots::Leaf(slots) => return Some(slots),
            }
            level -= 1;
        }
    }

    /// The first page address in `[start, end)` whose entry fails `ok`, looking no further than
    /// the leaf table that maps `start`: returns `min(end, end of that table's span)` if every
    /// entry up to there passes, `start` if the first one fails. O(levels + entries looked at),
    /// at most [`FANOUT`] entries, so that a caller can hold a lock around each call.
    pub(crate) fn first_failing(
        &self,
        start: usize,
        end: usize,
        ok: impl Fn(Entry) -> bool,
    ) -> usize {
        let stop = leaf_end(start, end);
        let Some(slots) = self.leaf(start) else {
            return if ok(Entry::NONE) { stop } else { start };
        };
        let mut addr = start;
        while addr < stop && ok(Entry(slots[index(addr, 0)])) {
            addr += 1 << PAGE_SHIFT;
        }
        addr
    }

    /// Replaces the present entry mapping `addr` with `f(entry)`, which must be present or
    /// [`Entry::NONE`]. Returns the old entry; does nothing (and does not call `f`) and returns
    /// `Entry::NONE` if `addr` is not mapped. One walk, unless `f` clears the entry.
    pub(crate) fn update(&mut self, addr: usize, f: impl FnOnce(Entry) -> Entry) -> Entry {
        let Some(slot) = Self::leaf_slot(&mut self.root, addr) else {
            return Entry::NONE;
        };
        let old = Entry(*slot);
        if !old.present() {
            return Entry::NONE;
        }
        let new = f(old);
        if new.present() {
            *slot = new.0;
        } else {
            self.zap(addr, addr + (1 << PAGE_SHIFT));
        }
        old
    }

    /// The leaf slot of `addr`, if its leaf table exists.
    fn leaf_slot(mut node: &mut Node, addr: usize) -> Option<&mut u64> {
        let mut level = LEVELS - 1;
        loop {
            match &mut node.slots {
                Slots::Dir(slots) => node = slots[index(addr, level)].as_deref_mut()?,
                Slots::Leaf(slots) => return Some(&mut slots[index(addr, 0)]),
            }
            level -= 1;
        }
    }

    /// How many tables [`Table::install`] would have to add to map `addr`.
    pub(crate) fn missing_tables(&self, addr: usize) -> u64 {
        let mut node = &*self.root;
        let mut level = LEVELS - 1;
        while level > 0 {
            let Slots::Dir(slots) = &node.slots else {
                return 0;
            };
            match &slots[index(addr, level)] {
                Some(child) => node = child,
                None => return level as u64,
            }
            level -= 1;
        }
        0
    }

    /// Maps `addr` with `entry` (present), creating missing tables from `cache`, which must have
    /// been [topped up](NodeCache::top_up). Returns the entry it replaced.
    ///
    /// All or nothing: everything that can fail is checked before the first change, so an error
    /// leaves the table (counts, live bits, tables) and the cache as they were.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if `cache` lacks a table the path needs (a caller that did not top it up).
    pub(crate) fn install(
        &mut self,
        addr: usize,
        entry: Entry,
        cache: &mut NodeCache,
    ) -> Result<Entry> {
        // The path from the root lacks its tables from level `missing - 1` down: `missing - 1`
        // directories and a leaf.
        let missing = self.missing_tables(addr) as usize;
        if missing > 0 && (cache.leaves.is_empty() || cache.dirs.len() < missing - 1) {
            return Err(ENOMEM);
        }
        // Nothing below can fail. The old entry first, so that the walk knows whether the
        // subtree gains one.
        let old = self.lookup(addr);
        let added = usize::from(!old.present());
        let mut node = &mut *self.root;
        let mut level = LEVELS - 1;
        while level > 0 {
            node.present += added;
            if added != 0 {
                set_live(&mut node.live, index(addr, level));
            }
            // The tables of levels `LEVELS - 1..=1` are directories (`Node` invariant of the
            // tree's shape): not reached.
            let Slots::Dir(slots) = &mut node.slots else {
                return Err(EINVAL);
            };
            let slot = &mut slots[index(addr, level)];
            if slot.is_none() {
                // Checked above: the cache holds a table for each missing level.
                let child = if level == 1 {
                    cache.leaves.pop()
                } else {
                    cache.dirs.pop()
                };
                *slot = child;
                node.count += 1;
                self.pages += 1;
            }
            // The slot was filled just above if it was empty: not reached.
            node = slot.as_deref_mut().ok_or(EINVAL)?;
            level -= 1;
        }
        // Level 0 is a leaf (the tree's shape): not reached.
        let Slots::Leaf(slots) = &mut node.slots else {
            return Err(EINVAL);
        };
        slots[index(addr, 0)] = entry.0;
        node.count += added;
        node.present += added;
        self.present += added as u64;
        Ok(old)
    }

    /// Clears every entry in `[start, end)`. Visits only tables with present entries, and frees
    /// none: see [`Table::prune`].
    pub(crate) fn zap(&mut self, start: usize, end: usize) -> Zapped {
        self.zap_some(start, end, usize::MAX).0
    }

    /// Clears the entries in `[start, end)` in address order until at least `budget` leaf slots
    /// were looked at, finishing the leaf table where that happens; returns what was cleared and
    /// where the rest of the range begins (`end` if nothing is left). One walk, visiting only
    /// tables with present entries, and in a leaf only up to its last present entry: a caller
    /// that drops a lock between calls bounds each hold by `budget` slots plus one leaf table
    /// (and the directory levels above them), however sparse or large the range.
    pub(crate) fn zap_some(&mut self, start: usize, end: usize, budget: usize) -> (Zapped, usize) {
        let mut budget = Budget {
            left: budget.max(1),
            resume: None,
        };
        let entries = Self::zap_node(&mut self.root, LEVELS - 1, 0, start, end, &mut budget);
        self.present -= entries as u64;
        let zapped = Zapped {
            entries: entries as u64,
        };
        (zapped, budget.resume.map_or(end, |r| r.min(end)))
    }

    /// Zaps `[start, end)` in `node`, a table of level `level` whose first slot maps `base`,
    /// until `budget` runs out; returns the entries cleared.
    fn zap_node(
        node: &mut Node,
        level: usize,
        base: usize,
        start: usize,
        end: usize,
        budget: &mut Budget,
    ) -> usize {
        let span = slot_span(level);
        let (first, last) = slot_range(span, base, start, end);
        let mut cleared = 0;
        match &mut node.slots {
            Slots::Leaf(slots) => {
                let mut scanned = 0;
                for slot in slots.iter_mut().take(last).skip(first) {
                    if cleared == node.present {
                        break;
                    }
                    scanned += 1;
                    if Entry(*slot).present() {
                        *slot = 0;
                        cleared += 1;
                    }
                }
                node.count -= cleared;
                // The budget pays for the slots looked at, not only for the entries cleared: a
                // leaf whose one entry is its last slot costs 512.
                budget.left = budget.left.saturating_sub(scanned);
                if budget.left == 0 {
                    budget.resume = Some(base + last * span);
                }
            }
            Slots::Dir(slots) => {
                let live = &mut node.live;
                let present = node.present;
                for_each_live(&live.clone(), first, last, |i| {
                    // A live slot holds a child (the invariant); `cleared` only grows.
                    if let Some(child) = slots[i].as_deref_mut() {
                        cleared +=
                            Self::zap_node(child, level - 1, base + i * span, start, end, budget);
                        if child.present == 0 {
                            clear_live(live, i);
                        }
                    }
                    cleared < present && budget.resume.is_none()
                });
            }
        }
        node.present -= cleared;
        cleared
    }

    /// Frees every table that maps no present entry (the root stays); returns how many. Costs
    /// in proportion to the tables in the tree.
    pub(crate) fn prune(&mut self) -> u64 {
        let freed = Self::prune_node(&mut self.root);
        self.pages -= freed;
        freed
    }

    /// Frees the empty child tables of `node`, and the empty tables below its other children.
    fn prune_node(node: &mut Node) -> u64 {
        let Slots::Dir(slots) = &mut node.slots else {
            return 0;
        };
        let mut freed = 0;
        for slot in slots.iter_mut() {
            if node.count == 0 {
                break;
            }
            let Some(child) = slot else { continue };
            if child.present == 0 {
                freed += Self::tables(child);
                // Dropping the child frees it and every table below it.
                *slot = None;
                node.count -= 1;
            } else {
                freed += Self::prune_node(child);
            }
        }
        freed
    }

    /// The tables in `node`'s subtree, `node` included.
    fn tables(node: &Node) -> u64 {
        match &node.slots {
            Slots::Leaf(_) => 1,
            Slots::Dir(slots) => 1 + slots.iter().flatten().map(|c| Self::tables(c)).sum::<u64>(),
        }
    }

    /// Calls `f` on every present entry in `[start, end)`, replacing it with the result, which
    /// must be present.
    pub(crate) fn for_each_present(
        &mut self,
        start: usize,
        end: usize,
        mut f: impl FnMut(Entry) -> Entry,
    ) {
        Self::walk_node(&mut self.root, LEVELS - 1, 0, start, end, &mut f);
    }

    fn walk_node(
        node: &mut Node,
        level: usize,
        base: usize,
        start: usize,
        end: usize,
        f: &mut impl FnMut(Entry) -> Entry,
    ) {
        let span = slot_span(level);
        let (first, last) = slot_range(span, base, start, end);
        match &mut node.slots {
            Slots::Leaf(slots) => {
                for slot in slots.iter_mut().take(last).skip(first) {
                    if Entry(*slot).present() {
                        *slot = f(Entry(*slot)).0;
                    }
                }
            }
            Slots::Dir(slots) => {
                for_each_live(&node.live, first, last, |i| {
                    if let Some(child) = slots[i].as_deref_mut() {
                        Self::walk_node(child, level - 1, base + i * span, start, end, f);
                    }
                    true
                });
            }
        }
    }
}

/// The table's own rules, checked without a process or a notifier: run by KUnit when the module
/// loads (`CONFIG_KUNIT`; the guest test `kunit` reads the results).
#[kernel::macros::kunit_tests(shadowpt_table)]
mod tests {
    use super::*;

    const PAGE: usize = 1 << PAGE_SHIFT;

    fn entry(pfn: usize) -> Entry {
        Entry::new(pfn, false, false, true, false)
    }

    /// A table with `addrs` mapped (pfn = index in `addrs` + 1).
    fn table_with(addrs: &[usize]) -> Result<Table> {
        let mut t = Table::new()?;
        let mut cache = NodeCache::new();
        for (i, &a) in addrs.iter().enumerate() {
            cache.top_up()?;
            t.install(a, entry(i + 1), &mut cache)?;
        }
        Ok(t)
    }

    /// One table per level below the root for the first page; a page across each boundary (2 MiB,
    /// 1 GiB, 512 GiB) adds the tables of the levels it crosses.
    #[test]
    fn level_boundaries() -> Result {
        let leaf = slot_span(1);
        let dir1 = slot_span(2);
        let dir2 = slot_span(3);
        let base = dir2 - PAGE;
        let cases: [(usize, u64); 4] = [
            (base, 4),
            (base + PAGE, 7),
            (dir2 + leaf, 8),
            (dir2 + dir1, 10),
        ];
        let mut t = Table::new()?;
        let mut cache = NodeCache::new();
        for (i, &(addr, pages)) in cases.iter().enumerate() {
            cache.top_up()?;
            assert_eq!(t.missing_tables(addr) + t.pages(), pages);
            t.install(addr, entry(i + 1), &mut cache)?;
            assert_eq!(t.pages(), pages);
        }
        assert_eq!(t.present(), 4);
        for (i, &(addr, _)) in cases.iter().enumerate() {
            assert_eq!(t.lookup(addr), entry(i + 1));
            assert!(!t.lookup(addr + PAGE).present() || addr + PAGE == cases[1].0);
        }
        Ok(())
    }

    /// `zap_some` stops after the leaf table in which its budget ran out and says where to go
    /// on; a sparse range costs one call, however large.
    #[test]
    fn zap_some() -> Result {
        let leaf = slot_span(1);
        let dir1 = slot_span(2);
        let big = 4 * dir1;
        let a = [5 * PAGE, leaf + 3 * PAGE, dir1 + 7 * leaf];
        let mut t = table_with(&a)?;
        assert_eq!(t.zap_some(0, big, 1).1, leaf);
        assert_eq!(t.present(), 2);
        let (z, next) = t.zap_some(leaf, big, 1);
        assert_eq!((z.entries, next), (1, 2 * leaf));
        let (z, next) = t.zap_some(next, big, 5);
        assert_eq!((z.entries, next, t.present()), (1, big, 0));
        // 6 + 4 + 1 slots looked at: a budget of 100 clears all three in one call.
        let mut t = table_with(&a)?;
        let (z, next) = t.zap_some(0, big, 100);
        assert_eq!((z.entries, next), (3, big));
        // Dense: 1024 entries in two leaves, a budget of 100 finishes a leaf per call.
        let mut dense = KVec::with_capacity(1024, GFP_KERNEL)?;
        for i in 0..1024 {
            dense.push(i * PAGE, GFP_KERNEL)?;
        }
        let mut t = table_with(&dense)?;
        let (z, next) = t.zap_some(0, big, 100);
        assert_eq!((z.entries, next), (512, leaf));
        let (z, next) = t.zap_some(next, big, 100);
        assert_eq!((z.entries, next), (512, 2 * leaf));
        let (z, next) = t.zap_some(next, big, 100);
        assert_eq!((z.entries, next, t.present()), (0, big, 0));
        // One entry in the last slot of each of 4 leaves: each costs 512 slots, so a budget of
        // 1000 ends after the second leaf. Unaligned bounds clip the first and the last leaf.
        let last: [usize; 4] = [1, 2, 3, 4].map(|i| i * leaf - PAGE);
        let mut t = table_with(&last)?;
        let (z, next) = t.zap_some(PAGE, big, 1000);
        assert_eq!((z.entries, next), (2, 2 * leaf));
        let (z, next) = t.zap_some(next, 4 * leaf - 2 * PAGE, 1000);
        assert_eq!((z.entries, next, t.present()), (1, 4 * leaf - 2 * PAGE, 1));
        Ok(())
    }

    /// The highest user page (47-bit address space) and the lowest map to distinct entries.
    #[test]
    fn address_extremes() -> Result {
        let top = ADDRESS_LIMIT - PAGE;
        let t = table_with(&[0, top])?;
        assert_eq!(t.lookup(0).pfn(), 1);
        assert_eq!(t.lookup(top).pfn(), 2);
        assert_eq!(t.pages(), 7);
        assert_eq!(index(top, LEVELS - 1), FANOUT - 1);
        assert_eq!(index(top, 0), FANOUT - 1);
        Ok(())
    }

    /// A zap clears only its range, frees no table; `prune` frees the empty ones and keeps the
    /// tables that still map something.
    #[test]
    fn zap_keeps_tables_prune_frees_them() -> Result {
        let leaf = slot_span(1);
        let addrs = [0, PAGE, leaf, 2 * leaf, slot_span(2)];
        let mut t = table_with(&addrs)?;
        assert_eq!(t.pages(), 8);
        assert_eq!(t.zap(PAGE, 2 * leaf + PAGE).entries, 3);
        assert_eq!(t.present(), 2);
        assert_eq!(t.pages(), 8);
        assert!(t.lookup(0).present());
        assert!(!t.lookup(leaf).present());
        // Leaves of `leaf` and `2 * leaf` are empty now.
        assert_eq!(t.prune(), 2);
        assert_eq!(t.pages(), 6);
        assert_eq!(t.lookup(slot_span(2)).pfn(), 5);
        assert_eq!(t.zap(0, ADDRESS_LIMIT).entries, 2);
        assert_eq!(t.prune(), 5);
        assert_eq!(t.pages(), 1);
        assert_eq!(t.present(), 0);
        // An empty range and a range without tables cost nothing and change nothing.
        assert_eq!(t.zap(PAGE, PAGE).entries, 0);
        assert_eq!(t.prune(), 0);
        Ok(())
    }

    /// A sparse directory: walks and zaps find the live slots across the words of its bitmap
    /// (slots 0, 63, 64 and 511), clear only what their range covers, and a slot emptied by a
    /// zap is found again once it maps something.
    #[test]
    fn sparse_walks_find_live_slots() -> Result {
        let leaf = slot_span(1);
        let addrs = [0, 63 * leaf, 64 * leaf, 511 * leaf + 5 * PAGE];
        let mut t = table_with(&addrs)?;
        let mut seen = KVec::new();
        t.for_each_present(0, slot_span(2), |e| {
            // The closure cannot fail; a full vector would only lose test data.
            let _ = seen.push(e.pfn(), GFP_KERNEL);
            e
        });
        assert_eq!(&seen[..], &[1, 2, 3, 4]);
        assert_eq!(t.zap(64 * leaf, slot_span(2)).entries, 2);
        assert_eq!(t.present(), 2);
        assert!(t.lookup(63 * leaf).present());
        let mut cache = NodeCache::new();
        cache.top_up()?;
        t.install(511 * leaf, entry(7), &mut cache)?;
        assert_eq!(t.zap(leaf, slot_span(2)).entries, 2);
        assert_eq!(t.present(), 1);
        assert_eq!(t.lookup(0).pfn(), 1);
        Ok(())
    }

    /// A table emptied by a zap is reused by the next installation in its range.
    #[test]
    fn empty_tables_are_reused() -> Result {
        let mut t = table_with(&[PAGE])?;
        t.zap(0, ADDRESS_LIMIT);
        assert_eq!(t.missing_tables(2 * PAGE), 0);
        let mut cache = NodeCache::new();
        cache.top_up()?;
        t.install(2 * PAGE, entry(9), &mut cache)?;
        assert_eq!(t.pages(), 4);
        assert_eq!(t.present(), 1);
        assert_eq!(t.prune(), 0);
        Ok(())
    }

    /// `first_failing` stops at the first entry failing the test, and at the end of the leaf
    /// table that maps its start at the latest.
    #[test]
    fn first_failing_bounds() -> Result {
        let leaf = slot_span(1);
        let t = table_with(&[0, PAGE, 2 * PAGE, leaf])?;
        let present = |e: Entry| e.present();
        assert_eq!(t.first_failing(0, 2 * leaf, present), 3 * PAGE);
        assert_eq!(t.first_failing(3 * PAGE, 2 * leaf, |e| !e.present()), leaf);
        assert_eq!(t.first_failing(0, 2 * PAGE, present), 2 * PAGE);
        assert_eq!(t.first_failing(leaf, 2 * leaf, present), leaf + PAGE);
        // No leaf table at all: the whole leaf span is absent.
        assert_eq!(
            t.first_failing(4 * leaf, 8 * leaf, |e| !e.present()),
            5 * leaf
        );
        assert_eq!(t.first_failing(4 * leaf, 8 * leaf, present), 4 * leaf);
        Ok(())
    }

    /// An installation that needs a table the cache lacks fails with `ENOMEM` and changes
    /// nothing: no count, no live bit, no table (a zap of everything afterwards finds exactly the
    /// one entry installed later, and the root's counts agree with the table's).
    #[test]
    fn install_without_tables_changes_nothing() -> Result {
        let leaf = slot_span(1);
        let mut t = table_with(&[0])?;
        let mut empty = NodeCache::new();
        assert_eq!(t.install(leaf, entry(2), &mut empty), Err(ENOMEM));
        assert_eq!(t.install(slot_span(3), entry(3), &mut empty), Err(ENOMEM));
        assert_eq!((t.present(), t.pages()), (1, 4));
        assert_eq!(t.root.present, 1);
        assert!(!t.lookup(leaf).present());
        // Only slot 0 of the root is live.
        assert_eq!(t.root.live[0], 1);
        assert!(t.root.live[1..].iter().all(|&w| w == 0));
        // A partly stocked cache (a leaf, no directory) is refused too, and kept whole.
        let mut partial = NodeCache::new();
        partial.leaves.push(Node::new_leaf()?, GFP_KERNEL)?;
        assert_eq!(t.install(slot_span(3), entry(3), &mut partial), Err(ENOMEM));
        assert_eq!((partial.leaves.len(), t.pages()), (1, 4));
        // The leaf is enough where only the leaf is missing.
        t.install(leaf, entry(4), &mut partial)?;
        assert_eq!((t.present(), t.pages(), t.root.present), (2, 5, 2));
        assert_eq!(t.zap(0, ADDRESS_LIMIT).entries, 2);
        assert_eq!((t.present(), t.root.present), (0, 0));
        Ok(())
    }

    /// Re-installing a present entry replaces it without counting it twice; `update` changes
    /// only present entries.
    #[test]
    fn install_and_update() -> Result {
        let mut t = table_with(&[PAGE])?;
        let mut cache = NodeCache::new();
        cache.top_up()?;
        assert_eq!(t.install(PAGE, entry(7), &mut cache)?, entry(1));
        assert_eq!(t.present(), 1);
        assert_eq!(t.update(PAGE, |e| e.old()).pfn(), 7);
        assert!(!t.lookup(PAGE).accessed());
        assert_eq!(t.update(2 * PAGE, |_| entry(3)), Entry::NONE);
        assert!(!t.lookup(2 * PAGE).present());
        assert_eq!(t.update(PAGE, |_| Entry::NONE).pfn(), 7);
        assert_eq!(t.present(), 0);
        Ok(())
    }
}
