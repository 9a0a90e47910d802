// SPDX-License-Identifier: GPL-2.0

//! The ioctl ABI of `/dev/shadowpt`.
//!
//! The structures and constants come from the C header, `include/uapi/linux/shadowpt.h`, the one
//! source of truth: Kbuild runs bindgen on it (`uapi_generated.rs`) with zerocopy derives, and
//! the requests are read and the replies written as whole `#[repr(C)]` structures through the
//! kernel crate's user-slice API, with no `unsafe`. Only the ioctl numbers are computed here:
//! bindgen cannot expand `_IOWR()`, so they are built from the header's type byte and the
//! generated structures' sizes. `Documentation/abi.rst` documents every ioctl and errno.

use kernel::{
    ioctl,
    prelude::*,
    uaccess::{UserPtr, UserSlice, UserSliceReader},
};
use zerocopy::Immutable;

/// What bindgen generated from the C header.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    dead_code,
    unreachable_pub,
    clippy::all
)]
mod abi {
    use kernel::prelude::*;
    include!("uapi_generated.rs");
}

pub(crate) use abi::shadowpt_stats as StatsReply;

/// ioctl type byte (`SHADOWPT_IOCTL_TYPE`).
const TYPE: u32 = abi::SHADOWPT_IOCTL_TYPE;

/// Largest range of one attachment (`SHADOWPT_MAX_ATTACH`).
pub(crate) const MAX_ATTACH: usize = abi::SHADOWPT_MAX_ATTACH as usize;
/// Largest range of one FAULT, READ, WRITE or SNAPSHOT call (`SHADOWPT_MAX_IO`).
pub(crate) const MAX_IO: usize = abi::SHADOWPT_MAX_IO as usize;

/// `SHADOWPT_MODE_CHANGE_PTE`.
pub(crate) const MODE_CHANGE_PTE: u32 = abi::SHADOWPT_MODE_CHANGE_PTE;
/// `SHADOWPT_MODE_ZAP`.
pub(crate) const MODE_ZAP: u32 = abi::SHADOWPT_MODE_ZAP;

/// `SHADOWPT_ACCESS_WRITE`.
pub(crate) const ACCESS_WRITE: u32 = abi::SHADOWPT_ACCESS_WRITE;

/// Snapshot state bits (`SHADOWPT_PAGE_*`, one byte per page).
pub(crate) const PAGE_PRESENT: u8 = abi::SHADOWPT_PAGE_PRESENT as u8;
pub(crate) const PAGE_WRITABLE: u8 = abi::SHADOWPT_PAGE_WRITABLE as u8;
pub(crate) const PAGE_ACCESSED: u8 = abi::SHADOWPT_PAGE_ACCESSED as u8;
pub(crate) const PAGE_DIRTY: u8 = abi::SHADOWPT_PAGE_DIRTY as u8;
pub(crate) const PAGE_PRIMARY: u8 = abi::SHADOWPT_PAGE_PRIMARY as u8;
pub(crate) const PAGE_PFN_MATCH: u8 = abi::SHADOWPT_PAGE_PFN_MATCH as u8;
pub(crate) const PAGE_ZERO: u8 = abi::SHADOWPT_PAGE_ZERO as u8;

/// Sizes of the structures, in bytes (each carries its own in its `size` field).
pub(crate) const ATTACH_SIZE: usize = size_of::<abi::shadowpt_attach>();
pub(crate) const FAULT_SIZE: usize = size_of::<abi::shadowpt_fault>();
pub(crate) const RW_SIZE: usize = size_of::<abi::shadowpt_rw>();
pub(crate) const SNAPSHOT_SIZE: usize = size_of::<abi::shadowpt_snapshot>();
pub(crate) const STATS_SIZE: usize = size_of::<abi::shadowpt_stats>();

pub(crate) const IOC_ATTACH: u32 = ioctl::_IOWR::<abi::shadowpt_attach>(TYPE, 1);
pub(crate) const IOC_DETACH: u32 = ioctl::_IO(TYPE, 2);
pub(crate) const IOC_FAULT: u32 = ioctl::_IOWR::<abi::shadowpt_fault>(TYPE, 3);
pub(crate) const IOC_READ: u32 = ioctl::_IOWR::<abi::shadowpt_rw>(TYPE, 4);
pub(crate) const IOC_WRITE: u32 = ioctl::_IOWR::<abi::shadowpt_rw>(TYPE, 5);
pub(crate) const IOC_SNAPSHOT: u32 = ioctl::_IOW::<abi::shadowpt_snapshot>(TYPE, 6);
pub(crate) const IOC_STATS: u32 = ioctl::_IOWR::<abi::shadowpt_stats>(TYPE, 7);

/// Reads a whole `T` from `reader`.
///
/// # Errors
///
/// `EFAULT` if the memory cannot be read.
fn read<T: FromBytes + IntoBytes>(reader: &mut UserSliceReader) -> Result<T> {
    let mut value = T::new_zeroed();
    reader.read_slice(value.as_mut_bytes())?;
    Ok(value)
}

/// Checks a structure's `size` field against the structure the kernel knows.
fn check_size(size: u32, want: usize) -> Result {
    if size as usize == want {
        Ok(())
    } else {
        Err(EINVAL)
    }
}

/// A `u64` of the ABI as a `usize` (it always fits on 64-bit).
fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| EOVERFLOW)
}

/// Writes a whole `T` to user space at `arg`.
///
/// # Errors
///
/// `EFAULT` if the memory cannot be written.
pub(crate) fn write<T: IntoBytes + Immutable>(arg: usize, value: &T) -> Result {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .writer()
        .write_slice(value.as_bytes())
}

/// `struct shadowpt_attach`.
pub(crate) struct Attach {
    pub(crate) mode: u32,
    pub(crate) start: usize,
    pub(crate) length: usize,
}

impl Attach {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let a: abi::shadowpt_attach = read(reader)?;
        check_size(a.size, ATTACH_SIZE)?;
        Ok(Self {
            mode: a.mode,
            start: to_usize(a.start)?,
            length: to_usize(a.length)?,
        })
    }

    /// The reply: the request with its `id` filled in.
    pub(crate) fn reply(&self, id: u64) -> impl IntoBytes + Immutable {
        abi::shadowpt_attach {
            size: ATTACH_SIZE as u32,
            mode: self.mode,
            start: self.start as u64,
            length: self.length as u64,
            id,
        }
    }
}

/// `struct shadowpt_fault`.
pub(crate) struct Fault {
    pub(crate) flags: u32,
    pub(crate) addr: usize,
    pub(crate) length: usize,
}

impl Fault {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let f: abi::shadowpt_fault = read(reader)?;
        check_size(f.size, FAULT_SIZE)?;
        Ok(Self {
            flags: f.flags,
            addr: to_usize(f.addr)?,
            length: to_usize(f.length)?,
        })
    }

    /// The reply: the request with its `faults` filled in.
    pub(crate) fn reply(&self, faults: u64) -> impl IntoBytes + Immutable {
        abi::shadowpt_fault {
            size: FAULT_SIZE as u32,
            flags: self.flags,
            addr: self.addr as u64,
            length: self.length as u64,
            faults,
        }
    }
}

/// `struct shadowpt_rw`.
pub(crate) struct Rw {
    pub(crate) flags: u32,
    pub(crate) addr: usize,
    pub(crate) length: usize,
    pub(crate) buf: usize,
}

impl Rw {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let r: abi::shadowpt_rw = read(reader)?;
        check_size(r.size, RW_SIZE)?;
        Ok(Self {
            flags: r.flags,
            addr: to_usize(r.addr)?,
            length: to_usize(r.length)?,
            buf: to_usize(r.buf)?,
        })
    }

    /// The reply: the request with its `faults` filled in.
    pub(crate) fn reply(&self, faults: u64) -> impl IntoBytes + Immutable {
        abi::shadowpt_rw {
            size: RW_SIZE as u32,
            flags: self.flags,
            addr: self.addr as u64,
            length: self.length as u64,
            buf: self.buf as u64,
            faults,
        }
    }
}

/// `struct shadowpt_snapshot`.
pub(crate) struct Snapshot {
    pub(crate) flags: u32,
    pub(crate) addr: usize,
    pub(crate) npages: usize,
    pub(crate) buf: usize,
}

impl Snapshot {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let s: abi::shadowpt_snapshot = read(reader)?;
        check_size(s.size, SNAPSHOT_SIZE)?;
        Ok(Self {
            flags: s.flags,
            addr: to_usize(s.addr)?,
            npages: to_usize(s.npages)?,
            buf: to_usize(s.buf)?,
        })
    }
}
