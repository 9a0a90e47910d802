// SPDX-License-Identifier: GPL-2.0

//! spt_cptest: a minimal MMU notifier that proves `->change_pte()` is reachable.
//!
//! Test-only (the guest test `change_pte_reachable` drives it). A process attaches to its own mm
//! through `/sys/kernel/debug/spt_cptest/ctl/control` (`attach MODE START END`: a window of its
//! address space) and tells the tracker which of its pages in the window are mapped ("tracked
//! entries": address, pfn, writable, seeded from `/proc/self/pagemap`).
//! The tracker then behaves like a secondary MMU that only keeps those entries:
//!
//! - `keep` mode: a flagged (`change_pte`) invalidation keeps the entry, any other invalidation
//!   drops the entries it covers; `change_pte` updates the entry and logs the transition;
//! - `zap` mode: every invalidation drops entries (mainline behaviour since 2012), so
//!   `change_pte` should find nothing.
//!
//! Counters only count what happens inside the window (calls elsewhere in the process, e.g. a
//! stray copy-on-write fault of the test program itself, are counted in `change_pte_elsewhere`),
//! so a test can assert them exactly. `stats` prints the counters, `log` one line per `change_pte` call on a tracked entry:
//! `address old_pfn old_writable new_pfn new_writable zero_page inside_start_end`.
//!
//! The tracker copies the primary's new writability into its entry (it records the primary's
//! transitions; it never accesses memory through its entries, so there is no secondary write
//! to protect), and drops an entry that would follow the page to a new pfn while writable.
//!
//! Lock order: `Control::attached` (mutex) -> mmap lock (registration) / SRCU wait (dropping
//! the registration) and -> `Tracker::state` (spinlock). Notifier callbacks only take the
//! spinlock, never the mutex, so unregistering under the mutex cannot deadlock.

use core::fmt;
use kernel::{
    debugfs::{Dir, Scope},
    mm::mmu_notifier::{MmuNotifier, Pte, Range, Registration},
    mm::Mm,
    new_mutex, new_spinlock,
    prelude::*,
    sync::{Mutex, SpinLock},
    uaccess::UserSliceReader,
};

module! {
    type: CpTestModule,
    name: "spt_cptest",
    authors: ["The shadowpt developers"],
    description: "shadowpt test: a minimal notifier that records change_pte calls",
    license: "GPL",
}

const MAX_ENTRIES: usize = 8192;
const MAX_LOG: usize = 3 * MAX_ENTRIES;
const MAX_COMMAND: usize = 64 * 1024;

struct Entry {
    addr: usize,
    pfn: usize,
    writable: bool,
}

struct Event {
    addr: usize,
    old_pfn: usize,
    old_writable: bool,
    new: Pte,
    inside: bool,
}

#[derive(Default)]
struct Counters {
    change_pte_elsewhere: u64,
    starts: u64,
    ends: u64,
    flagged_starts: u64,
    zapped: u64,
    kept: u64,
    change_pte: u64,
    change_pte_absent: u64,
    change_pte_outside: u64,
    change_pte_illegal: u64,
    log_dropped: u64,
    releases: u64,
}

struct State {
    zap_mode: bool,
    /// The window `[win_start, win_end)` the counters cover.
    win_start: usize,
    win_end: usize,
    entries: KVVec<Entry>,
    log: KVVec<Event>,
    /// Invalidations in progress, and how many of them are flagged.
    in_progress: u32,
    flagged_in_progress: u32,
    /// Union of the ranges being invalidated while `in_progress > 0`.
    inv_start: usize,
    inv_end: usize,
    released: bool,
    c: Counters,
}

#[pin_data]
struct Tracker {
    #[pin]
    state: SpinLock<State>,
}

impl Tracker {
    fn new(zap_mode: bool, win_start: usize, win_end: usize) -> Result<impl PinInit<Self, Error>> {
        // About 1.5 MiB in all: vmalloc-backed, so fragmentation cannot fail the attach.
        let entries = KVVec::with_capacity(MAX_ENTRIES, GFP_KERNEL)?;
        let log = KVVec::with_capacity(MAX_LOG, GFP_KERNEL)?;
        Ok(try_pin_init!(Self {
            state <- new_spinlock!(State {
                zap_mode,
                win_start,
                win_end,
                entries,
                log,
                in_progress: 0,
                flagged_in_progress: 0,
                inv_start: 0,
                inv_end: 0,
                released: false,
                c: Counters::default(),
            }),
        }))
    }
}

#[vtable]
impl MmuNotifier for Tracker {
    fn release(&self, _mm: &Mm) {
        let mut s = self.state.lock();
        s.c.releases += 1;
        s.released = true;
        let n = s.entries.len() as u64;
        s.c.zapped += n;
        s.entries.clear();
    }

    fn invalidate_range_start(&self, range: &Range) -> Result {
        let mut s = self.state.lock();
        let in_window = range.start() < s.win_end && range.end() > s.win_start;
        if in_window {
            s.c.starts += 1;
        }
        if s.in_progress == 0 {
            s.inv_start = range.start();
            s.inv_end = range.end();
        } else {
            s.inv_start = s.inv_start.min(range.start());
            s.inv_end = s.inv_end.max(range.end());
        }
        s.in_progress += 1;
        let keep = range.change_pte() && !s.zap_mode;
        if range.change_pte() {
            if in_window {
                s.c.flagged_starts += 1;
            }
            s.flagged_in_progress += 1;
        }
        let (start, end) = (range.start(), range.end());
        let before = s.entries.len();
        if keep {
            let kept = s
                .entries
                .iter()
                .filter(|e| e.addr >= start && e.addr < end)
                .count() as u64;
            s.c.kept += kept;
        } else {
            s.entries.retain(|e| e.addr < start || e.addr >= end);
        }
        let zapped = (before - s.entries.len()) as u64;
        s.c.zapped += zapped;
        Ok(())
    }

    fn invalidate_range_end(&self, range: &Range) {
        let mut s = self.state.lock();
        if range.start() < s.win_end && range.end() > s.win_start {
            s.c.ends += 1;
        }
        s.in_progress = s.in_progress.saturating_sub(1);
        if range.change_pte() {
            s.flagged_in_progress = s.flagged_in_progress.saturating_sub(1);
        }
    }

    fn change_pte(&self, _mm: &Mm, address: usize, pte: Pte) {
        let mut s = self.state.lock();
        if address < s.win_start || address >= s.win_end {
            s.c.change_pte_elsewhere += 1;
            return;
        }
        s.c.change_pte += 1;
        let inside = s.flagged_in_progress > 0 && address >= s.inv_start && address < s.inv_end;
        if !inside {
            s.c.change_pte_outside += 1;
        }
        let Some(i) = s.entries.iter().position(|e| e.addr == address) else {
            s.c.change_pte_absent += 1;
            return;
        };
        let (old_pfn, old_writable) = (s.entries[i].pfn, s.entries[i].writable);
        let event = Event {
            addr: address,
            old_pfn,
            old_writable,
            new: pte,
            inside,
        };
        if s.log.push_within_capacity(event).is_err() {
            s.c.log_dropped += 1;
        }
        if old_writable && pte.pfn() != old_pfn {
            // A writable entry must never follow the page to a new pfn: drop it.
            s.c.change_pte_illegal += 1;
            if s.entries.remove(i).is_ok() {
                s.c.zapped += 1;
            }
            return;
        }
        s.entries[i].pfn = pte.pfn();
        s.entries[i].writable = pte.writable();
    }
}

#[pin_data]
struct Control {
    #[pin]
    attached: Mutex<Option<Pin<KBox<Registration<Tracker>>>>>,
}

fn parse_usize(word: Option<&str>) -> Result<usize> {
    word.ok_or(EINVAL)?.parse::<usize>().map_err(|_| EINVAL)
}

fn control_write(ctl: &Control, reader: &mut UserSliceReader) -> Result {
    if reader.len() > MAX_COMMAND {
        return Err(E2BIG);
    }
    let mut buf = KVec::from_elem(0u8, reader.len(), GFP_KERNEL)?;
    reader.read_slice(&mut buf)?;
    let text = core::str::from_utf8(&buf).map_err(|_| EINVAL)?;
    let mut attached = ctl.attached.lock();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            None => {}
            Some("attach") => {
                if attached.is_some() {
                    return Err(EBUSY);
                }
                let zap_mode = match words.next() {
                    Some("keep") => false,
                    Some("zap") => true,
                    _ => return Err(EINVAL),
                };
                let win_start = parse_usize(words.next())?;
                let win_end = parse_usize(words.next())?;
                if win_start >= win_end {
                    return Err(EINVAL);
                }
                let task = kernel::current!();
                let mm = task.mm().ok_or(ESRCH)?;
                let reg = KBox::pin_init(
                    Registration::register(mm, Tracker::new(zap_mode, win_start, win_end)?),
                    GFP_KERNEL,
                )?;
                *attached = Some(reg);
            }
            Some("detach") => {
                // Unregisters (and waits for callbacks) when the registration drops.
                attached.take().ok_or(ENOENT)?;
            }
            Some("track") => {
                let addr = parse_usize(words.next())?;
                let pfn = parse_usize(words.next())?;
                let writable = parse_usize(words.next())? != 0;
                let reg = attached.as_ref().ok_or(ENOENT)?;
                let mut s = reg.state.lock();
                if s.released {
                    return Err(ESRCH);
                }
                if addr < s.win_start || addr >= s.win_end {
                    return Err(ERANGE);
                }
                if s.entries.iter().any(|e| e.addr == addr) {
                    return Err(EEXIST);
                }
                s.entries
                    .push_within_capacity(Entry {
                        addr,
                        pfn,
                        writable,
                    })
                    .map_err(|_| ENOSPC)?;
            }
            Some("clearlog") => {
                let reg = attached.as_ref().ok_or(ENOENT)?;
                reg.state.lock().log.clear();
            }
            Some(_) => return Err(EINVAL),
        }
    }
    Ok(())
}

fn stats_read(ctl: &Control, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let attached = ctl.attached.lock();
    let Some(reg) = attached.as_ref() else {
        return writeln!(f, "attached 0");
    };
    let s = reg.state.lock();
    let c = &s.c;
    writeln!(f, "attached 1")?;
    writeln!(f, "mode {}", if s.zap_mode { "zap" } else { "keep" })?;
    writeln!(f, "released {}", u8::from(s.released))?;
    writeln!(f, "entries {}", s.entries.len())?;
    writeln!(f, "in_progress {}", s.in_progress)?;
    writeln!(f, "starts {}", c.starts)?;
    writeln!(f, "ends {}", c.ends)?;
    writeln!(f, "flagged_starts {}", c.flagged_starts)?;
    writeln!(f, "zapped {}", c.zapped)?;
    writeln!(f, "kept {}", c.kept)?;
    writeln!(f, "change_pte {}", c.change_pte)?;
    writeln!(f, "change_pte_absent {}", c.change_pte_absent)?;
    writeln!(f, "change_pte_outside {}", c.change_pte_outside)?;
    writeln!(f, "change_pte_illegal {}", c.change_pte_illegal)?;
    writeln!(f, "change_pte_elsewhere {}", c.change_pte_elsewhere)?;
    writeln!(f, "log_dropped {}", c.log_dropped)?;
    writeln!(f, "releases {}", c.releases)
}

fn log_read(ctl: &Control, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let attached = ctl.attached.lock();
    let Some(reg) = attached.as_ref() else {
        return Ok(());
    };
    let s = reg.state.lock();
    for e in s.log.iter() {
        writeln!(
            f,
            "{} {} {} {} {} {} {}",
            e.addr,
            e.old_pfn,
            u8::from(e.old_writable),
            e.new.pfn(),
            u8::from(e.new.writable()),
            u8::from(e.new.zero_page()),
            u8::from(e.inside)
        )?;
    }
    Ok(())
}

struct CpTestModule {
    _scope: Pin<KBox<Scope<Control>>>,
    _dir: Dir,
}

impl kernel::Module for CpTestModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let dir = Dir::new(c"spt_cptest");
        let control = try_pin_init!(Control {
            attached <- new_mutex!(None),
        });
        let scope = KBox::pin_init(
            dir.scope(control, c"ctl", |ctl, d| {
                d.write_only_callback_file(c"control", ctl, &control_write);
                d.read_callback_file(c"stats", ctl, &stats_read);
                d.read_callback_file(c"log", ctl, &log_read);
            }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _scope: scope,
            _dir: dir,
        })
    }
}
