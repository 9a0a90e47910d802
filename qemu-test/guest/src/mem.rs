// SPDX-License-Identifier: GPL-2.0

//! Anonymous mappings and `/proc/self/pagemap`: the ground truth for which pfn maps a page.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub const PAGE: usize = 4096;

/// An anonymous private mapping, unmapped on drop.
pub struct Mapping {
    pub addr: usize,
    pub len: usize,
}

impl Mapping {
    /// A view of part of a mapping owned elsewhere: dropping it unmaps nothing.
    pub fn view(addr: usize, len: usize) -> std::mem::ManuallyDrop<Mapping> {
        std::mem::ManuallyDrop::new(Mapping { addr, len })
    }

    /// Maps `pages` pages read-write, without transparent huge pages (so every page has its own
    /// PTE, which is what KSM and `change_pte` work on).
    pub fn anon(pages: usize) -> Result<Self, String> {
        Self::map(pages, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1)
    }

    /// Maps `pages` pages read-write with `flags` (and `fd`, or -1), without THP.
    pub fn map(pages: usize, flags: libc::c_int, fd: libc::c_int) -> Result<Self, String> {
        let len = pages * PAGE;
        // SAFETY: A fresh mapping chosen by the kernel aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {len}: {}", std::io::Error::last_os_error()));
        }
        let m = Mapping {
            addr: p as usize,
            len,
        };
        m.madvise(libc::MADV_NOHUGEPAGE)?;
        Ok(m)
    }

    /// The bytes of the mapping as the process sees them.
    pub fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: The range lies inside our readable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping((self.addr + off) as *const u8, v.as_mut_ptr(), len)
        };
        v
    }

    /// Writes `data` at byte offset `off` of the mapping.
    pub fn put(&self, off: usize, data: &[u8]) {
        // SAFETY: The range lies inside our writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.addr + off) as *mut u8, data.len())
        };
    }

    pub fn mprotect(&self, prot: libc::c_int) -> Result<(), String> {
        // SAFETY: Our own mapping.
        if unsafe { libc::mprotect(self.addr as *mut libc::c_void, self.len, prot) } != 0 {
            return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    pub fn page_addr(&self, i: usize) -> usize {
        self.addr + i * PAGE
    }

    pub fn madvise(&self, advice: libc::c_int) -> Result<(), String> {
        // SAFETY: The range is our own mapping.
        if unsafe { libc::madvise(self.addr as *mut libc::c_void, self.len, advice) } != 0 {
            return Err(format!(
                "madvise({advice}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Fills page `i` with `byte`.
    pub fn fill(&self, i: usize, byte: u8) {
        // SAFETY: Page `i` lies inside our read-write mapping.
        unsafe { std::ptr::write_bytes(self.page_addr(i) as *mut u8, byte, PAGE) };
    }

    /// The pfn mapping each page now (`None` if not present), from `/proc/self/pagemap`.
    pub fn pfns(&self) -> Result<Vec<Option<u64>>, String> {
        let f = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
        let mut buf = vec![0u8; self.pages() * 8];
        f.read_exact_at(&mut buf, (self.addr / PAGE * 8) as u64)
            .map_err(|e| format!("pagemap read: {e}"))?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| {
                let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                (v >> 63 == 1).then_some(v & ((1u64 << 55) - 1))
            })
            .collect())
    }

    /// Like [`pfns`](Self::pfns), failing if any page is not present or a pfn reads as 0
    /// (pagemap hides pfns from unprivileged readers).
    pub fn present_pfns(&self) -> Result<Vec<u64>, String> {
        self.pfns()?
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                Some(0) => Err("pagemap shows pfn 0: not privileged?".to_string()),
                Some(p) => Ok(p),
                None => Err(format!("page {i} not present")),
            })
            .collect()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: Unmapping our own mapping; nothing refers to it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
