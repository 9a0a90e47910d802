// SPDX-License-Identifier: GPL-2.0

//! spt_nomm: `kernel::mm::gup::get_user_page_fast()` from a task without an address space.
//!
//! Test-only (the guest test `gup_without_mm` loads it). A workqueue worker is a kernel thread,
//! with no `current->mm`; `get_user_pages_fast()` would dereference it. The safe lookup must
//! refuse with `ESRCH` instead. `init` waits for the worker's answer and fails the load unless
//! it is exactly `ESRCH`.

use kernel::{
    mm::gup,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Release},
        Arc,
    },
    time::{delay::fsleep, Delta},
    workqueue,
};

module! {
    type: NoMm,
    name: "spt_nomm",
    authors: ["shadowpt developers"],
    description: "test: user page lookup from a kernel thread",
    license: "GPL",
}

/// No answer from the worker yet.
const PENDING: i32 = i32::MIN;

struct NoMm;

impl kernel::Module for NoMm {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let answer = Arc::new(Atomic::new(PENDING), GFP_KERNEL)?;
        let worker_answer = answer.clone();
        workqueue::system().try_spawn(GFP_KERNEL, move || {
            let errno = match gup::get_user_page_fast(0x10000, gup::Flags::empty()) {
                Ok(_) => 0,
                Err(e) => e.to_errno(),
            };
            worker_answer.store(errno, Release);
        })?;
        let mut waited = 0;
        while answer.load(Acquire) == PENDING && waited < 5000 {
            fsleep(Delta::from_millis(1));
            waited += 1;
        }
        match answer.load(Acquire) {
            e if e == ESRCH.to_errno() => {
                pr_info!("get_user_page_fast from a kernel thread: ESRCH\n");
                Ok(NoMm)
            }
            PENDING => {
                pr_err!("the worker did not answer\n");
                Err(ETIMEDOUT)
            }
            other => {
                pr_err!("get_user_page_fast from a kernel thread returned {other}, not -ESRCH\n");
                Err(EINVAL)
            }
        }
    }
}
