// SPDX-License-Identifier: GPL-2.0

//! Lifecycle races: close during faults, module load/unload cycles with processes attaching, a
//! killed process reaped with `process_mrelease()` (non-blockable invalidations, as from the OOM
//! reaper), table allocation refused by the `max_table_pages` cap, and migration while a `READ`
//! waits on its destination.

use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::Duration;

fn attachments() -> Result<u64, String> {
    debugfs_counter("global", "attachments")
}

fn wait_child(pid: i32, what: &str) -> Result<i32, String> {
    let mut status = 0;
    // SAFETY: Waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("{what}: waitpid failed"));
    }
    Ok(status)
}

/// Close the file while two threads fault, read and zap through it.
fn close_during_faults() -> Result<(), String> {
    let base = attachments()?;
    for round in 0..10 {
        let m = Arc::new(Mapping::anon(256)?);
        for i in 0..256 {
            m.fill(i, i as u8);
        }
        let s = Spt::open()?;
        s.attach(m.addr, m.len, (round % 2) as u32)?;
        let fd = s.file.into_raw_fd();
        let mut threads = Vec::new();
        for t in 0..2usize {
            let m = m.clone();
            threads.push(std::thread::spawn(move || -> Result<u64, String> {
                // Borrow the descriptor without owning it: the main thread closes it.
                // SAFETY: `fd` is open until the main thread closes it; `ManuallyDrop` never
                // closes it from here.
                let s = std::mem::ManuallyDrop::new(Spt {
                    file: unsafe { std::fs::File::from_raw_fd(fd) },
                });
                let mut buf = vec![0u8; 64 * PAGE];
                let mut ok = 0;
                loop {
                    match s.try_read(m.addr + t * 64 * PAGE, &mut buf) {
                        Ok(_) => ok += 1,
                        // The file is gone (EBADF) or another file took the number (ENOTTY...).
                        Err(e) if e == libc::EBADF || e == libc::ENOTTY => return Ok(ok),
                        Err(e) => return Err(format!("read during close: {}", errname(e))),
                    }
                    let _ = Mapping::view(m.addr + t * 64 * PAGE, 64 * PAGE)
                        .madvise(libc::MADV_DONTNEED);
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(20 + 10 * round));
        // SAFETY: Closing the descriptor we own (taken from the `File` above).
        unsafe { libc::close(fd) };
        for t in threads {
            t.join().map_err(|_| "thread panicked".to_string())??;
        }
        eq(
            "attachments after close during faults",
            attachments()?,
            base,
        )?;
    }
    println!("close during faults: 10 rounds, the attachment went away each time");
    Ok(())
}

/// Load, let processes attach and fault (some exit without closing), unload; 10 times.
fn load_unload_attaching() -> Result<(), String> {
    ensure_unloaded()?;
    for cycle in 0..10 {
        insmod()?;
        let mut pids = Vec::new();
        for c in 0..3 {
            // SAFETY: Single-threaded here; the child leaves with `_exit`.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let r = (|| -> Result<(), String> {
                    let m = Mapping::anon(128)?;
                    let s = Spt::open()?;
                    s.attach(m.addr, m.len, (c % 2) as u32)?;
                    s.fault(m.addr, m.len, c == 1)?;
                    std::thread::sleep(Duration::from_millis(30));
                    if c == 2 {
                        // Exit with the file open and the attachment alive.
                        // SAFETY: Leaving the child.
                        unsafe { libc::_exit(0) };
                    }
                    Ok(())
                })();
                // SAFETY: Leaving the child.
                unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) };
            }
            pids.push(pid);
        }
        // While the children hold files, unloading must be refused.
        std::thread::sleep(Duration::from_millis(5));
        let busy = rmmod().is_err();
        for pid in pids {
            let st = wait_child(pid, "attaching child")?;
            check(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, || {
                format!("cycle {cycle}: child failed ({st:#x})")
            })?;
        }
        if module_loaded() {
            rmmod()?;
        } else {
            check(!busy, || "rmmod failed but the module is gone".into())?;
        }
    }
    insmod()?;
    println!("10 load/unload cycles with 3 processes attaching each (one exiting with its attachment open)");
    Ok(())
}

/// SIGKILL an attached process and reap its memory with `process_mrelease()`: the notifier sees
/// non-blockable invalidations (the OOM reaper's path) and must not sleep.
fn reaped() -> Result<(), String> {
    let base = attachments()?;
    let nonblock0 = debugfs_counter("global", "invalidate_nonblock")?;
    let mut reaped_by_us = 0;
    // process_mrelease() also returns 0 when the exit got there first (MMF_OOM_SKIP): then
    // nothing was reaped and no non-blockable invalidation happened. At least 5 rounds, and
    // more (up to 20) until one reap really went through the mirror's non-blockable path.
    let mut rounds = 0;
    for round in 0..20 {
        if round >= 5 && debugfs_counter("global", "invalidate_nonblock")? > nonblock0 {
            break;
        }
        rounds += 1;
        let go = pipe()?;
        // SAFETY: Single-threaded here; the child never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let r = (|| -> Result<(), String> {
                let m = Mapping::anon(4096)?;
                for i in 0..4096 {
                    m.put(i * PAGE, &[1]);
                }
                let s = Arc::new(Spt::open()?);
                s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
                s.fault(m.addr, m.len, false)?;
                let (s2, addr) = (s.clone(), m.addr);
                std::thread::spawn(move || loop {
                    let _ = s2.try_fault(addr, 4096 * PAGE, true);
                });
                // SAFETY: Telling the parent we are ready.
                unsafe { libc::write(go[1], b"r".as_ptr().cast(), 1) };
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            })();
            // SAFETY: Leaving the child.
            unsafe { libc::_exit(if r.is_ok() { 0 } else { 1 }) };
        }
        let mut b = [0u8; 1];
        // SAFETY: Reading one byte from our pipe.
        unsafe { libc::read(go[0], b.as_mut_ptr().cast(), 1) };
        // SAFETY: pidfd_open/kill/process_mrelease on our own child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        check(pidfd >= 0, || "pidfd_open".into())?;
        // SAFETY: Killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // SAFETY: Reaping the memory of our killed child.
        let r = unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd, 0) };
        if r == 0 {
            reaped_by_us += 1;
        }
        // SAFETY: Closing our pidfd and pipe.
        unsafe {
            libc::close(pidfd);
            libc::close(go[0]);
            libc::close(go[1]);
        }
        let st = wait_child(pid, "reaped child")?;
        check(libc::WIFSIGNALED(st), || {
            format!("round {round}: child not killed ({st:#x})")
        })?;
        eq("attachments after the reaped child", attachments()?, base)?;
    }
    let nonblock = debugfs_counter("global", "invalidate_nonblock")? - nonblock0;
    check(reaped_by_us == 0 || nonblock > 0, || {
        format!("process_mrelease returned 0 {reaped_by_us} times in {rounds} rounds but no non-blockable invalidation was seen")
    })?;
    println!(
        "{rounds} attached processes SIGKILLed while faulting; process_mrelease returned 0 for {reaped_by_us} of them: {nonblock} non-blockable invalidations, no splat"
    );
    Ok(())
}

/// With `max_table_pages=6`, faults that need a seventh table fail with ENOMEM and change
/// nothing; the rest of the table keeps working.
fn table_cap() -> Result<(), String> {
    ensure_unloaded()?;
    sh("insmod", &[MODULE, "max_table_pages=6"])?;
    let r = (|| -> Result<(), String> {
        // 8 MiB: four 2 MiB leaves if aligned, five otherwise.
        let m = Mapping::anon(2048)?;
        for i in 0..2048 {
            m.put(i * PAGE, &[1]);
        }
        let s = Spt::open()?;
        s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
        let mut ok = 0u64;
        let mut enomem = 0u64;
        for i in 0..2048 {
            match s.try_fault(m.addr + i * PAGE, PAGE, false) {
                Ok(_) => ok += 1,
                Err(libc::ENOMEM) => enomem += 1,
                Err(e) => return Err(format!("fault {i}: {}", errname(e))),
            }
        }
        let st = s.stats()?;
        eq("table pages at the cap", st.table_pages, 6)?;
        eq("present entries", st.present, ok)?;
        check(enomem > 0, || "the cap was never reached".into())?;
        // The same decisions, simulated: a fault succeeds if the tables it adds keep the total
        // (root included) at 6 or below.
        let mut tables = std::collections::BTreeSet::new();
        let mut want = 0u64;
        for i in 0..2048 {
            let a = m.addr + i * PAGE;
            let need: Vec<(u8, usize)> = vec![(2, a >> 39), (1, a >> 30), (0, a >> 21)];
            let missing = need.iter().filter(|t| !tables.contains(*t)).count();
            if 1 + tables.len() + missing <= 6 {
                tables.extend(need);
                want += 1;
            }
        }
        eq("pages mapped under the cap", ok, want)?;
        check_no_stale(&s.snapshot(m.addr, m.pages())?, "after the cap")?;
        let (data, f) = s.read(m.addr, PAGE)?;
        check(data[0] == 1 && f == 0, || {
            "read through the capped table".into()
        })?;
        // A FAULT, READ and WRITE of the whole region fail with ENOMEM at the first leaf table
        // the cap refuses, after their lookup took references on up to 512 pages of it: none
        // may outlive the failure, so every refused page must still migrate.
        let snap = s.snapshot(m.addr, m.pages())?;
        let refused: Vec<usize> = (0..2048)
            .filter(|&i| snap[i] & PAGE_PRESENT == 0)
            .map(|i| m.page_addr(i))
            .collect();
        eq("pages the cap refused", refused.len() as u64, enomem)?;
        let whole = m.bytes(0, m.len);
        let mut buf = vec![0u8; m.len];
        for (what, r) in [
            ("FAULT", s.try_fault(m.addr, m.len, false)),
            ("READ", s.try_read(m.addr, &mut buf)),
            ("WRITE", s.try_write(m.addr, &whole)),
        ] {
            check(r == Err(libc::ENOMEM), || {
                format!("{what} of the whole region under the cap: {r:?}, expected ENOMEM")
            })?;
        }
        let now = crate::stress::move_pages(&refused, None)?;
        let to: Vec<i32> = now.iter().map(|&n| 1 - n.clamp(0, 1)).collect();
        let after = crate::stress::move_pages(&refused, Some(&to))?;
        let moved = after.iter().zip(&to).filter(|(a, t)| a == t).count();
        check(moved == refused.len(), || {
            format!(
                "{moved} of the {} refused pages migrated after the failed calls (statuses {:?})",
                refused.len(),
                &after[..after.len().min(8)]
            )
        })?;
        check(m.bytes(0, m.len) == whole, || {
            "data changed by the failed calls".into()
        })?;
        println!("max_table_pages=6: {ok} pages mapped, {enomem} faults refused with ENOMEM, table intact; after a FAULT, READ and WRITE failing there, all {moved} refused pages migrated");
        Ok(())
    })();
    rmmod()?;
    insmod()?;
    r
}

/// `struct uffdio_api`, `struct uffdio_register`, `struct uffdio_copy` (linux/userfaultfd.h).
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// A READ whose destination never resolves holds no mirrored page: with the READ blocked on a
/// userfaultfd-registered buffer (missing pages, the fault left unresolved), `move_pages()`
/// must move every mirrored page to the other node; once the buffer is resolved, the READ
/// completes with the process's data.
fn read_into_userfaultfd() -> Result<(), String> {
    const N: usize = 64;
    let src = Arc::new(Mapping::anon(N)?);
    for i in 0..N {
        src.fill(i, 0x30 + i as u8);
    }
    let s = Arc::new(Spt::open()?);
    s.attach(src.addr, src.len, MODE_CHANGE_PTE)?;
    eq(
        "faults of the source",
        s.fault(src.addr, src.len, false)?,
        N as u64,
    )?;
    let dst = Arc::new(Mapping::anon(N)?);
    // SAFETY: A new userfaultfd; every ioctl below gets a live structure of its size.
    let uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
    check(uffd >= 0, || {
        format!("userfaultfd: {}", std::io::Error::last_os_error())
    })?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: 0,
        ioctls: 0,
    };
    let mut reg = UffdioRegister {
        start: dst.addr as u64,
        len: dst.len as u64,
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: See above.
    let ok = unsafe {
        libc::ioctl(uffd, UFFDIO_API as _, &mut api) == 0
            && libc::ioctl(uffd, UFFDIO_REGISTER as _, &mut reg) == 0
    };
    check(ok, || {
        format!("userfaultfd setup: {}", std::io::Error::last_os_error())
    })?;
    let reader = {
        let (s, src, dst) = (s.clone(), src.clone(), dst.clone());
        std::thread::spawn(move || {
            // SAFETY: `dst` is our mapping of `src.len` bytes, alive until the join below.
            let buf = unsafe { std::slice::from_raw_parts_mut(dst.addr as *mut u8, src.len) };
            s.try_read(src.addr, buf)
        })
    };
    // The READ's first copy to the destination faults: its event says the READ is blocked.
    let mut msg = [0u8; 32];
    // SAFETY: Reading one `struct uffd_msg` into a buffer of its size.
    let n = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), 32) };
    check(n == 32 && msg[0] == 0x12, || {
        format!(
            "no page fault event from the READ ({n} bytes, event {:#x})",
            msg[0]
        )
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let addrs: Vec<usize> = (0..N).map(|i| src.page_addr(i)).collect();
    let now = crate::stress::move_pages(&addrs, None)?;
    let to: Vec<i32> = now.iter().map(|&n| 1 - n.clamp(0, 1)).collect();
    let after = crate::stress::move_pages(&addrs, Some(&to))?;
    let moved = after.iter().zip(&to).filter(|(a, t)| a == t).count();
    // Resolve the destination (zero pages, then overwritten by the READ), let the READ finish.
    let zeros = vec![0u8; dst.len];
    let mut copy = UffdioCopy {
        dst: dst.addr as u64,
        src: zeros.as_ptr() as u64,
        len: dst.len as u64,
        mode: 0,
        copy: 0,
    };
    // SAFETY: See above; `zeros` is as long as the destination.
    let copied = unsafe { libc::ioctl(uffd, UFFDIO_COPY as _, &mut copy) };
    let read = reader.join().map_err(|_| "reader panicked".to_string())?;
    // SAFETY: Closing our userfaultfd.
    unsafe { libc::close(uffd) };
    check(copied == 0, || {
        format!("UFFDIO_COPY: {}", std::io::Error::last_os_error())
    })?;
    check(moved == N, || {
        format!(
            "{moved} of {N} mirrored pages migrated while a READ waited on its destination (statuses {:?})",
            &after[..N.min(20)]
        )
    })?;
    read.map_err(|e| format!("READ into the resolved buffer: {}", errname(e)))?;
    check(dst.bytes(0, dst.len) == src.bytes(0, src.len), || {
        "the READ's data differs from the process's".into()
    })?;
    println!("READ blocked on an unresolved userfaultfd destination: all {N} mirrored pages migrated meanwhile, the READ then completed with the right data");
    Ok(())
}

pub fn races(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    ktap::start(Some(5));
    ktap::stop_at_failure();
    ktap::case("close during faults", close_during_faults);
    ktap::case("load/unload while attaching", load_unload_attaching);
    ktap::case("killed and reaped with process_mrelease", reaped);
    ktap::case("max_table_pages cap", table_cap);
    ktap::case(
        "READ into an unresolved userfaultfd buffer",
        read_into_userfaultfd,
    );
    ktap::finish()
}
