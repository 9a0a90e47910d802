// SPDX-License-Identifier: GPL-2.0

//! shadowpt: a software secondary MMU that mirrors part of a process's address space.
//!
//! - [`device`]: `/dev/shadowpt`, its ioctls and the attachments they create;
//! - [`mirror`]: one attachment's secondary MMU: fault path and MMU notifier callbacks;
//! - [`table`]: the four-level radix page table;
//! - [`stats`]: the counters; [`global`]: the attachments alive and the global counters;
//! - [`debugfs`]: the files of `/sys/kernel/debug/shadowpt/`;
//! - [`uapi`]: the ioctl ABI (`include/uapi/linux/shadowpt.h`).
//!
//! Lock order, outermost first: `ShadowPtFile::attachment` (a mutex, never held across anything
//! that sleeps on the mm) is independent of the rest; the core mm's `mmap_lock` and page table
//! locks, held around notifier callbacks, and the registry of the global counters
//! (`global::REGISTRY`, a mutex) come before `mirror::State::inner` (a spinlock, innermost).
//! See `Documentation/design.rst`.

use kernel::prelude::*;

mod debugfs;
mod device;
mod global;
mod mirror;
mod stats;
mod table;
mod uapi;

module! {
    type: ShadowPtModule,
    name: "shadowpt",
    authors: ["The shadowpt developers"],
    description: "Secondary MMU page table kept coherent by mmu notifiers (change_pte study)",
    license: "GPL",
    params: {
        max_table_pages: u64 {
            // Enough to map every page of the largest attachment at any alignment (64 GiB: at
            // most 32,769 leaf tables, 65, 2 and 1 above them), so the default refuses nothing
            // that the ABI allows, but a table cannot grow without bound.
            default: 32_837,
            description: "Most 4 KiB tables one attachment may use (0: no limit; default: enough for the largest attachment); faults beyond it fail with ENOMEM",
        },
        max_attachments_per_mm: u32 {
            // Each attachment of an address space registers a notifier on it
            // (`mm_take_all_locks()`) and adds a callback to every invalidation of it, ksmd's
            // included: a process may not make that cost unbounded.
            default: 16,
            description: "Most attachments alive per address space (0: no limit; default 16); an ATTACH beyond it fails with ENOSPC",
        },
        time_callbacks: u32 {
            default: 0,
            description: "Nonzero: time invalidate_range_start and change_pte into the invalidate_ns and change_pte_ns counters of attachments created from then on (two clock reads per call); 0 (default): those counters stay 0",
        },
    },
}

/// The module instance: the misc device `/dev/shadowpt` and the debugfs tree.
///
/// Fields drop in declaration order, so the device disappears before the debugfs tree.
#[pin_data]
struct ShadowPtModule {
    #[pin]
    miscdev: kernel::miscdevice::MiscDeviceRegistration<device::ShadowPtFile>,
    debugfs: debugfs::Root,
}

impl kernel::InPlaceModule for ShadowPtModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            // Initialised first: opening the device needs the debugfs root and the registry of
            // the global counters.
            debugfs: {
                global::init();
                debugfs::Root::new()?
            },
            miscdev <- device::register(),
        })
    }
}
