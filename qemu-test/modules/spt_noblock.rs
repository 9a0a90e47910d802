// SPDX-License-Identifier: GPL-2.0

//! spt_noblock: a notifier that cannot invalidate without sleeping, and says so.
//!
//! Test-only (the guest test `oom_reap_backoff` drives it). Opening `/dev/spt_noblock` registers
//! a notifier on the opener's address space whose `invalidate_range_start` refuses every
//! non-blockable range with `EAGAIN` (what a driver that must sleep to drop its mappings does)
//! and has no `invalidate_range_end`, as the core mm requires of a notifier that fails. The core
//! mm (`mn_hlist_invalidate_range_start()`) then logs "callback failed with -11 in non-blockable
//! context" without a warning and passes the error on, and the OOM reaper backs off the address
//! space instead of freeing pages the secondary MMU would still map.
//!
//! `ioctl(fd, SPT_NOBLOCK_SLEEP, ms)` sleeps `ms` milliseconds uninterruptibly, so that a thread
//! of a killed process keeps its address space alive while the reaper tries it. Closing the file
//! prints what the notifier saw and unregisters it.

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::mmu_notifier::{MmuNotifier, Range, Registration},
    mm::Mm,
    prelude::*,
    sync::atomic::{Atomic, Relaxed},
    time::{delay::fsleep, Delta},
};

module! {
    type: NoBlockModule,
    name: "spt_noblock",
    authors: ["The shadowpt developers"],
    description: "shadowpt test: a notifier that refuses non-blockable invalidations",
    license: "GPL",
}

/// `_IO(0xb9, 0x40)`: sleep uninterruptibly for `arg` milliseconds (at most 10 s).
const SPT_NOBLOCK_SLEEP: u32 = 0xb940;

#[pin_data]
struct NoBlockModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<NoBlockFile>,
}

impl kernel::InPlaceModule for NoBlockModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            _miscdev <- MiscDeviceRegistration::register(MiscDeviceOptions {
                name: c"spt_noblock",
            }),
        })
    }
}

/// What the notifier saw. Callbacks run concurrently, so the counts are atomic.
struct NoBlock {
    refused: Atomic<u64>,
    blockable: Atomic<u64>,
    releases: Atomic<u64>,
}

#[vtable]
impl MmuNotifier for NoBlock {
    fn release(&self, _mm: &Mm) {
        self.releases.fetch_add(1, Relaxed);
    }

    fn invalidate_range_start(&self, range: &Range) -> Result {
        if range.blockable() {
            self.blockable.fetch_add(1, Relaxed);
            return Ok(());
        }
        // Dropping the mappings would need a sleeping lock: refuse, and let the caller (the
        // OOM reaper) leave the range alone.
        self.refused.fetch_add(1, Relaxed);
        Err(EAGAIN)
    }
}

/// One open file: the registration on the opener's address space.
struct NoBlockFile {
    registration: Pin<KBox<Registration<NoBlock>>>,
}

#[vtable]
impl MiscDevice for NoBlockFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        let task = kernel::current!();
        let mm = task.mm().ok_or(ESRCH)?;
        let notifier = NoBlock {
            refused: Atomic::new(0),
            blockable: Atomic::new(0),
            releases: Atomic::new(0),
        };
        let registration = KBox::pin_init(Registration::register(mm, notifier), GFP_KERNEL)?;
        Ok(KBox::new(Self { registration }, GFP_KERNEL)?)
    }

    fn ioctl(_me: &NoBlockFile, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            SPT_NOBLOCK_SLEEP if arg <= 10_000 => {
                // `fsleep()` of more than 20 ms is `msleep()`: TASK_UNINTERRUPTIBLE.
                fsleep(Delta::from_millis(arg as i64));
                Ok(0)
            }
            SPT_NOBLOCK_SLEEP => Err(EINVAL),
            _ => Err(ENOTTY),
        }
    }

    fn release(device: KBox<Self>, _file: &File) {
        let n: &NoBlock = &device.registration;
        pr_info!(
            "refused {} non-blockable invalidations, allowed {} blockable ones, {} releases\n",
            n.refused.load(Relaxed),
            n.blockable.load(Relaxed),
            n.releases.load(Relaxed)
        );
        // Dropping `device` unregisters the notifier, after the callbacks in flight.
    }
}
