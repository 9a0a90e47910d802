// SPDX-License-Identifier: GPL-2.0

//! The ioctl ABI of `/dev/shadowpt`, mirroring `include/uapi/linux/shadowpt.h`.
//!
//! Structures are decoded from and encoded to their C layout field by field (native endianness,
//! no padding: every structure is a `u32 size`, a `u32`, then `u64`s), so no `unsafe` is needed to
//! reinterpret bytes. `Documentation/abi.rst` documents every ioctl and errno.

use kernel::{ioctl, prelude::*, uaccess::UserSliceReader};

/// ioctl type byte (`SHADOWPT_IOCTL_TYPE`).
const TYPE: u32 = 0xb9;

/// Largest range of one attachment (`SHADOWPT_MAX_ATTACH`).
pub(crate) const MAX_ATTACH: usize = 1 << 36;
/// Largest range of one FAULT, READ, WRITE or SNAPSHOT call (`SHADOWPT_MAX_IO`).
pub(crate) const MAX_IO: usize = 1 << 30;

/// `SHADOWPT_MODE_CHANGE_PTE`.
pub(crate) const MODE_CHANGE_PTE: u32 = 0;
/// `SHADOWPT_MODE_ZAP`.
pub(crate) const MODE_ZAP: u32 = 1;

/// `SHADOWPT_ACCESS_WRITE`.
pub(crate) const ACCESS_WRITE: u32 = 1 << 0;

/// Snapshot state bits (`SHADOWPT_PAGE_*`).
pub(crate) const PAGE_PRESENT: u8 = 1 << 0;
pub(crate) const PAGE_WRITABLE: u8 = 1 << 1;
pub(crate) const PAGE_ACCESSED: u8 = 1 << 2;
pub(crate) const PAGE_DIRTY: u8 = 1 << 3;
pub(crate) const PAGE_PRIMARY: u8 = 1 << 4;
pub(crate) const PAGE_PFN_MATCH: u8 = 1 << 5;
pub(crate) const PAGE_ZERO: u8 = 1 << 6;

/// Sizes of the structures, in bytes.
pub(crate) const ATTACH_SIZE: usize = 32;
pub(crate) const FAULT_SIZE: usize = 32;
pub(crate) const RW_SIZE: usize = 40;
pub(crate) const SNAPSHOT_SIZE: usize = 32;
pub(crate) const STATS_SIZE: usize = 8 + 8 * STATS_FIELDS;
/// Number of `u64` counters in `struct shadowpt_stats`.
pub(crate) const STATS_FIELDS: usize = 16;

/// A placeholder of `N` bytes, so that `_IOWR::<Bytes<N>>` encodes the C structure's size.
pub(crate) struct Bytes<const N: usize>([u8; N]);

pub(crate) const IOC_ATTACH: u32 = ioctl::_IOWR::<Bytes<ATTACH_SIZE>>(TYPE, 1);
pub(crate) const IOC_DETACH: u32 = ioctl::_IO(TYPE, 2);
pub(crate) const IOC_FAULT: u32 = ioctl::_IOWR::<Bytes<FAULT_SIZE>>(TYPE, 3);
pub(crate) const IOC_READ: u32 = ioctl::_IOWR::<Bytes<RW_SIZE>>(TYPE, 4);
pub(crate) const IOC_WRITE: u32 = ioctl::_IOWR::<Bytes<RW_SIZE>>(TYPE, 5);
pub(crate) const IOC_SNAPSHOT: u32 = ioctl::_IOW::<Bytes<SNAPSHOT_SIZE>>(TYPE, 6);
pub(crate) const IOC_STATS: u32 = ioctl::_IOWR::<Bytes<STATS_SIZE>>(TYPE, 7);

/// Decodes a structure of `N` bytes read from user space.
pub(crate) struct Decoder<const N: usize> {
    bytes: [u8; N],
    pos: usize,
}

impl<const N: usize> Decoder<N> {
    /// Reads the structure and checks its `size` field.
    ///
    /// # Errors
    ///
    /// `EFAULT` if the memory cannot be read, `EINVAL` if `size` is not `N`.
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let mut bytes = [0u8; N];
        reader.read_slice(&mut bytes)?;
        let mut dec = Self { bytes, pos: 0 };
        if dec.u32() as usize != N {
            return Err(EINVAL);
        }
        Ok(dec)
    }

    pub(crate) fn u32(&mut self) -> u32 {
        let mut v = [0u8; 4];
        v.copy_from_slice(&self.bytes[self.pos..self.pos + 4]);
        self.pos += 4;
        u32::from_ne_bytes(v)
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.bytes[self.pos..self.pos + 8]);
        self.pos += 8;
        u64::from_ne_bytes(v)
    }

    /// Reads a `u64` that must fit in a `usize` (it always does on 64-bit).
    pub(crate) fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()).map_err(|_| EOVERFLOW)
    }
}

/// Encodes a structure of `N` bytes to be written back to user space.
pub(crate) struct Encoder<const N: usize> {
    pub(crate) bytes: [u8; N],
    pos: usize,
}

impl<const N: usize> Encoder<N> {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0u8; N],
            pos: 0,
        }
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes[self.pos..self.pos + 4].copy_from_slice(&v.to_ne_bytes());
        self.pos += 4;
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes[self.pos..self.pos + 8].copy_from_slice(&v.to_ne_bytes());
        self.pos += 8;
        self
    }
}

/// `struct shadowpt_attach`.
pub(crate) struct Attach {
    pub(crate) mode: u32,
    pub(crate) start: usize,
    pub(crate) length: usize,
}

impl Attach {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let mut d = Decoder::<ATTACH_SIZE>::read(reader)?;
        let mode = d.u32();
        let start = d.usize()?;
        let length = d.usize()?;
        Ok(Self {
            mode,
            start,
            length,
        })
    }
}

/// `struct shadowpt_fault` and `struct shadowpt_snapshot` share this shape: flags, a page-aligned
/// address and a count (bytes for FAULT, pages for SNAPSHOT), and for SNAPSHOT a buffer.
pub(crate) struct Fault {
    pub(crate) flags: u32,
    pub(crate) addr: usize,
    pub(crate) length: usize,
}

impl Fault {
    pub(crate) fn read(reader: &mut UserSliceReader) -> Result<Self> {
        let mut d = Decoder::<FAULT_SIZE>::read(reader)?;
        Ok(Self {
            flags: d.u32(),
            addr: d.usize()?,
            length: d.usize()?,
        })
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
        let mut d = Decoder::<RW_SIZE>::read(reader)?;
        Ok(Self {
            flags: d.u32(),
            addr: d.usize()?,
            length: d.usize()?,
            buf: d.usize()?,
        })
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
        let mut d = Decoder::<SNAPSHOT_SIZE>::read(reader)?;
        Ok(Self {
            flags: d.u32(),
            addr: d.usize()?,
            npages: d.usize()?,
            buf: d.usize()?,
        })
    }
}
