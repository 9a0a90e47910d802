// SPDX-License-Identifier: GPL-2.0

//! User-space client of the `/dev/shadowpt` ioctl ABI (`include/uapi/linux/shadowpt.h`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use crate::util::DEV;

/// The ABI's structures and constants, generated from the C header by `build.rs`.
#[allow(non_camel_case_types, non_upper_case_globals, dead_code)]
mod abi {
    include!(concat!(env!("OUT_DIR"), "/shadowpt.rs"));
}

pub const MODE_CHANGE_PTE: u32 = abi::SHADOWPT_MODE_CHANGE_PTE;
pub const MODE_ZAP: u32 = abi::SHADOWPT_MODE_ZAP;
pub const ACCESS_WRITE: u32 = abi::SHADOWPT_ACCESS_WRITE;

pub const PAGE_PRESENT: u8 = abi::SHADOWPT_PAGE_PRESENT as u8;
pub const PAGE_WRITABLE: u8 = abi::SHADOWPT_PAGE_WRITABLE as u8;
pub const PAGE_ACCESSED: u8 = abi::SHADOWPT_PAGE_ACCESSED as u8;
pub const PAGE_DIRTY: u8 = abi::SHADOWPT_PAGE_DIRTY as u8;
pub const PAGE_PRIMARY: u8 = abi::SHADOWPT_PAGE_PRIMARY as u8;
pub const PAGE_PFN_MATCH: u8 = abi::SHADOWPT_PAGE_PFN_MATCH as u8;
pub const PAGE_ZERO: u8 = abi::SHADOWPT_PAGE_ZERO as u8;

pub const MAX_ATTACH: u64 = abi::SHADOWPT_MAX_ATTACH as u64;
pub const MAX_IO: u64 = abi::SHADOWPT_MAX_IO as u64;

pub type Attach = abi::shadowpt_attach;
pub type Fault = abi::shadowpt_fault;
pub type Rw = abi::shadowpt_rw;
pub type Snapshot = abi::shadowpt_snapshot;
/// `struct shadowpt_stats`; field order is the ABI's and the debugfs file names'.
pub type Stats = abi::shadowpt_stats;

/// Counter names in ABI order, as debugfs names its files.
pub const COUNTERS: [&str; 18] = [
    "faults",
    "fault_retries",
    "invalidate_start",
    "invalidate_end",
    "zapped",
    "change_pte",
    "change_pte_updated",
    "change_pte_absent",
    "change_pte_illegal",
    "releases",
    "young",
    "present",
    "table_pages",
    "invalidate_ns",
    "change_pte_ns",
    "invalidate_nonblock",
    "zap_chunks",
    "zap_hold_max_ns",
];

impl Stats {
    pub fn values(&self) -> [u64; 18] {
        [
            self.faults,
            self.fault_retries,
            self.invalidate_start,
            self.invalidate_end,
            self.zapped,
            self.change_pte,
            self.change_pte_updated,
            self.change_pte_absent,
            self.change_pte_illegal,
            self.releases,
            self.young,
            self.present,
            self.table_pages,
            self.invalidate_ns,
            self.change_pte_ns,
            self.invalidate_nonblock,
            self.zap_chunks,
            self.zap_hold_max_ns,
        ]
    }
}

/// `SHADOWPT_IOCTL_TYPE`.
pub const IOC_TYPE: u64 = abi::SHADOWPT_IOCTL_TYPE as u64;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOC_TYPE << 8) | nr
}
const W: u64 = 1;
const R: u64 = 2;
pub const IOC_ATTACH: u64 = ioc(R | W, 1, std::mem::size_of::<Attach>());
pub const IOC_DETACH: u64 = ioc(0, 2, 0);
pub const IOC_FAULT: u64 = ioc(R | W, 3, std::mem::size_of::<Fault>());
pub const IOC_READ: u64 = ioc(R | W, 4, std::mem::size_of::<Rw>());
pub const IOC_WRITE: u64 = ioc(R | W, 5, std::mem::size_of::<Rw>());
pub const IOC_SNAPSHOT: u64 = ioc(W, 6, std::mem::size_of::<Snapshot>());
pub const IOC_STATS: u64 = ioc(R | W, 7, std::mem::size_of::<Stats>());

/// An errno from an ioctl.
pub type Errno = i32;

/// An open `/dev/shadowpt`.
pub struct Spt {
    pub file: File,
}

/// Issues ioctl `cmd` with `arg`; returns the errno on failure.
pub fn raw_ioctl(fd: i32, cmd: u64, arg: usize) -> Result<(), Errno> {
    // SAFETY: The callers pass pointers to live structures of the size `cmd` encodes, or values
    // the kernel must reject without touching memory (the point of the error tests).
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

pub fn errname(e: Errno) -> String {
    let n = match e {
        libc::EINVAL => "EINVAL",
        libc::EFAULT => "EFAULT",
        libc::EPERM => "EPERM",
        libc::ENXIO => "ENXIO",
        libc::EBUSY => "EBUSY",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EACCES => "EACCES",
        libc::ENOTTY => "ENOTTY",
        libc::ENOMEM => "ENOMEM",
        libc::EINTR => "EINTR",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

impl Spt {
    pub fn open() -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEV)
            .map_err(|e| format!("open {DEV}: {e}"))?;
        Ok(Self { file })
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn ioctl<T>(&self, cmd: u64, arg: &mut T) -> Result<(), Errno> {
        raw_ioctl(self.fd(), cmd, arg as *mut T as usize)
    }

    pub fn try_attach(&self, start: usize, len: usize, mode: u32) -> Result<u64, Errno> {
        let mut a = Attach {
            size: std::mem::size_of::<Attach>() as u32,
            mode,
            start: start as u64,
            length: len as u64,
            id: 0,
        };
        self.ioctl(IOC_ATTACH, &mut a)?;
        Ok(a.id)
    }

    pub fn attach(&self, start: usize, len: usize, mode: u32) -> Result<u64, String> {
        self.try_attach(start, len, mode)
            .map_err(|e| format!("attach {start:#x}+{len:#x}: {}", errname(e)))
    }

    pub fn detach(&self) -> Result<(), Errno> {
        raw_ioctl(self.fd(), IOC_DETACH, 0)
    }

    pub fn try_fault(&self, addr: usize, len: usize, write: bool) -> Result<u64, Errno> {
        let mut f = Fault {
            size: std::mem::size_of::<Fault>() as u32,
            flags: if write { ACCESS_WRITE } else { 0 },
            addr: addr as u64,
            length: len as u64,
            faults: 0,
        };
        self.ioctl(IOC_FAULT, &mut f)?;
        Ok(f.faults)
    }

    pub fn fault(&self, addr: usize, len: usize, write: bool) -> Result<u64, String> {
        self.try_fault(addr, len, write)
            .map_err(|e| format!("fault {addr:#x}+{len:#x}: {}", errname(e)))
    }

    /// Reads `buf.len()` bytes at `addr` through the table; returns the faults taken.
    pub fn try_read(&self, addr: usize, buf: &mut [u8]) -> Result<u64, Errno> {
        let mut r = Rw {
            size: std::mem::size_of::<Rw>() as u32,
            flags: 0,
            addr: addr as u64,
            length: buf.len() as u64,
            buf: buf.as_mut_ptr() as u64,
            faults: 0,
        };
        self.ioctl(IOC_READ, &mut r)?;
        Ok(r.faults)
    }

    pub fn read(&self, addr: usize, len: usize) -> Result<(Vec<u8>, u64), String> {
        let mut buf = vec![0u8; len];
        let f = self
            .try_read(addr, &mut buf)
            .map_err(|e| format!("read {addr:#x}+{len:#x}: {}", errname(e)))?;
        Ok((buf, f))
    }

    pub fn try_write(&self, addr: usize, data: &[u8]) -> Result<u64, Errno> {
        let mut r = Rw {
            size: std::mem::size_of::<Rw>() as u32,
            flags: 0,
            addr: addr as u64,
            length: data.len() as u64,
            buf: data.as_ptr() as u64,
            faults: 0,
        };
        self.ioctl(IOC_WRITE, &mut r)?;
        Ok(r.faults)
    }

    pub fn write(&self, addr: usize, data: &[u8]) -> Result<u64, String> {
        self.try_write(addr, data)
            .map_err(|e| format!("write {addr:#x}+{:#x}: {}", data.len(), errname(e)))
    }

    pub fn try_snapshot(&self, addr: usize, npages: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0xffu8; npages];
        let mut s = Snapshot {
            size: std::mem::size_of::<Snapshot>() as u32,
            flags: 0,
            addr: addr as u64,
            npages: npages as u64,
            buf: buf.as_mut_ptr() as u64,
        };
        self.ioctl(IOC_SNAPSHOT, &mut s)?;
        Ok(buf)
    }

    pub fn snapshot(&self, addr: usize, npages: usize) -> Result<Vec<u8>, String> {
        self.try_snapshot(addr, npages)
            .map_err(|e| format!("snapshot {addr:#x}+{npages}p: {}", errname(e)))
    }

    pub fn try_stats(&self) -> Result<Stats, Errno> {
        let mut s = Stats {
            size: std::mem::size_of::<Stats>() as u32,
            ..Default::default()
        };
        self.ioctl(IOC_STATS, &mut s)?;
        Ok(s)
    }

    pub fn stats(&self) -> Result<Stats, String> {
        self.try_stats()
            .map_err(|e| format!("stats: {}", errname(e)))
    }
}

/// Reads a counter file of debugfs directory `dir` (`<id>` or `global`).
pub fn debugfs_counter(dir: &str, name: &str) -> Result<u64, String> {
    let p = format!("{}/{dir}/{name}", crate::util::DEBUGFS);
    let s = std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}"))?;
    s.trim().parse().map_err(|e| format!("{p} {s:?}: {e}"))
}

/// Snapshot check: no page may be present with a pfn other than the primary's.
pub fn check_no_stale(snap: &[u8], what: &str) -> Result<(), String> {
    for (i, &s) in snap.iter().enumerate() {
        if s & PAGE_PRESENT != 0 && s & PAGE_PFN_MATCH == 0 {
            return Err(format!(
                "{what}: page {i} is mapped by the table but not by the process at the same pfn (state {s:#x})"
            ));
        }
    }
    Ok(())
}
