// SPDX-License-Identifier: GPL-2.0

//! shadowpt's secondary MMU: data through the table, coherence after every kind of change of the
//! primary mapping, ABI errors, and lifecycle. Counters are asserted exactly.

use crate::ktap;
use crate::mem::{Mapping, PAGE};
use crate::spt::*;
use crate::util::*;
use std::ffi::CString;
use std::time::Duration;

/// Pattern byte of page `i`, byte `j`, generation `g`.
fn pat(i: usize, j: usize, g: u8) -> u8 {
    (i as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7) ^ g
}

fn fill(m: &Mapping, g: u8) {
    let data: Vec<u8> = (0..m.len).map(|k| pat(k / PAGE, k % PAGE, g)).collect();
    m.put(0, &data);
}

fn eq_or(what: &str, got: u64, want: u64) -> Result<(), String> {
    check(got == want, || {
        format!("{what}: got {got}, expected {want}")
    })
}

/// Reads all of `m` through the table and compares with what the process sees.
fn verify_data(s: &Spt, m: &Mapping, what: &str) -> Result<u64, String> {
    let (got, faults) = s.read(m.addr, m.len)?;
    let want = m.bytes(0, m.len);
    if let Some(k) = (0..m.len).find(|&k| got[k] != want[k]) {
        return Err(format!(
            "{what}: byte {k} (page {}) through the table is {:#x}, the process sees {:#x}",
            k / PAGE,
            got[k],
            want[k]
        ));
    }
    Ok(faults)
}

/// A tmpfs mount for file-backed tests.
fn tmpfs_file(pages: usize) -> Result<(i32, String), String> {
    let dir = "/tmp/spt-tmpfs";
    let _ = std::fs::create_dir_all(dir);
    let cdir = CString::new(dir).map_err(|e| e.to_string())?;
    let fstype = CString::new("tmpfs").map_err(|e| e.to_string())?;
    // SAFETY: Valid C strings; mounting over our own scratch directory (EBUSY if already done).
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            cdir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        return Err(format!("mount tmpfs: {}", std::io::Error::last_os_error()));
    }
    let path = format!("{dir}/file");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    f.set_len((pages * PAGE) as u64)
        .map_err(|e| format!("truncate: {e}"))?;
    use std::os::fd::IntoRawFd;
    Ok((f.into_raw_fd(), path))
}

/// Read/write through the table for anonymous private, anonymous shared and tmpfs memory:
/// exact data, exactly one fault per absent page touched.
pub fn data(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    const N: usize = 64;
    let (fd, path) = tmpfs_file(N)?;
    // A KTAP case per kind of memory, and the zero page.
    ktap::start(Some(4));
    ktap::stop_at_failure();
    let kinds: [(&str, libc::c_int, libc::c_int); 3] = [
        ("anon-private", libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        ("anon-shared", libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        ("tmpfs-shared", libc::MAP_SHARED, fd),
    ];
    for (g, (kind, flags, fd)) in kinds.into_iter().enumerate() {
        ktap::case(kind, || {
            let m = Mapping::map(N, flags, fd)?;
            fill(&m, g as u8);
            let s = Spt::open()?;
            s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
            let snap = s.snapshot(m.addr, N)?;
            check(snap.iter().all(|&x| x == PAGE_PRIMARY), || {
                format!(
                    "{kind}: fresh attachment snapshot not all 'primary only': {:x?}",
                    &snap[..8]
                )
            })?;
            let faults = verify_data(&s, &m, kind)?;
            eq_or(
                &format!("{kind}: faults reading {N} absent pages"),
                faults,
                N as u64,
            )?;
            eq_or(
                &format!("{kind}: faults re-reading"),
                verify_data(&s, &m, kind)?,
                0,
            )?;
            let st = s.stats()?;
            eq_or(&format!("{kind}: stats.faults"), st.faults, N as u64)?;
            eq_or(&format!("{kind}: stats.present"), st.present, N as u64)?;
            // The root plus one table per distinct 512 GiB, 1 GiB and 2 MiB region touched.
            let span = |shift: u32| ((m.addr + m.len - 1) >> shift) - (m.addr >> shift) + 1;
            let tables = 1 + span(39) + span(30) + span(21);
            eq_or(
                &format!("{kind}: stats.table_pages"),
                st.table_pages,
                tables as u64,
            )?;
            let snap = s.snapshot(m.addr, N)?;
            let want = PAGE_PRESENT | PAGE_PRIMARY | PAGE_PFN_MATCH | PAGE_ACCESSED;
            check(snap.iter().all(|&x| x == want), || {
                format!(
                    "{kind}: snapshot after reads: {:x?}, expected all {want:#x}",
                    &snap[..8]
                )
            })?;
            // A write straddling pages 2 and 3: both read-only entries are upgraded.
            let off = 3 * PAGE - 5;
            let msg = b"through-the-table";
            eq_or(
                &format!("{kind}: faults of a straddling write"),
                s.write(m.addr + off, msg)?,
                2,
            )?;
            check(m.bytes(off, msg.len()) == msg, || {
                format!("{kind}: the process does not see the table's write")
            })?;
            let (back, f) = s.read(m.addr + off, msg.len())?;
            check(back == msg && f == 0, || {
                format!("{kind}: unaligned read back {back:?}, {f} faults")
            })?;
            let snap = s.snapshot(m.addr, N)?;
            for i in [2, 3] {
                let want = PAGE_PRESENT
                    | PAGE_PRIMARY
                    | PAGE_PFN_MATCH
                    | PAGE_ACCESSED
                    | PAGE_WRITABLE
                    | PAGE_DIRTY;
                check(snap[i] == want, || {
                    format!(
                        "{kind}: page {i} after write: {:#x}, expected {want:#x}",
                        snap[i]
                    )
                })?;
            }
            let d = debugfs_counter(&s.attach_id_dir()?, "faults")?;
            eq_or(&format!("{kind}: debugfs faults"), d, N as u64 + 2)?;
            println!("{kind}: {N} pages read through the table with {N} faults, re-read with 0, straddling write upgraded 2 entries; data exact");
            Ok(())
        });
    }
    // SAFETY: Closing the file descriptor we opened.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(path);

    // Untouched anonymous memory: reads map the zero page; a write through the table breaks
    // copy-on-write from it, which change_pte turns into an in-place update of our entry.
    ktap::case("zero page", || {
        let m = Mapping::anon(8)?;
        let s = Spt::open()?;
        s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
        let (z, f) = s.read(m.addr, m.len)?;
        check(z.iter().all(|&b| b == 0) && f == 8, || {
            format!("zero page read: {f} faults or data not zero")
        })?;
        let snap = s.snapshot(m.addr, 8)?;
        check(
            snap.iter()
                .all(|&x| x & PAGE_ZERO != 0 && x & PAGE_PFN_MATCH != 0),
            || format!("untouched pages not mapped to the zero page: {snap:x?}"),
        )?;
        let before = s.stats()?;
        eq_or("write to zero page: faults", s.write(m.addr, b"x")?, 1)?;
        let after = s.stats()?;
        eq_or(
            "write to zero page: change_pte_updated",
            after.change_pte_updated - before.change_pte_updated,
            1,
        )?;
        check(m.bytes(0, 1) == b"x", || {
            "process does not see the write".into()
        })?;
        let snap = s.snapshot(m.addr, 1)?;
        check(
            snap[0] & (PAGE_ZERO | PAGE_WRITABLE | PAGE_PFN_MATCH)
                == PAGE_WRITABLE | PAGE_PFN_MATCH,
            || format!("after COW from the zero page: state {:#x}", snap[0]),
        )?;
        println!("zero page: 8 reads mapped it, a write through the table broke COW and change_pte updated the entry in place");
        Ok(())
    });
    ktap::finish()
}

impl Spt {
    /// The debugfs directory name of this file's attachment, found by matching the range.
    pub fn attach_id_dir(&self) -> Result<String, String> {
        let st = self.stats()?;
        for e in std::fs::read_dir(DEBUGFS).map_err(|e| e.to_string())? {
            let name = e
                .map_err(|e| e.to_string())?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.parse::<u64>().is_err() {
                continue;
            }
            let vals: Result<Vec<u64>, String> =
                COUNTERS.iter().map(|c| debugfs_counter(&name, c)).collect();
            if vals? == st.values() {
                return Ok(name);
            }
        }
        Err("no debugfs directory shows this attachment's counters".into())
    }
}

/// Snapshot + data check of the whole mapping: nothing stale, data exact.
fn verify(s: &Spt, m: &Mapping, what: &str) -> Result<(), String> {
    check_no_stale(&s.snapshot(m.addr, m.pages())?, what)?;
    verify_data(s, m, what)?;
    check_no_stale(&s.snapshot(m.addr, m.pages())?, what)
}

fn coherence_mode(mode: u32, name: &str) -> Result<(), String> {
    const N: usize = 32;
    let m = Mapping::anon(N)?;
    fill(&m, 1);
    let s = Spt::open()?;
    s.attach(m.addr, m.len, mode)?;
    eq_or("prefault", s.fault(m.addr, m.len, false)?, N as u64)?;
    verify(&s, &m, "after prefault")?;

    // MADV_DONTNEED: entries zapped, the process sees zeroes, so must the table.
    Mapping::view(m.addr, 8 * PAGE).madvise(libc::MADV_DONTNEED)?;
    let snap = s.snapshot(m.addr, 8)?;
    check(snap.iter().all(|&x| x & PAGE_PRESENT == 0), || {
        format!("MADV_DONTNEED left entries: {snap:x?}")
    })?;
    verify(&s, &m, "after MADV_DONTNEED")?;
    check(s.read(m.addr, PAGE)?.0.iter().all(|&b| b == 0), || {
        "MADV_DONTNEED: not zero".into()
    })?;

    // mprotect(PROT_READ): writes through the table are refused with EACCES, data unchanged.
    m.mprotect(libc::PROT_READ)?;
    let before = m.bytes(0, m.len);
    let e = s.try_write(m.addr + 9 * PAGE, b"nope");
    check(e == Err(libc::EACCES), || {
        format!("write through read-only memory: {e:?}, expected EACCES")
    })?;
    check(m.bytes(0, m.len) == before, || {
        "a refused write changed memory".into()
    })?;
    verify(&s, &m, "after mprotect(PROT_READ)")?;
    m.mprotect(libc::PROT_READ | libc::PROT_WRITE)?;

    // fork: the child's copy-on-write copies never show through the parent's table, and the
    // parent's own COW breaks keep its table coherent.
    eq_or("write prefault", s.fault(m.addr, m.len, true)?, N as u64)?;
    let go = pipe()?;
    // SAFETY: This test process is single-threaded; the child only uses async-signal-safe calls
    // and our own memory before `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: Reading one byte from our pipe.
        unsafe { libc::read(go[0], b.as_mut_ptr().cast(), 1) };
        // The inherited file is not ours to use.
        let code = match s.try_stats() {
            Err(libc::EPERM) => 0,
            _ => 3,
        };
        for i in 0..N {
            m.fill(i, 0xc5);
        }
        // SAFETY: Leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    check(pid > 0, || "fork failed".into())?;
    verify(&s, &m, "after fork")?;
    let before = s.stats()?;
    // Parent COW breaks while the child still shares the pages.
    for i in 0..4 {
        m.fill(i, 0x3a);
    }
    let after = s.stats()?;
    verify(&s, &m, "after parent COW")?;
    // SAFETY: Writing one byte to our pipe.
    unsafe { libc::write(go[1], b"g".as_ptr().cast(), 1) };
    let mut status = 0;
    // SAFETY: Waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    check(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        || format!("child: status {status:#x} (3: its ioctl on the inherited file was not EPERM)"),
    )?;
    verify(&s, &m, "after child writes and exit")?;
    let snap = s.snapshot(m.addr, N)?;
    check(m.bytes(0, PAGE).iter().all(|&b| b == 0x3a), || {
        "parent lost its write".into()
    })?;
    println!(
        "{name}: fork + parent COW of 4 pages: change_pte {} (updated {}, absent {}); child's writes never visible; snapshot {:x?}",
        after.change_pte - before.change_pte,
        after.change_pte_updated - before.change_pte_updated,
        after.change_pte_absent - before.change_pte_absent,
        &snap[..6]
    );

    // mremap pages 16..24 away, then map fresh memory in the hole.
    let hole = m.addr + 16 * PAGE;
    let away = Mapping::anon(8)?;
    // SAFETY: Moving part of our own mapping onto another of our own mappings.
    let r = unsafe {
        libc::mremap(
            hole as *mut libc::c_void,
            8 * PAGE,
            8 * PAGE,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            away.addr as *mut libc::c_void,
        )
    };
    check(r != libc::MAP_FAILED, || {
        format!("mremap: {}", std::io::Error::last_os_error())
    })?;
    let snap = s.snapshot(hole, 8)?;
    check(snap.iter().all(|&x| x == 0), || {
        format!("after mremap the old range shows {snap:x?}")
    })?;
    let e = s.try_read(hole, &mut [0u8; 16]);
    check(e == Err(libc::EFAULT), || {
        format!("read of the moved-away range: {e:?}, expected EFAULT")
    })?;
    check(away.bytes(0, PAGE) == m_page_pattern(16, 1), || {
        "mremap lost data".into()
    })?;
    // Reuse the hole with fresh memory.
    // SAFETY: Mapping over the hole inside our own mapping.
    let p = unsafe {
        libc::mmap(
            hole as *mut libc::c_void,
            8 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    check(p == hole as *mut libc::c_void, || {
        "mmap into the hole".into()
    })?;
    for i in 16..24 {
        m.fill(i, 0x77);
    }
    verify(&s, &m, "after mremap and reuse")?;

    // munmap pages 24..32 (EFAULT), then map new memory there.
    let tail = m.addr + 24 * PAGE;
    // SAFETY: Unmapping part of our own mapping.
    unsafe { libc::munmap(tail as *mut libc::c_void, 8 * PAGE) };
    let snap = s.snapshot(tail, 8)?;
    check(snap.iter().all(|&x| x == 0), || {
        format!("after munmap: {snap:x?}")
    })?;
    let e = s.try_fault(tail, PAGE, false);
    check(e == Err(libc::EFAULT), || {
        format!("fault of unmapped memory: {e:?}, expected EFAULT")
    })?;
    // SAFETY: Mapping the hole we just made.
    let p = unsafe {
        libc::mmap(
            tail as *mut libc::c_void,
            8 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    check(p == tail as *mut libc::c_void, || "mmap reuse".into())?;
    for i in 24..32 {
        m.fill(i, 0x99);
    }
    verify(&s, &m, "after munmap and reuse")?;
    let st = s.stats()?;
    eq_or("change_pte_illegal", st.change_pte_illegal, 0)?;
    println!("{name}: MADV_DONTNEED, mprotect, fork+COW, mremap, munmap+reuse: no stale entry, data exact");
    Ok(())
}

fn m_page_pattern(i: usize, g: u8) -> Vec<u8> {
    (0..PAGE).map(|j| pat(i, j, g)).collect()
}

pub fn coherence(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    ktap::start(Some(2));
    ktap::stop_at_failure();
    ktap::case("change_pte mode", || {
        coherence_mode(MODE_CHANGE_PTE, "change_pte mode")
    });
    ktap::case("zap mode", || coherence_mode(MODE_ZAP, "zap mode"));
    ktap::finish()
}

static BAD_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One bad call, a KTAP case: it must fail with `want`. A wrong result fails the case and the
/// test, not the calls after it (each is independent of the others).
fn expect(what: &str, got: Result<impl std::fmt::Debug, Errno>, want: Errno) {
    BAD_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ktap::result(what, crate::attach::want_err(what, got, want));
}

/// Every kind of bad input gets its documented errno and changes nothing.
pub fn errors(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let m = Mapping::anon(16)?;
    fill(&m, 5);
    let s = Spt::open()?;
    // One case per bad call and per check of what they left; the number is not kept here.
    ktap::start(None);
    // Not attached.
    expect(
        "fault before attach",
        s.try_fault(m.addr, PAGE, false),
        libc::ENXIO,
    );
    expect("stats before attach", s.try_stats(), libc::ENXIO);
    expect("detach before attach", s.detach(), libc::ENXIO);
    // ATTACH arguments.
    expect("bad mode", s.try_attach(m.addr, m.len, 7), libc::EINVAL);
    expect(
        "unaligned start",
        s.try_attach(m.addr + 1, m.len - PAGE, 0),
        libc::EINVAL,
    );
    expect(
        "unaligned length",
        s.try_attach(m.addr, 100, 0),
        libc::EINVAL,
    );
    expect("zero length", s.try_attach(m.addr, 0, 0), libc::EINVAL);
    expect(
        "overflowing range",
        s.try_attach(usize::MAX - PAGE + 1, 2 * PAGE, 0),
        libc::EOVERFLOW,
    );
    expect(
        "huge length",
        s.try_attach(m.addr, (MAX_ATTACH as usize) + PAGE, 0),
        libc::E2BIG,
    );
    expect(
        "beyond user space",
        s.try_attach(1 << 48, PAGE, 0),
        libc::EFAULT,
    );
    let holey = Mapping::anon(3)?;
    // SAFETY: Unmapping the middle page of our own mapping.
    unsafe { libc::munmap((holey.addr + PAGE) as *mut libc::c_void, PAGE) };
    expect(
        "range with a hole",
        s.try_attach(holey.addr, 3 * PAGE, 0),
        libc::EFAULT,
    );
    let mut a = Attach {
        size: 31,
        mode: 0,
        start: m.addr as u64,
        length: m.len as u64,
        id: 0,
    };
    expect("size field", s.ioctl(IOC_ATTACH, &mut a), libc::EINVAL);
    expect(
        "bad pointer",
        raw_ioctl(s.fd(), IOC_ATTACH, 8),
        libc::EFAULT,
    );
    expect(
        "unknown ioctl",
        raw_ioctl(s.fd(), (3 << 30) | (32 << 16) | (IOC_TYPE << 8) | 99, 0),
        libc::ENOTTY,
    );
    expect(
        "wrong size in number",
        raw_ioctl(s.fd(), (3 << 30) | (24 << 16) | (IOC_TYPE << 8) | 1, 0),
        libc::ENOTTY,
    );
    expect(
        "other type byte",
        raw_ioctl(s.fd(), (3 << 30) | (32 << 16) | (0xb8 << 8) | 1, 0),
        libc::ENOTTY,
    );

    s.attach(m.addr, 12 * PAGE, MODE_CHANGE_PTE)?;
    expect("double attach", s.try_attach(m.addr, m.len, 0), libc::EBUSY);
    // A READ faults the page in before it finds that the buffer is bad: the table may be
    // populated (documented), but nothing the process can see changes.
    expect(
        "read into a bad buffer",
        raw_rw(&s, IOC_READ, m.addr, 16, 8),
        libc::EFAULT,
    );
    s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    s.attach(m.addr, 12 * PAGE, MODE_CHANGE_PTE)?;
    // Page 11 unmapped inside the attachment.
    // SAFETY: Unmapping one page of our own mapping.
    unsafe { libc::munmap((m.addr + 11 * PAGE) as *mut libc::c_void, PAGE) };
    m.mprotect_range(10, 1, libc::PROT_READ)?;
    let before = s.stats()?;
    expect(
        "fault flags",
        s.ioctl(
            IOC_FAULT,
            &mut Fault {
                size: 32,
                flags: 2,
                addr: m.addr as u64,
                length: PAGE as u64,
                faults: 0,
            },
        ),
        libc::EINVAL,
    );
    expect(
        "fault unaligned",
        s.try_fault(m.addr + 8, PAGE, false),
        libc::EINVAL,
    );
    expect(
        "fault zero length",
        s.try_fault(m.addr, 0, false),
        libc::EINVAL,
    );
    expect(
        "fault huge",
        s.try_fault(m.addr, (MAX_IO as usize) + PAGE, false),
        libc::E2BIG,
    );
    expect(
        "fault outside",
        s.try_fault(m.addr + 12 * PAGE, PAGE, false),
        libc::ERANGE,
    );
    expect(
        "fault below",
        s.try_fault(m.addr - PAGE, PAGE, false),
        libc::ERANGE,
    );
    expect(
        "fault overflow",
        s.try_fault(usize::MAX - PAGE + 1, 2 * PAGE, false),
        libc::EOVERFLOW,
    );
    expect(
        "fault unmapped",
        s.try_fault(m.addr + 11 * PAGE, PAGE, false),
        libc::EFAULT,
    );
    expect(
        "write-fault read-only",
        s.try_fault(m.addr + 10 * PAGE, PAGE, true),
        libc::EACCES,
    );
    expect(
        "read zero length",
        s.try_read(m.addr, &mut []),
        libc::EINVAL,
    );
    expect(
        "read outside",
        s.try_read(m.addr + 12 * PAGE - 4, &mut [0u8; 8]),
        libc::ERANGE,
    );
    expect(
        "write from a bad buffer",
        raw_rw(&s, IOC_WRITE, m.addr, 16, 8),
        libc::EFAULT,
    );
    expect(
        "read flags",
        {
            let mut b = [0u8; 4];
            let mut r = Rw {
                size: 40,
                flags: 1,
                addr: m.addr as u64,
                length: 4,
                buf: b.as_mut_ptr() as u64,
                faults: 0,
            };
            s.ioctl(IOC_READ, &mut r)
        },
        libc::EINVAL,
    );
    expect(
        "read huge",
        raw_rw(&s, IOC_READ, m.addr, (MAX_IO as usize) + 1, m.addr),
        libc::E2BIG,
    );
    expect(
        "write read-only",
        s.try_write(m.addr + 10 * PAGE, b"x"),
        libc::EACCES,
    );
    expect(
        "read unmapped",
        s.try_read(m.addr + 11 * PAGE, &mut [0u8; 8]),
        libc::EFAULT,
    );
    expect("snapshot zero", s.try_snapshot(m.addr, 0), libc::EINVAL);
    expect(
        "snapshot unaligned",
        s.try_snapshot(m.addr + 1, 1),
        libc::EINVAL,
    );
    expect(
        "snapshot huge",
        s.try_snapshot(m.addr, (MAX_IO as usize) / PAGE + 1),
        libc::E2BIG,
    );
    expect("snapshot outside", s.try_snapshot(m.addr, 13), libc::ERANGE);
    expect(
        "snapshot bad buffer",
        {
            let mut sn = Snapshot {
                size: 32,
                flags: 0,
                addr: m.addr as u64,
                npages: 2,
                buf: 8,
            };
            s.ioctl(IOC_SNAPSHOT, &mut sn)
        },
        libc::EFAULT,
    );
    expect(
        "stats size",
        {
            let mut st = Stats {
                size: 8,
                ..Default::default()
            };
            s.ioctl(IOC_STATS, &mut st)
        },
        libc::EINVAL,
    );
    let after = s.stats()?;
    ktap::result(
        "counters unchanged",
        check(after == before, || {
            format!("failed calls changed the counters:\n{before:?}\n{after:?}")
        }),
    );
    ktap::result(
        "nothing mapped",
        check(after.present == 0, || {
            format!("failed calls mapped {} pages", after.present)
        }),
    );
    ktap::result(
        "memory unchanged",
        check(
            m.bytes(0, 10 * PAGE)
                == (0..10 * PAGE)
                    .map(|k| pat(k / PAGE, k % PAGE, 5))
                    .collect::<Vec<_>>(),
            || "failed calls changed memory".into(),
        ),
    );
    // Detach, then use.
    s.detach().map_err(|e| format!("detach: {}", errname(e)))?;
    expect(
        "fault after detach",
        s.try_fault(m.addr, PAGE, false),
        libc::ENXIO,
    );
    expect(
        "read after detach",
        s.try_read(m.addr, &mut [0u8; 4]),
        libc::ENXIO,
    );
    expect("detach twice", s.detach(), libc::ENXIO);
    s.attach(m.addr, PAGE, MODE_ZAP)?;
    ktap::result(
        "fault after re-attach",
        s.fault(m.addr, PAGE, false)
            .and_then(|f| eq_or("fault after re-attach", f, 1)),
    );
    if !ktap::failed() {
        println!(
            "{} bad calls: each got its documented errno; counters, table and memory unchanged",
            BAD_CALLS.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    ktap::finish()
}

fn raw_rw(s: &Spt, cmd: u64, addr: usize, len: usize, buf: usize) -> Result<(), Errno> {
    let mut r = Rw {
        size: 40,
        flags: 0,
        addr: addr as u64,
        length: len as u64,
        buf: buf as u64,
        faults: 0,
    };
    s.ioctl(cmd, &mut r)
}

impl Mapping {
    fn mprotect_range(&self, first: usize, pages: usize, prot: libc::c_int) -> Result<(), String> {
        // SAFETY: A range of our own mapping.
        if unsafe {
            libc::mprotect(
                (self.addr + first * PAGE) as *mut libc::c_void,
                pages * PAGE,
                prot,
            )
        } != 0
        {
            return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn attachments() -> Result<u64, String> {
    debugfs_counter("global", "attachments")
}

/// Close detaches; debugfs mirrors the ioctl counters exactly; exit while attached goes through
/// `release`, also while another thread faults.
pub fn lifecycle(_: &[String]) -> Result<(), String> {
    ensure_loaded()?;
    let base = attachments()?;
    // KTAP cases: close, the global counters, then exits with 0, 1 and 2 faulting threads.
    ktap::start(Some(5));
    ktap::stop_at_failure();
    ktap::case("close detaches; debugfs equals STATS", || {
        let m = Mapping::anon(16)?;
        fill(&m, 2);
        let s = Spt::open()?;
        let id = s.attach(m.addr, m.len, MODE_ZAP)?;
        eq_or("attachments while attached", attachments()?, base + 1)?;
        let dir = format!("{DEBUGFS}/{id}");
        let mode = std::fs::read_to_string(format!("{dir}/mode")).map_err(|e| e.to_string())?;
        check(mode == "zap\n", || format!("mode file {mode:?}"))?;
        let range = std::fs::read_to_string(format!("{dir}/range")).map_err(|e| e.to_string())?;
        let want = format!("{:#x}-{:#x}\n", m.addr, m.addr + m.len);
        check(range == want, || {
            format!("range file {range:?}, expected {want:?}")
        })?;
        verify_data(&s, &m, "lifecycle")?;
        s.write(m.addr + 5, b"abc")?;
        let st = s.stats()?;
        for (name, v) in COUNTERS.iter().zip(st.values()) {
            eq_or(
                &format!("debugfs {id}/{name}"),
                debugfs_counter(&id.to_string(), name)?,
                v,
            )?;
        }
        eq_or("stats.mode", st.mode as u64, MODE_ZAP as u64)?;
        let releases = debugfs_counter("global", "releases")?;
        drop(s);
        eq_or(
            "releases after close (unregistration is not an exit)",
            debugfs_counter("global", "releases")?,
            releases,
        )?;
        check(!std::path::Path::new(&dir).exists(), || {
            format!("{dir} still exists after close")
        })?;
        eq_or("attachments after close", attachments()?, base)
    });

    // The global files are summed when read: over the attachments alive, plus the event
    // counters the ones gone left behind (their gauges leave with their tables).
    ktap::case(
        "global counters: the attachments alive plus those gone",
        || {
            const NAMES: [&str; 4] = ["faults", "zapped", "present", "table_pages"];
            let read = || -> Result<Vec<u64>, String> {
                NAMES.iter().map(|n| debugfs_counter("global", n)).collect()
            };
            let g0 = read()?;
            let delta = || -> Result<Vec<u64>, String> {
                Ok(read()?
                    .iter()
                    .zip(&g0)
                    .map(|(v, b)| v.wrapping_sub(*b))
                    .collect())
            };
            let expect = |when: &str, want: [u64; 4]| -> Result<(), String> {
                let got = delta()?;
                for ((name, g), w) in NAMES.iter().zip(&got).zip(want) {
                    eq_or(&format!("global {name} ({when})"), *g, w)?;
                }
                Ok(())
            };
            let m1 = Mapping::anon(8)?;
            fill(&m1, 3);
            let m2 = Mapping::anon(24)?;
            fill(&m2, 4);
            let s1 = Spt::open()?;
            s1.attach(m1.addr, m1.len, MODE_CHANGE_PTE)?;
            let s2 = Spt::open()?;
            s2.attach(m2.addr, m2.len, MODE_ZAP)?;
            eq_or(
                "faults of the first",
                s1.fault(m1.addr, 3 * PAGE, false)?,
                3,
            )?;
            eq_or(
                "faults of the second",
                s2.fault(m2.addr, 5 * PAGE, false)?,
                5,
            )?;
            let (t1, t2) = (s1.stats()?.table_pages, s2.stats()?.table_pages);
            expect("both alive", [8, 0, 8, t1 + t2])?;
            // Closing detaches: unregistration's `release` zaps the 3 entries of the first.
            drop(s1);
            expect("the first gone", [8, 3, 5, t2])?;
            drop(s2);
            expect("both gone", [8, 8, 0, 0])
        },
    );

    // Exit while attached, with and without a thread faulting at that moment.
    for threads in [0usize, 1, 2] {
        ktap::case(
            &format!("exit while attached with {threads} faulting thread(s)"),
            || {
                for round in 0..5 {
                    let releases = debugfs_counter("global", "releases")?;
                    // SAFETY: The test process is single-threaded here; the child exits with `_exit`.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        let code = exit_while_attached(threads).map(|_| 0).unwrap_or(4);
                        // SAFETY: Leaving the child.
                        unsafe { libc::_exit(code) };
                    }
                    let mut status = 0;
                    // SAFETY: Waiting for our child.
                    unsafe { libc::waitpid(pid, &mut status, 0) };
                    check(
                        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                        || {
                            format!(
                                "exit child ({threads} threads, round {round}): status {status:#x}"
                            )
                        },
                    )?;
                    eq_or(
                        "releases after exit",
                        debugfs_counter("global", "releases")? - releases,
                        1,
                    )?;
                    eq_or("attachments after exit", attachments()?, base)?;
                }
                Ok(())
            },
        );
    }
    if !ktap::failed() {
        println!("close detaches and removes {DEBUGFS}/<id>; debugfs equals the ioctl counters; global counters sum the attachments alive and gone; 15 exits while attached (0, 1, 2 faulting threads) each ran release once");
    }
    ktap::finish()
}

/// In a child: attach, optionally start faulting threads, and exit the process mid-flight.
fn exit_while_attached(threads: usize) -> Result<(), String> {
    let m = Mapping::anon(256)?;
    fill(&m, 9);
    let s = std::sync::Arc::new(Spt::open()?);
    s.attach(m.addr, m.len, MODE_CHANGE_PTE)?;
    s.fault(m.addr, 64 * PAGE, false)?;
    let (addr, len) = (m.addr, m.len);
    for t in 0..threads {
        let s = s.clone();
        std::thread::spawn(move || loop {
            let _ = s.try_read(addr + t * PAGE, &mut vec![0u8; len - t * PAGE]);
            let _ = Mapping::view(addr, 64 * PAGE).madvise(libc::MADV_DONTNEED);
        });
    }
    std::thread::sleep(Duration::from_millis(30));
    // SAFETY: Ending the whole process (all threads) with the attachment still open.
    unsafe { libc::_exit(0) };
}
