// SPDX-License-Identifier: GPL-2.0

//! The attachments alive, and the global counters summed over them and over those gone.
//!
//! The global counters are summed when read, over the attachments alive ([`REGISTRY`]) plus what
//! the ones gone left behind, so a `global/` file is exact without an atomic operation in the
//! callbacks. `zap_hold_max_ns` is a maximum, not a sum: the largest of the attachments'.
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
use kernel::{
    mm::Mm,
    prelude::*,
    sync::{aref::ARef, Arc},
};

/// An attachment alive: its counters and the address space it mirrors.
struct Live {
    state: Arc<State>,
    /// Held with `mmgrab()`: no other address space can have its address while the entry
    /// exists, so counting the entries of an address space by address is exact.
    mm: ARef<Mm>,
}

/// The attachments alive and what the ones gone left behind.
struct Registry {
    live: KVec<Live>,
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
/// counters of those gone (`zap_hold_max_ns`: the largest, theirs included).
pub(crate) fn global() -> Counters {
    let registry = REGISTRY.lock();
    let mut sum = registry.retired;
    for live in registry.live.iter() {
        sum.add_all(&live.state.counters());
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
    /// Adds `state`, an attachment of `mm`, to the attachments alive.
    ///
    /// Each attachment of an address space costs an `mm_take_all_locks()` when it registers and
    /// a callback in every invalidation of the address space (ksmd's included), so their number
    /// per address space is capped by the `max_attachments_per_mm` module parameter (0: no
    /// limit), checked and counted under one acquisition of the registry's lock.
    ///
    /// # Errors
    ///
    /// `ENOSPC` if `mm` has `max_attachments_per_mm` attachments alive already; `ENOMEM` if
    /// the registry cannot grow.
    pub(crate) fn new(state: Arc<State>, mm: &Mm) -> Result<Self> {
        let max = crate::module_parameters::max_attachments_per_mm.value();
        let mut registry = REGISTRY.lock();
        if max != 0 {
            let n = registry
                .live
                .iter()
                .filter(|l| l.mm.as_raw() == mm.as_raw())
                .count();
            if n >= max as usize {
                return Err(ENOSPC);
            }
        }
        let live = Live {
            state: state.clone(),
            mm: ARef::from(mm),
        };
        registry.live.push(live, GFP_KERNEL)?;
        Ok(Self(state))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut registry = REGISTRY.lock();
        registry.live.retain(|l| !Arc::ptr_eq(&l.state, &self.0));
        if registry.live.is_empty() {
            // Free the buffer with the last attachment: the registry is a static, never
            // dropped, and the module can only be unloaded once no attachment is left.
            registry.live = KVec::new();
        }
        // The gauges describe a table, and this one is gone: the events and the maximum stay.
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
