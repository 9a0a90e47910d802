// SPDX-License-Identifier: GPL-2.0

//! `mirror_huge_zap`: a 1 GiB attachment with every entry present is zapped by `munmap` and by
//! exit without holding the table's lock for the whole of it.
//!
//! The entries map the zero page (a read fault of untouched anonymous memory), so the 262,144
//! entries cost the guest no memory but their 2 MiB of tables. shadowpt zaps a range larger
//! than its chunk (16 MiB) at most 4096 entries (and the rest of a leaf table) per hold of the
//! lock, skipping empty stretches, and counts each hold that zapped in `zap_chunks`: a `munmap`
//! of the full attachment takes exactly 262,144 / 4096 = 64 holds, one of a sparse attachment
//! a single hold. At exit, `release` swaps the whole table out and frees it after unlocking:
//! no chunks, the entries counted as zapped, one table (the spare root) left, a hold of at most
//! 1 ms (the broken build `release_whole`, which zaps in one hold, takes milliseconds).

use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;

/// Pages of the attachment: 1 GiB.
pub(crate) const N: usize = 1 << 18;
/// Pages per chunk (`ZAP_CHUNK` in `rust/mirror.rs`).
const CHUNK: usize = 4096;

/// Maps N pages (no swap reserved: they are never written; `make bench`'s `zap_hold` too).
pub(crate) fn map() -> Result<Mapping, String> {
    Mapping::map(
        N,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
    )
}

/// `munmap` of a fully populated 1 GiB attachment: 64 chunks.
fn munmap_full() -> Result<(), String> {
    let m = map()?;
    let s = Spt::open()?;
    s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
    eq("read faults", s.fault(m.addr, m.len, false)?, N as u64)?;
    let before = s.stats()?;
    eq("present before munmap", before.present, N as u64)?;
    drop(m);
    let st = s.stats()?;
    eq("zapped by munmap", st.zapped - before.zapped, N as u64)?;
    eq("present after munmap", st.present, 0)?;
    eq(
        "zap_chunks (262,144 entries / 4096)",
        st.zap_chunks - before.zap_chunks,
        (N / CHUNK) as u64,
    )?;
    check(st.zap_hold_max_ns > 0, || "zap_hold_max_ns is 0".into())?;
    println!(
        "munmap of 1 GiB: {} holds, the longest {} us",
        st.zap_chunks,
        st.zap_hold_max_ns / 1000
    );
    Ok(())
}

/// `munmap` of a 1 GiB attachment with three entries far apart: one hold (empty stretches
/// cost none).
fn munmap_sparse() -> Result<(), String> {
    let m = map()?;
    let s = Spt::open()?;
    s.attach(m.addr, m.len, MODE_ZAP)?;
    for page in [0, N / 2 + 17, N - 1] {
        s.fault(m.page_addr(page), PAGE, false)?;
    }
    let before = s.stats()?;
    drop(m);
    let st = s.stats()?;
    eq("sparse: zapped", st.zapped - before.zapped, 3)?;
    eq("sparse: zap_chunks", st.zap_chunks - before.zap_chunks, 1)
}

/// The longest `release` may hold the table's lock for a 1 GiB table: it swaps the table out
/// (tens of microseconds under TCG); zapping 262,144 entries and freeing 513 tables in one hold
/// takes milliseconds.
const RELEASE_HOLD_MAX_NS: u64 = 1_000_000;

/// A child attaches 1 GiB, populates it and exits. A file is bound to the address space that
/// opened it, so the child opens its own; the parent takes a copy of the child's file
/// (`pidfd_getfd`) before the child exits, which keeps the attachment and its debugfs directory
/// after the exit's `release`: one release, every entry zapped with no chunks and a short hold
/// (`release` swaps the table out), one table left.
fn exit_full() -> Result<(), String> {
    let [id_rd, id_wr] = pipe()?;
    let [go_rd, go_wr] = pipe()?;
    // SAFETY: The child only maps, attaches, faults, uses its pipes and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let r = Spt::open().and_then(|s| {
            let m = map()?;
            let id = s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
            s.fault(m.addr, m.len, false)?;
            let msg = [id, s.fd() as u64];
            // SAFETY: Writing 16 bytes from a local to our pipe, then waiting for one byte.
            let (w, r) = unsafe {
                (
                    libc::write(id_wr, msg.as_ptr().cast(), 16),
                    libc::read(go_rd, [0u8; 1].as_mut_ptr().cast(), 1),
                )
            };
            check(w == 16 && r == 1, || "child: pipes".into())?;
            // Exit with the attachment and the mapping in place.
            std::mem::forget((s, m));
            Ok(())
        });
        if let Err(e) = &r {
            eprintln!("child: {e}");
        }
        // SAFETY: Leaving the child.
        unsafe { libc::_exit(i32::from(r.is_err())) };
    }
    check(pid > 0, || "fork failed".into())?;
    let mut msg = [0u64; 2];
    // SAFETY: Reading 16 bytes into a local from our pipe.
    let n = unsafe { libc::read(id_rd, msg.as_mut_ptr().cast(), 16) };
    // SAFETY: pidfd_open and pidfd_getfd on our child, which waits for us on `go_rd`.
    let copy = unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, msg[1] as i32, 0) as i32;
        libc::close(pidfd);
        fd
    };
    // SAFETY: Letting the child go on, then waiting for it.
    let mut status = 0;
    unsafe {
        libc::write(go_wr, [1u8].as_ptr().cast(), 1);
        libc::waitpid(pid, &mut status, 0);
        for fd in [id_rd, id_wr, go_rd, go_wr] {
            libc::close(fd);
        }
    }
    let r = (|| {
        check(n == 16 && copy >= 0, || {
            format!("no copy of the child's file ({n} bytes, fd {copy})")
        })?;
        check(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            || format!("child: status {status:#x}"),
        )?;
        let dir = msg[0].to_string();
        let c = |name: &str| debugfs_counter(&dir, name);
        eq("exit: releases", c("releases")?, 1)?;
        eq("exit: zapped", c("zapped")?, N as u64)?;
        eq("exit: present", c("present")?, 0)?;
        eq("exit: table_pages", c("table_pages")?, 1)?;
        eq("exit: zap_chunks", c("zap_chunks")?, 0)?;
        let hold = c("zap_hold_max_ns")?;
        println!("exit of 1 GiB: release held the lock {} us", hold / 1000);
        check(hold <= RELEASE_HOLD_MAX_NS, || {
            format!("exit: release held the table lock {hold} ns for 1 GiB (at most {RELEASE_HOLD_MAX_NS})")
        })
    })();
    if copy >= 0 {
        // SAFETY: Our copy of the child's file.
        unsafe { libc::close(copy) };
    }
    r
}

pub fn huge_zap(_args: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    munmap_full()?;
    munmap_sparse()?;
    exit_full()
}
