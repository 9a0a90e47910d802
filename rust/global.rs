// SPDX-License-Identifier: GPL-2.0

//! The attachments alive, and the global counters summed over them and over those gone.
//!
//! The global counters are summed when read, over the attachments alive ([`REGISTRY`]) plus what
//! the ones gone left behind, so a `global/` file is exact without an atomic operation in the
//! callbacks.
//!
//! # Locking
//!
//! [`REGISTRY`] is a mutex, taken only by attachment creation and teardown and by readers of the
//! global counters. It comes before `mirror::State::inner` (a reader holds it while it takes
//! each live attachment's lock), and is never taken with `inner` held.

use crate::{
    mirror::State,
    stats::{Counter, Counters, Source},
};
use kernel::{prelude::*, sync::Arc};

/// The attachments alive and what the ones gone left behind.
struct Registry {
    live: KVec<Arc<State>>,
    /// The event counters of every attachment gone (gauges stay 0: their tables are gone).
    retired: Counters,
}

kernel::sync::global_lock! {
    // SAFETY: Initialised by `init()`, in module init, before `/dev/shadowpt` exists.
    unsafe(uninit) static REGISTRY: Mutex<Registry> = Registry {
        live: KVec::new(),
        retired: Counters::new(),
    };
}

/// Initialises the registry. Must be called once, from module init, before any attachment.
pub(crate) fn init() {
    // SAFETY: Called once, from module init, before any other use of `REGISTRY`.
    unsafe { REGISTRY.init() };
}

/// The global counters: every counter summed over the attachments alive, plus the event
/// counters of those gone.
pub(crate) fn global() -> Counters {
    let registry = REGISTRY.lock();
    let mut sum = registry.retired;
    for state in registry.live.iter() {
        sum.add_all(&state.counters());
    }
    sum
}

/// Attachments alive now.
pub(crate) fn attachments() -> u64 {
    REGISTRY.lock().live.len() as u64
}

/// An attachment's place in the global counters, from its creation to its teardown.
///
/// Dropped after the attachment's notifier is unregistered: its counters, final by then, move
/// to the retired totals.
pub(crate) struct Registered(Arc<State>);

impl Registered {
    /// Adds `state` to the attachments alive.
    ///
    /// # Errors
    ///
    /// `ENOMEM` if the registry cannot grow.
    pub(crate) fn new(state: Arc<State>) -> Result<Self> {
        REGISTRY.lock().live.push(state.clone(), GFP_KERNEL)?;
        Ok(Self(state))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut registry = REGISTRY.lock();
        registry.live.retain(|s| !Arc::ptr_eq(s, &self.0));
        if registry.live.is_empty() {
            // Free the buffer with the last attachment: the registry is a static, never
            // dropped, and the module can only be unloaded once no attachment is left.
            registry.live = KVec::new();
        }
        // The gauges describe a table, and this one is gone: only the events stay.
        let mut gone = self.0.counters();
        gone.set(Counter::present, 0);
        gone.set(Counter::table_pages, 0);
        registry.retired.add_all(&gone);
    }
}

/// The `global` directory's data.
pub(crate) struct Global;

impl Source for Global {
    fn counter(&self, c: Counter) -> u64 {
        global().get(c)
    }
}
