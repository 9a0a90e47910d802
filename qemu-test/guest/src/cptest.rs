// SPDX-License-Identifier: GPL-2.0

//! `change_pte` is reachable: the minimal notifier `spt_cptest.ko` sees KSM merges and COW
//! breaks as in-place updates, with the right transitions, always inside start/end.
//!
//! The same scenario runs twice: with the notifier honouring the `change_pte` range flag
//! (`keep`), and ignoring it (`zap`, what every notifier did since 2012). In `zap` mode every
//! call must find nothing to update: that is the dead code upstream removed.

use crate::ksm;
use crate::ktap;
use crate::mem::Mapping;
use crate::util::*;
use std::collections::HashMap;
use std::fs;
use std::time::Duration;

const CTL: &str = "/sys/kernel/debug/spt_cptest/ctl";
const N: usize = 64;

fn control(cmd: &str) -> Result<(), String> {
    fs::write(format!("{CTL}/control"), cmd)
        .map_err(|e| format!("control {:?}: {e}", cmd.lines().next()))
}

fn stats() -> Result<HashMap<String, u64>, String> {
    let s = fs::read_to_string(format!("{CTL}/stats")).map_err(|e| format!("stats: {e}"))?;
    Ok(s.lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect())
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Ev {
    addr: usize,
    old_pfn: u64,
    old_w: bool,
    new_pfn: u64,
    new_w: bool,
    zero: bool,
    inside: bool,
}

fn log() -> Result<Vec<Ev>, String> {
    let s = fs::read_to_string(format!("{CTL}/log")).map_err(|e| format!("log: {e}"))?;
    s.lines()
        .map(|l| {
            let v: Vec<u64> = l
                .split(' ')
                .map(|w| w.parse().unwrap_or(u64::MAX))
                .collect();
            if v.len() != 7 || v.contains(&u64::MAX) {
                return Err(format!("bad log line {l:?}"));
            }
            Ok(Ev {
                addr: v[0] as usize,
                old_pfn: v[1],
                old_w: v[2] == 1,
                new_pfn: v[3],
                new_w: v[4] == 1,
                zero: v[5] == 1,
                inside: v[6] == 1,
            })
        })
        .collect()
}

/// Compares counters with expected values, all at once, so a failure shows the whole picture.
fn expect_stats(when: &str, want: &[(&str, u64)]) -> Result<(), String> {
    let s = stats()?;
    let bad: Vec<String> = want
        .iter()
        .filter(|(k, v)| s.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}={} (expected {v})",
                s.get(*k).map_or("missing".into(), |x| x.to_string())
            )
        })
        .collect();
    check(bad.is_empty(), || {
        format!("{when}: {}\nstats: {s:?}", bad.join(", "))
    })
}

fn expect_log(when: &str, want: &[Ev]) -> Result<(), String> {
    let got = log()?;
    check(got == want, || {
        let first = got.iter().zip(want).position(|(g, w)| g != w);
        format!(
            "{when}: log has {} events, expected {}; first difference at {:?}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            first,
            first.and_then(|i| got.get(i)),
            first.and_then(|i| want.get(i)),
        )
    })
}

fn scenario(mode: &str) -> Result<(), String> {
    let keep = mode == "keep";
    ksm::reset(N)?;
    let m = Mapping::anon(N)?;
    for i in 0..N {
        m.fill(i, 0x5a);
    }
    let p = m.present_pfns()?;
    let mut distinct = p.clone();
    distinct.sort_unstable();
    distinct.dedup();
    check(distinct.len() == N, || {
        "freshly written pages share pfns".into()
    })?;

    control(&format!("attach {mode} {} {}", m.addr, m.addr + m.len))?;
    let mut cmd = String::new();
    for (i, pfn) in p.iter().enumerate() {
        cmd += &format!("track {} {pfn} 1\n", m.page_addr(i));
    }
    control(&cmd)?;
    expect_stats(
        "after attach",
        &[("entries", N as u64), ("change_pte", 0), ("zapped", 0)],
    )?;

    // --- KSM merge ---------------------------------------------------------------------------
    m.madvise(libc::MADV_MERGEABLE)?;
    let scans = ksm::run_until(Duration::from_secs(60), || {
        let v = m.pfns()?;
        Ok(v.iter().all(|x| x.is_some() && *x == v[0]))
    })?;
    let k = m.present_pfns()?[0];
    // N pages merge into one KSM page (N < max_page_sharing). KSM write-protects every page
    // (N calls: RW->RO, same pfn) and replaces every page but one with the KSM page (N-1 calls:
    // RO->RO, new pfn): the first page of the first pair merged becomes the KSM page in place.
    let replaced = p.iter().filter(|&&x| x != k).count();
    check(replaced == N - 1, || {
        format!("{replaced} pages changed pfn, expected {}", N - 1)
    })?;
    let mut want = Vec::new();
    for i in 0..N {
        let addr = m.page_addr(i);
        want.push(Ev {
            addr,
            old_pfn: p[i],
            old_w: true,
            new_pfn: p[i],
            new_w: false,
            zero: false,
            inside: true,
        });
        if p[i] != k {
            want.push(Ev {
                addr,
                old_pfn: p[i],
                old_w: false,
                new_pfn: k,
                new_w: false,
                zero: false,
                inside: true,
            });
        }
    }
    // KSM visits pages in its own order; compare per page, in call order within each page.
    let sort = |v: &mut Vec<Ev>| v.sort_by_key(|e| (e.addr, !e.old_w));
    let calls = (N + replaced) as u64;
    if keep {
        let mut got = log()?;
        sort(&mut got);
        sort(&mut want);
        check(got == want, || {
            format!(
                "merge: log differs: got {} events {:?}..., expected {} {:?}...",
                got.len(),
                got.first(),
                want.len(),
                want.first()
            )
        })?;
        expect_stats(
            "after merge",
            &[
                ("entries", N as u64),
                ("flagged_starts", calls),
                ("kept", calls),
                ("zapped", 0),
                ("change_pte", calls),
                ("change_pte_absent", 0),
                ("change_pte_outside", 0),
                ("change_pte_illegal", 0),
                ("log_dropped", 0),
                ("in_progress", 0),
            ],
        )?;
    } else {
        expect_log("merge (zap mode)", &[])?;
        expect_stats(
            "after merge (zap mode)",
            &[
                ("entries", 0),
                ("flagged_starts", calls),
                ("kept", 0),
                ("zapped", N as u64),
                ("change_pte", calls),
                ("change_pte_absent", calls),
                ("change_pte_outside", 0),
                ("in_progress", 0),
            ],
        )?;
    }

    // --- COW break by a process write --------------------------------------------------------
    control("clearlog")?;
    for i in 0..N {
        m.fill(i, (i % 250) as u8 + 1);
    }
    let q = m.present_pfns()?;
    check(q.iter().all(|x| *x != k), || {
        "a page still maps the KSM page after the write".into()
    })?;
    let want: Vec<Ev> = (0..N)
        .map(|i| Ev {
            addr: m.page_addr(i),
            old_pfn: k,
            old_w: false,
            new_pfn: q[i],
            new_w: true,
            zero: false,
            inside: true,
        })
        .collect();
    let calls2 = calls + N as u64;
    if keep {
        // The process writes the pages in order: one RO->RW new-pfn call each, in that order.
        expect_log("COW break", &want)?;
        expect_stats(
            "after COW break",
            &[
                ("entries", N as u64),
                ("flagged_starts", calls2),
                ("kept", calls2),
                ("zapped", 0),
                ("change_pte", calls2),
                ("change_pte_absent", 0),
                ("change_pte_outside", 0),
                ("change_pte_illegal", 0),
                ("in_progress", 0),
            ],
        )?;
    } else {
        expect_log("COW break (zap mode)", &[])?;
        expect_stats(
            "after COW break (zap mode)",
            &[
                ("entries", 0),
                ("flagged_starts", calls2),
                ("change_pte", calls2),
                ("change_pte_absent", calls2),
                ("change_pte_outside", 0),
            ],
        )?;
    }

    // --- An unflagged invalidation still zaps ------------------------------------------------
    let before = stats()?;
    m.madvise(libc::MADV_DONTNEED)?;
    expect_stats(
        "after MADV_DONTNEED",
        &[
            ("entries", 0),
            ("zapped", N as u64),
            ("change_pte", calls2),
            ("in_progress", 0),
        ],
    )?;
    let s = stats()?;
    control("detach")?;
    ksm::write("run", "2")?;
    println!(
        "{mode}: {N} pages, KSM merged after {scans} scans. {} change_pte calls ({N} write-protect, \
         {replaced} replace, {N} COW): {} updated an entry in place, {} found nothing \
         (entries zapped by KSM/COW: {}; by the unflagged MADV_DONTNEED after: {}). \
         {} calls elsewhere in the process.",
        s["change_pte"],
        s["change_pte"] - s["change_pte_absent"],
        s["change_pte_absent"],
        before["zapped"],
        s["zapped"] - before["zapped"],
        s["change_pte_elsewhere"]
    );
    Ok(())
}

/// `use_zero_pages=1`: KSM replaces zero-filled pages with the shared zero page (RO->RO, new pfn:
/// the zero page, flagged `zero_page`), and a write breaks COW from it (RO->RW, new pfn).
fn zero_page_scenario() -> Result<(), String> {
    ksm::reset(N)?;
    ksm::write("use_zero_pages", "1")?;
    let m = Mapping::anon(N)?;
    for i in 0..N {
        // Write zeros: the pages must be real anonymous pages, not the zero page already.
        m.fill(i, 1);
        m.fill(i, 0);
    }
    let p = m.present_pfns()?;
    control(&format!("attach keep {} {}", m.addr, m.addr + m.len))?;
    let mut cmd = String::new();
    for (i, pfn) in p.iter().enumerate() {
        cmd += &format!("track {} {pfn} 1\n", m.page_addr(i));
    }
    control(&cmd)?;
    m.madvise(libc::MADV_MERGEABLE)?;
    let scans = ksm::run_until(Duration::from_secs(60), || {
        let v = m.pfns()?;
        Ok(v.iter().all(|x| x.is_some() && *x == v[0]))
    })?;
    let z = m.present_pfns()?[0];
    check(p.iter().all(|&x| x != z), || {
        "a page already mapped the zero pfn before merging".into()
    })?;
    // Every page: write-protect (RW->RO, same pfn), then replace with the zero page.
    let mut want = Vec::new();
    for i in 0..N {
        let addr = m.page_addr(i);
        want.push(Ev {
            addr,
            old_pfn: p[i],
            old_w: true,
            new_pfn: p[i],
            new_w: false,
            zero: false,
            inside: true,
        });
        want.push(Ev {
            addr,
            old_pfn: p[i],
            old_w: false,
            new_pfn: z,
            new_w: false,
            zero: true,
            inside: true,
        });
    }
    let mut got = log()?;
    got.sort_by_key(|e| (e.addr, !e.old_w));
    check(got == want, || {
        format!(
            "zero-page merge: log differs: got {} events {:?}..., expected {} {:?}...",
            got.len(),
            got.first(),
            want.len(),
            want.first()
        )
    })?;
    let calls = 2 * N as u64;
    expect_stats(
        "after zero-page merge",
        &[
            ("entries", N as u64),
            ("change_pte", calls),
            ("kept", calls),
            ("zapped", 0),
            ("change_pte_absent", 0),
            ("change_pte_outside", 0),
            ("change_pte_illegal", 0),
        ],
    )?;
    control("clearlog")?;
    for i in 0..N {
        m.fill(i, 7);
    }
    let q = m.present_pfns()?;
    let want: Vec<Ev> = (0..N)
        .map(|i| Ev {
            addr: m.page_addr(i),
            old_pfn: z,
            old_w: false,
            new_pfn: q[i],
            new_w: true,
            zero: false,
            inside: true,
        })
        .collect();
    expect_log("COW break from the zero page", &want)?;
    expect_stats(
        "after COW break from the zero page",
        &[
            ("entries", N as u64),
            ("change_pte", calls + N as u64),
            ("change_pte_absent", 0),
        ],
    )?;
    control("detach")?;
    ksm::write("run", "2")?;
    ksm::write("use_zero_pages", "0")?;
    println!(
        "zero pages: {N} zero-filled pages, KSM merged after {scans} scans: {N} write-protect and \
         {N} replace-with-zero-page (zero_page set) calls, then {N} COW breaks from the zero page, \
         all updated in place"
    );
    Ok(())
}

pub fn change_pte_reachable(_: &[String]) -> Result<(), String> {
    sh("insmod", &["/lib/modules/spt_cptest.ko"])?;
    ktap::start(Some(3));
    ktap::stop_at_failure();
    ktap::case("flag honoured (keep)", || scenario("keep"));
    ktap::case("flag ignored (zap)", || scenario("zap"));
    ktap::case("zero pages", zero_page_scenario);
    let _ = control("detach");
    sh("rmmod", &["spt_cptest"])?;
    ktap::finish()
}
