// SPDX-License-Identifier: GPL-2.0

//! `ATTACH` and `DETACH`: a file belongs to the address space that opened it.

use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;

fn dir_exists(id: u64) -> bool {
    std::path::Path::new(&format!("{DEBUGFS}/{id}")).exists()
}

fn eq(what: &str, got: u64, want: u64) -> Result<(), String> {
    check(got == want, || {
        format!("{what}: got {got}, expected {want}")
    })
}

fn want_err<T: std::fmt::Debug>(
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

pub fn attach(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    ktap::start(Some(1));
    ktap::case(
        "another address space gets EPERM, DETACH included",
        other_address_space,
    );
    ktap::finish()?;
    println!("mirror_attach: EPERM from another address space, DETACH and ATTACH included");
    Ok(())
}
