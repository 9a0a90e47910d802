// SPDX-License-Identifier: GPL-2.0

//! The KSM proof: mirror N pages, let KSM merge them, break the copy-on-write, and count what the
//! secondary MMU had to do, in `change_pte` mode and in `zap` mode (mainline's behaviour).
//!
//! Expected counts are derived from what KSM did, read from `/proc/self/pagemap`:
//!
//! - merge: every mirrored page is write-protected (RW->RO, one `change_pte`), and every mirrored
//!   page whose pfn changed was also replaced by a KSM page (RO->RO, a second `change_pte`). The
//!   pages that *became* KSM pages keep their pfn and see only the write-protect. A page outside
//!   the attachment (page 0) is identical too, so that even N = 1 has a partner.
//! - COW break by a process write, by `MADV_UNMERGEABLE` (unshare) or by a write through the
//!   table: one `change_pte` per page (RO->RW, RO->RO, RO->RW new pfn).
//!
//! In `change_pte` mode every call updates an entry in place: 0 zapped, 0 faults to read the N
//! pages again. In `zap` mode every call finds nothing: N zapped, N faults to read them again.

use crate::ksm;
use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::time::{Duration, Instant};

/// Counter deltas between two [`Stats`].
fn delta(a: &Stats, b: &Stats) -> Stats {
    let mut d = *b;
    d.faults -= a.faults;
    d.fault_retries -= a.fault_retries;
    d.invalidate_start -= a.invalidate_start;
    d.invalidate_end -= a.invalidate_end;
    d.zapped -= a.zapped;
    d.change_pte -= a.change_pte;
    d.change_pte_updated -= a.change_pte_updated;
    d.change_pte_absent -= a.change_pte_absent;
    d.change_pte_illegal -= a.change_pte_illegal;
    d.releases -= a.releases;
    d.young -= a.young;
    d.invalidate_ns -= a.invalidate_ns;
    d.change_pte_ns -= a.change_pte_ns;
    d.invalidate_nonblock -= a.invalidate_nonblock;
    d
}

/// One row of the results: what a phase cost the secondary MMU.
pub struct Row {
    pub phase: String,
    pub mode: &'static str,
    pub n: usize,
    pub calls: u64,
    pub updated: u64,
    pub absent: u64,
    pub zapped: u64,
    pub refaults: u64,
}

/// An experiment: `n` mirrored pages (pages 1..=n of a mapping of n + 1 identical pages).
struct Exp {
    m: Mapping,
    s: Spt,
    n: usize,
    keep: bool,
    mode: &'static str,
    gen: u8,
}

impl Exp {
    fn new(n: usize, mode: u32) -> Result<Self, String> {
        let m = Mapping::anon(n + 1)?;
        let s = Spt::open()?;
        s.attach(m.addr + PAGE, n * PAGE, mode)?;
        let mut e = Exp {
            m,
            s,
            n,
            keep: mode == MODE_CHANGE_PTE,
            mode: if mode == MODE_CHANGE_PTE {
                "change_pte"
            } else {
                "zap"
            },
            gen: 0,
        };
        e.fill_identical()?;
        Ok(e)
    }

    fn mirror_addr(&self) -> usize {
        self.m.addr + PAGE
    }

    /// Writes the same new content to every page (all n + 1), from the process.
    fn fill_identical(&mut self) -> Result<(), String> {
        self.gen = self.gen.wrapping_add(1);
        let page: Vec<u8> = (0..PAGE).map(|j| (j as u8) ^ self.gen ^ 0x5a).collect();
        for i in 0..=self.n {
            self.m.put(i * PAGE, &page);
        }
        Ok(())
    }

    /// Faults every mirrored page in writable (RW entries), checking the count.
    fn prefault_write(&self) -> Result<(), String> {
        let f = self.s.fault(self.mirror_addr(), self.n * PAGE, true)?;
        // Pages already mapped writable by an earlier phase do not fault again.
        let snap = self.s.snapshot(self.mirror_addr(), self.n)?;
        check(snap.iter().all(|&x| x & PAGE_WRITABLE != 0), || {
            "prefault left read-only entries".into()
        })?;
        check(f <= self.n as u64, || {
            format!("prefault: {f} faults for {} pages", self.n)
        })
    }

    /// Runs KSM until every page of the mapping is merged. Returns the pfns before and after.
    fn merge(&self) -> Result<(Vec<u64>, Vec<u64>), String> {
        let before = self.m.present_pfns()?;
        self.m.madvise(libc::MADV_MERGEABLE)?;
        let total = (self.n + 1) as u64;
        let t0 = Instant::now();
        ksm::run_until(Duration::from_secs(60), || {
            Ok(ksm::read("pages_shared")? + ksm::read("pages_sharing")? == total)
        })?;
        let after = self.m.present_pfns()?;
        let shared = ksm::read("pages_shared")?;
        let distinct = {
            let mut v = after.clone();
            v.sort_unstable();
            v.dedup();
            v.len() as u64
        };
        eq(
            "distinct pfns after the merge vs KSM pages_shared",
            distinct,
            shared,
        )?;
        println!(
            "  {} N={}: KSM merged {total} pages into {shared} KSM page(s) in {:?}",
            self.mode,
            self.n,
            t0.elapsed()
        );
        Ok((before, after))
    }

    /// Checks a phase that made `calls` change_pte calls on the n mirrored pages (all of which
    /// had an entry before the phase), then reads the n pages again through the table.
    fn phase(
        &self,
        name: &str,
        before: &Stats,
        calls: u64,
        rows: &mut Vec<Row>,
    ) -> Result<(), String> {
        let after = self.s.stats()?;
        let d = delta(before, &after);
        let n = self.n as u64;
        let what = |c: &str| format!("{} N={} {name}: {c}", self.mode, self.n);
        eq(&what("change_pte calls"), d.change_pte, calls)?;
        eq(&what("change_pte_illegal"), d.change_pte_illegal, 0)?;
        if self.keep {
            eq(&what("change_pte_updated"), d.change_pte_updated, calls)?;
            eq(&what("change_pte_absent"), d.change_pte_absent, 0)?;
            eq(&what("zapped"), d.zapped, 0)?;
            eq(&what("present"), after.present, n)?;
        } else {
            eq(&what("change_pte_updated"), d.change_pte_updated, 0)?;
            eq(&what("change_pte_absent"), d.change_pte_absent, calls)?;
            eq(&what("zapped"), d.zapped, n)?;
            eq(&what("present"), after.present, 0)?;
        }
        // Read the N pages again through the table.
        let (data, refaults) = self.s.read(self.mirror_addr(), self.n * PAGE)?;
        eq(
            &what("faults to re-read"),
            refaults,
            if self.keep { 0 } else { n },
        )?;
        let want = self.m.bytes(PAGE, self.n * PAGE);
        if let Some(k) = (0..data.len()).find(|&k| data[k] != want[k]) {
            return Err(what(&format!(
                "byte {k} read through the table is {:#x}, the process has {:#x}",
                data[k], want[k]
            )));
        }
        let snap = self.s.snapshot(self.mirror_addr(), self.n)?;
        if let Some(i) = snap
            .iter()
            .position(|&x| x & (PAGE_PRESENT | PAGE_PFN_MATCH) != (PAGE_PRESENT | PAGE_PFN_MATCH))
        {
            return Err(what(&format!(
                "page {i} is not mapped at the primary's pfn (state {:#x})",
                snap[i]
            )));
        }
        rows.push(Row {
            phase: name.to_string(),
            mode: self.mode,
            n: self.n,
            calls: d.change_pte,
            updated: d.change_pte_updated,
            absent: d.change_pte_absent,
            zapped: d.zapped,
            refaults,
        });
        Ok(())
    }

    /// Merge phase: expected calls = n write-protects + mirrored pages whose pfn changed.
    fn merge_phase(&self, rows: &mut Vec<Row>) -> Result<(), String> {
        self.prefault_write()?;
        let before = self.s.stats()?;
        let (pre, post) = self.merge()?;
        let replaced = (1..=self.n).filter(|&i| pre[i] != post[i]).count() as u64;
        let kept = self.n as u64 - replaced;
        println!("    {kept} mirrored page(s) became KSM pages (write-protect only), {replaced} were replaced");
        self.phase("merge", &before, self.n as u64 + replaced, rows)
    }
}

fn reset_ksm(n: usize, max_page_sharing: u64) -> Result<(), String> {
    ksm::reset(n + 1)?;
    ksm::write("max_page_sharing", &max_page_sharing.to_string())
}

/// Merge, then COW break by process writes; merge again, then unmerge with MADV_UNMERGEABLE.
fn merge_and_break(
    n: usize,
    mode: u32,
    max_page_sharing: u64,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    reset_ksm(n, max_page_sharing)?;
    let mut e = Exp::new(n, mode)?;
    e.merge_phase(rows)?;
    // COW break by the process: one write per mirrored page.
    let before = e.s.stats()?;
    for i in 1..=n {
        e.m.put(i * PAGE + 7, &[0xee]);
    }
    e.phase("cow-write", &before, n as u64, rows)?;
    if e.keep {
        // change_pte installs read-only even though the process's new PTE is writable.
        let snap = e.s.snapshot(e.mirror_addr(), n)?;
        if let Some(i) = snap.iter().position(|&x| x & PAGE_WRITABLE != 0) {
            return Err(format!(
                "change_pte N={n} cow-write: page {i} updated writable (state {:#x})",
                snap[i]
            ));
        }
    }

    // Identical again, merged again, then unshared by MADV_UNMERGEABLE.
    ksm::write("run", "2")?;
    e.fill_identical()?;
    e.merge_phase(rows)?;
    let before = e.s.stats()?;
    e.m.madvise(libc::MADV_UNMERGEABLE)?;
    e.phase("unmerge", &before, n as u64, rows)?;
    ksm::write("run", "2")
}

/// A write through the table to a merged page: the secondary's own write fault breaks COW
/// through GUP; in change_pte mode the entry is updated in place during the fault.
fn secondary_write(n: usize, mode: u32, rows: &mut Vec<Row>) -> Result<(), String> {
    reset_ksm(n, n as u64 + 2)?;
    let e = Exp::new(n, mode)?;
    e.merge_phase(rows)?;
    let before = e.s.stats()?;
    let mut faults = 0;
    for i in 0..n {
        faults += e.s.write(e.mirror_addr() + i * PAGE + 3, &[0xab, 0xcd])?;
    }
    eq("secondary writes: faults", faults, n as u64)?;
    let after = e.s.stats()?;
    let d = delta(&before, &after);
    eq("secondary writes: change_pte calls", d.change_pte, n as u64)?;
    eq(
        "secondary writes: change_pte_updated",
        d.change_pte_updated,
        if e.keep { n as u64 } else { 0 },
    )?;
    for i in 1..=n {
        check(e.m.bytes(i * PAGE + 3, 2) == [0xab, 0xcd], || {
            format!("page {i}: the process does not see the secondary's write")
        })?;
    }
    let snap = e.s.snapshot(e.mirror_addr(), n)?;
    check(
        snap.iter()
            .all(|&x| x & (PAGE_PFN_MATCH | PAGE_WRITABLE) == PAGE_PFN_MATCH | PAGE_WRITABLE),
        || "after secondary writes: entries not writable at the primary's pfn".into(),
    )?;
    rows.push(Row {
        phase: "secondary-write".into(),
        mode: e.mode,
        n,
        calls: d.change_pte,
        updated: d.change_pte_updated,
        absent: d.change_pte_absent,
        zapped: d.zapped,
        refaults: faults,
    });
    ksm::write("run", "2")
}

/// Zero-page merging: pages of zeroes are replaced by the shared zero page (no KSM page), then
/// written again (COW from the zero page).
fn zero_pages(n: usize, mode: u32, rows: &mut Vec<Row>) -> Result<(), String> {
    reset_ksm(n, 256)?;
    ksm::write("use_zero_pages", "1")?;
    let m = Mapping::anon(n)?;
    for i in 0..n {
        m.fill(i, 1);
        m.fill(i, 0);
    }
    let s = Spt::open()?;
    s.attach(m.addr, m.len, mode)?;
    let keep = mode == MODE_CHANGE_PTE;
    s.fault(m.addr, m.len, true)?;
    let before = s.stats()?;
    m.madvise(libc::MADV_MERGEABLE)?;
    // Done when every page maps one and the same pfn: the zero page.
    ksm::run_until(Duration::from_secs(60), || {
        let pfns = m.pfns()?;
        Ok(pfns.iter().all(|p| p.is_some() && *p == pfns[0]))
    })
    .map_err(|e| {
        let pfns = m.pfns().unwrap_or_default();
        let mut d: Vec<_> = pfns.iter().collect();
        d.sort();
        d.dedup();
        format!(
            "{e}: {} distinct pfns; ksm_zero_pages {:?} pages_shared {:?} pages_unshared {:?} use_zero_pages {:?}",
            d.len(),
            ksm::read("ksm_zero_pages"),
            ksm::read("pages_shared"),
            ksm::read("pages_unshared"),
            ksm::read("use_zero_pages")
        )
    })?;
    let d = delta(&before, &s.stats()?);
    let name = if keep { "change_pte" } else { "zap" };
    eq(
        &format!("{name} zero pages: change_pte calls (write-protect + replace)"),
        d.change_pte,
        2 * n as u64,
    )?;
    eq(
        &format!("{name} zero pages: updated"),
        d.change_pte_updated,
        if keep { 2 * n as u64 } else { 0 },
    )?;
    // An entry left on a freed page (a `change_pte` that did not move it) reads whatever that
    // page holds now; the snapshot below shows it at the wrong pfn.
    let (data, refaults) = s
        .read(m.addr, m.len)
        .map_err(|e| format!("zero pages: re-read: {e}"))?;
    eq(
        &format!("{name} zero pages: faults to re-read"),
        refaults,
        if keep { 0 } else { n as u64 },
    )?;
    check(data.iter().all(|&b| b == 0), || {
        "zero pages: data not zero".into()
    })?;
    let snap = s.snapshot(m.addr, n)?;
    check(
        snap.iter()
            .all(|&x| x & (PAGE_ZERO | PAGE_PFN_MATCH) == PAGE_ZERO | PAGE_PFN_MATCH),
        || {
            format!(
                "zero pages: entries do not map the zero page: {:x?}",
                &snap[..4]
            )
        },
    )?;
    rows.push(Row {
        phase: "zero-merge".into(),
        mode: name,
        n,
        calls: d.change_pte,
        updated: d.change_pte_updated,
        absent: d.change_pte_absent,
        zapped: d.zapped,
        refaults,
    });
    // COW from the zero page by the process.
    let before = s.stats()?;
    for i in 0..n {
        m.put(i * PAGE, &[0x11]);
    }
    let d = delta(&before, &s.stats()?);
    eq(
        &format!("{name} zero pages COW: change_pte calls"),
        d.change_pte,
        n as u64,
    )?;
    eq(
        &format!("{name} zero pages COW: updated"),
        d.change_pte_updated,
        if keep { n as u64 } else { 0 },
    )?;
    let (data, refaults) = s.read(m.addr, m.len)?;
    eq(
        &format!("{name} zero pages COW: faults to re-read"),
        refaults,
        if keep { 0 } else { n as u64 },
    )?;
    check((0..n).all(|i| data[i * PAGE] == 0x11), || {
        "zero pages COW: data".into()
    })?;
    check_no_stale(&s.snapshot(m.addr, n)?, "zero pages COW")?;
    rows.push(Row {
        phase: "zero-cow".into(),
        mode: name,
        n,
        calls: d.change_pte,
        updated: d.change_pte_updated,
        absent: d.change_pte_absent,
        zapped: d.zapped,
        refaults,
    });
    ksm::write("use_zero_pages", "0")?;
    ksm::write("run", "2")
}

pub fn print_rows(rows: &[Row]) {
    println!(
        "{:<16} {:<10} {:>6} {:>10} {:>8} {:>7} {:>7} {:>9}",
        "phase", "mode", "N", "change_pte", "updated", "absent", "zapped", "refaults"
    );
    for r in rows {
        println!(
            "{:<16} {:<10} {:>6} {:>10} {:>8} {:>7} {:>7} {:>9}",
            r.phase, r.mode, r.n, r.calls, r.updated, r.absent, r.zapped, r.refaults
        );
    }
}

/// `ksm_proof [N...]`: merge + COW-write + merge + unmerge for each N in both modes, N above
/// max_page_sharing included, then zero pages and secondary writes.
pub fn proof(args: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1, 256, 4096]
    } else {
        args.iter()
            .map(|a| a.parse().map_err(|e| format!("{a}: {e}")))
            .collect::<Result<_, _>>()?
    };
    let mut rows = Vec::new();
    // A KTAP case per experiment, size and mode; after a failure the rest are not run (KSM's
    // state may be left behind).
    ktap::start(Some(2 * sizes.len() + if args.is_empty() { 6 } else { 0 }));
    ktap::stop_at_failure();
    let modes = [(MODE_CHANGE_PTE, "change_pte"), (MODE_ZAP, "zap")];
    if args.is_empty() {
        for (mode, m) in modes {
            ktap::case(&format!("zero pages {m} N=256"), || {
                zero_pages(256, mode, &mut rows)
            });
        }
    }
    for &n in &sizes {
        for (mode, m) in modes {
            // One KSM page for all: max_page_sharing above N.
            ktap::case(&format!("merge and break {m} N={n}"), || {
                merge_and_break(n, mode, (n as u64 + 2).max(2), &mut rows)
            });
        }
    }
    if args.is_empty() {
        // Above max_page_sharing (256): KSM spreads the pages over several KSM pages.
        for (mode, m) in modes {
            ktap::case(
                &format!("merge and break {m} N=600 max_page_sharing=256"),
                || merge_and_break(600, mode, 256, &mut rows),
            );
        }
        for (mode, m) in modes {
            ktap::case(&format!("secondary write {m} N=256"), || {
                secondary_write(256, mode, &mut rows)
            });
        }
    }
    print_rows(&rows);
    ktap::finish()
}

/// The demo's scenario: N pages merged then written, both modes, a short table.
pub fn demo(args: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let n: usize = args
        .first()
        .map(|a| a.parse().unwrap_or(1024))
        .unwrap_or(1024);
    let mut rows = Vec::new();
    for mode in [MODE_CHANGE_PTE, MODE_ZAP] {
        reset_ksm(n, n as u64 + 2)?;
        let e = Exp::new(n, mode)?;
        e.merge_phase(&mut rows)?;
        let before = e.s.stats()?;
        for i in 1..=n {
            e.m.put(i * PAGE + 7, &[0xee]);
        }
        e.phase("cow-write", &before, n as u64, &mut rows)?;
        let st = e.s.stats()?;
        println!(
            "  {} debugfs: {}",
            e.mode,
            COUNTERS
                .iter()
                .zip(st.values())
                .map(|(c, v)| format!("{c}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        ksm::write("run", "2")?;
    }
    print_rows(&rows);
    let refaults = |mode: &str| {
        rows.iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.refaults)
            .sum::<u64>()
    };
    println!(
        "=> with change_pte restored the mirror kept all {n} entries through the KSM merge and the COW break ({} refaults); zap mode (mainline) had to refault {} pages.",
        refaults("change_pte"),
        refaults("zap")
    );
    Ok(())
}
