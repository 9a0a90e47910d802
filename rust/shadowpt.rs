// SPDX-License-Identifier: GPL-2.0

//! shadowpt: a software secondary MMU that mirrors part of a process's address space.
//!
//! The crate root only declares the module and its parts; see `Documentation/` for the design.

use kernel::prelude::*;

mod debugfs;
mod device;

module! {
    type: ShadowPtModule,
    name: "shadowpt",
    authors: ["The shadowpt developers"],
    description: "Secondary MMU page table kept coherent by mmu notifiers (change_pte study)",
    license: "GPL",
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
            debugfs: debugfs::Root::new()?,
            miscdev <- device::register(),
        })
    }
}
