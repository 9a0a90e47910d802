// SPDX-License-Identifier: GPL-2.0

//! `ATTACH` and `DETACH`: a failing `ATTACH` changes nothing, a file belongs to the address space
//! that opened it, and an address space has at most `max_attachments_per_mm` attachments.

use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::sync::{Arc, Barrier};

fn attachments() -> Result<u64, String> {
    debugfs_counter("global", "attachments")
}

fn dir_exists(id: u64) -> bool {
    std::path::Path::new(&format!("{DEBUGFS}/{id}")).exists()
}

pub(crate) fn want_err<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, Errno>,
    want: Errno,
) -> Result<(), String> {
    match r {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(format!(
            "{what}: {} (expected {})",
            errname(e),
            errname(want)
        )),
        Ok(v) => Err(format!(
            "{what}: succeeded with {v:?} (expected {})",
            errname(want)
        )),
    }
}

/// The id the next successful `ATTACH` gets: attach and detach once (nothing else attaches
/// while this test runs).
fn next_id(s: &Spt, m: &Mapping) -> Result<u64, String> {
    let id = s.attach(m.addr, PAGE, MODE_CHANGE_PTE)?;
    s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    Ok(id + 1)
}

/// An `ATTACH` whose argument can be read but not written gets `EFAULT` and leaves nothing: the
/// range is not attached (a second `ATTACH` succeeds, not `EBUSY`), no debugfs directory, no
/// attachment counted, no release counted, and the id is not used up.
fn reply_not_writable() -> Result<(), String> {
    let m = Mapping::anon(4)?;
    let s = Spt::open()?;
    let id = next_id(&s, &m)?;
    let (base, releases) = (attachments()?, debugfs_counter("global", "releases")?);
    let arg = Mapping::anon(1)?;
    let a = Attach {
        size: std::mem::size_of::<Attach>() as u32,
        mode: MODE_CHANGE_PTE,
        start: m.addr as u64,
        length: (4 * PAGE) as u64,
        id: 0,
    };
    // SAFETY: `Attach` is plain data; the page is ours and larger than it.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&a as *const Attach).cast::<u8>(),
            std::mem::size_of::<Attach>(),
        )
    };
    arg.put(0, bytes);
    arg.mprotect(libc::PROT_READ)?;
    want_err(
        "ATTACH with a read-only reply",
        raw_ioctl(s.fd(), IOC_ATTACH, arg.addr),
        libc::EFAULT,
    )?;
    eq("attachments after the failed ATTACH", attachments()?, base)?;
    eq(
        "releases after the failed ATTACH",
        debugfs_counter("global", "releases")?,
        releases,
    )?;
    check(!dir_exists(id), || {
        format!("{DEBUGFS}/{id} exists after the failed ATTACH")
    })?;
    want_err("STATS after the failed ATTACH", s.try_stats(), libc::ENXIO)?;
    let got = s.attach(m.addr, 4 * PAGE, MODE_CHANGE_PTE)?;
    eq("id of the next ATTACH", got, id)?;
    s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    Ok(())
}

/// Two threads `ATTACH` on one file at once, 40 times: one wins, the other gets `EBUSY`, and
/// the loser takes no id (the winners' ids follow each other).
fn concurrent_attach() -> Result<(), String> {
    const ROUNDS: u64 = 40;
    let m = Arc::new(Mapping::anon(4)?);
    let s = Arc::new(Spt::open()?);
    let first = next_id(&s, &m)?;
    let base = attachments()?;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, m, barrier) = (s.clone(), m.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.try_attach(m.addr, 4 * PAGE, MODE_CHANGE_PTE)
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in threads {
            results.push(t.join().map_err(|_| "thread panicked".to_string())?);
        }
        let won: Vec<u64> = results.iter().filter_map(|r| r.ok()).collect();
        let busy = results.iter().filter(|r| *r == &Err(libc::EBUSY)).count();
        check(won.len() == 1 && busy == 1, || {
            format!("round {round}: {results:?}, expected one id and one EBUSY")
        })?;
        eq(
            &format!("round {round}: the winner's id"),
            won[0],
            first + round,
        )?;
        eq("attachments with one winner", attachments()?, base + 1)?;
        s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    }
    eq("attachments after the rounds", attachments()?, base)?;
    Ok(())
}

/// A child that inherited the file (attached, and another one not attached) gets `EPERM` for
/// every ioctl, `DETACH` and `ATTACH` of its own memory included; the parent's attachment is
/// untouched.
fn other_address_space() -> Result<(), String> {
    let m = Mapping::anon(8)?;
    for i in 0..8 {
        m.fill(i, 0x40 + i as u8);
    }
    let s = Spt::open()?;
    let unattached = Spt::open()?;
    let id = s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
    s.fault(m.addr, m.len, false)?;
    // SAFETY: Single-threaded here; the child only makes system calls on our memory and files.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let own = Mapping::anon(2).map(|o| o.addr).unwrap_or(m.addr);
        let calls: [(&str, Result<(), Errno>); 7] = [
            ("DETACH", s.detach()),
            (
                "ATTACH on the attached file",
                s.try_attach(own, PAGE, 0).map(|_| ()),
            ),
            ("FAULT", s.try_fault(m.addr, PAGE, false).map(|_| ())),
            ("READ", s.try_read(m.addr, &mut [0u8; 8]).map(|_| ())),
            ("STATS", s.try_stats().map(|_| ())),
            (
                "ATTACH on an unattached file",
                unattached.try_attach(own, PAGE, 0).map(|_| ()),
            ),
            ("DETACH of an unattached file", unattached.detach()),
        ];
        let bad = calls.iter().position(|(_, r)| *r != Err(libc::EPERM));
        // SAFETY: Leaving the child; the exit code names the first call that was not EPERM.
        unsafe { libc::_exit(bad.map_or(0, |i| 10 + i as i32)) };
    }
    check(pid > 0, || "fork failed".into())?;
    let mut status = 0;
    // SAFETY: Waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || {
            format!(
                "child: status {status:#x} (10 + the index of the first call that was not EPERM)"
            )
        },
    )?;
    // The fork write-protected the parent's pages (an invalidation: the entries are gone); the
    // attachment is still the parent's and works.
    let st = s.stats()?;
    eq(
        "mode after the child",
        st.mode as u64,
        MODE_CHANGE_PTE as u64,
    )?;
    check(dir_exists(id), || {
        format!("{DEBUGFS}/{id} gone after the child")
    })?;
    let (data, _) = s.read(m.addr, m.len)?;
    check(data == m.bytes(0, m.len), || {
        "read after the child: wrong data".into()
    })?;
    want_err(
        "STATS of the unattached file",
        unattached.try_stats(),
        libc::ENXIO,
    )?;
    unattached.attach(m.addr, PAGE, MODE_ZAP)?;
    s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    Ok(())
}

/// `max_attachments_per_mm` (default 16): the 17th attachment of a process gets `ENOSPC` and
/// leaves nothing behind, another process is not limited by ours, and a closed attachment frees
/// its place. With `max_attachments_per_mm=2` loaded, the third gets `ENOSPC`.
fn per_mm_cap() -> Result<(), String> {
    let m = Mapping::anon(2)?;
    let probe = Spt::open()?;
    let first = next_id(&probe, &m)?;
    drop(probe);
    let base = attachments()?;
    let mut files = Vec::new();
    for i in 0..16 {
        let s = Spt::open()?;
        eq(
            &format!("id of attachment {i}"),
            s.attach(m.addr, PAGE, MODE_ZAP)?,
            first + i,
        )?;
        files.push(s);
    }
    let extra = Spt::open()?;
    want_err(
        "17th ATTACH",
        extra.try_attach(m.addr, PAGE, MODE_ZAP),
        libc::ENOSPC,
    )?;
    eq("attachments at the cap", attachments()?, base + 16)?;
    check(!dir_exists(first + 16), || {
        "a directory for the refused ATTACH".into()
    })?;
    // SAFETY: Single-threaded here; the child uses its own file and memory.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = Spt::open()
            .and_then(|s| s.attach(m.addr, PAGE, MODE_ZAP))
            .is_ok();
        // SAFETY: Leaving the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: Waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || "a child could not attach while its parent was at the cap".into(),
    )?;
    files.pop();
    // The child's attachment took id first + 16; ours is the next.
    eq(
        "ATTACH after a close",
        extra.attach(m.addr, PAGE, MODE_ZAP)?,
        first + 17,
    )?;
    drop(files);
    drop(extra);
    eq("attachments after closing", attachments()?, base)?;

    rmmod()?;
    sh("insmod", &[MODULE, "max_attachments_per_mm=2"])?;
    let r = (|| -> Result<(), String> {
        let (a, b, c) = (Spt::open()?, Spt::open()?, Spt::open()?);
        a.attach(m.addr, PAGE, MODE_ZAP)?;
        b.attach(m.addr, PAGE, MODE_ZAP)?;
        want_err(
            "3rd ATTACH with max_attachments_per_mm=2",
            c.try_attach(m.addr, PAGE, MODE_ZAP),
            libc::ENOSPC,
        )
    })();
    rmmod()?;
    insmod()?;
    r
}

pub fn attach(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    ktap::start(Some(4));
    ktap::case(
        "ATTACH with a reply it cannot write changes nothing",
        reply_not_writable,
    );
    ktap::case(
        "concurrent ATTACH on one file: one wins, no id lost",
        concurrent_attach,
    );
    ktap::case(
        "another address space gets EPERM, DETACH included",
        other_address_space,
    );
    ktap::case("max_attachments_per_mm: ENOSPC beyond it", per_mm_cap);
    ktap::finish()?;
    println!("mirror_attach: failing ATTACHes change nothing; EPERM from another address space; ENOSPC beyond 16 attachments per process");
    Ok(())
}
