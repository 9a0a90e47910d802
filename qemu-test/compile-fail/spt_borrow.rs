// SPDX-License-Identifier: GPL-2.0

//! Must not compile (scripts/check-compile-fail): a notifier that borrows a local, registered
//! and then leaked with `mem::forget`. If `Registration::register` accepted it, the callbacks
//! would keep using `hits` after `init` returned and its stack frame was gone.
// expect-error: error\[E0597\]: `hits` does not live long enough

use kernel::mm::mmu_notifier::{MmuNotifier, Range, Registration};
use kernel::prelude::*;
use kernel::sync::atomic::{Atomic, Relaxed};

module! {
    type: Probe,
    name: "spt_borrow",
    authors: ["shadowpt developers"],
    description: "compile-fail probe: a notifier borrowing a local",
    license: "GPL",
}

struct Borrower<'a> {
    hits: &'a Atomic<u64>,
}

#[vtable]
impl MmuNotifier for Borrower<'_> {
    fn invalidate_range_start(&self, _range: &Range) -> Result {
        self.hits.fetch_add(1, Relaxed);
        Ok(())
    }
}

struct Probe;

impl kernel::Module for Probe {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let hits = Atomic::new(0u64);
        let task = kernel::current!();
        let mm = task.mm().ok_or(ESRCH)?;
        let registration = KBox::pin_init(
            Registration::register(mm, Borrower { hits: &hits }),
            GFP_KERNEL,
        )?;
        core::mem::forget(registration);
        Ok(Probe)
    }
}
