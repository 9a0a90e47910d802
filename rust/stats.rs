// SPDX-License-Identifier: GPL-2.0

//! Counters, per attachment and global, and their debugfs files.
//!
//! Every counter is documented in `Documentation/debugfs.rst`, with when it moves. Event counters
//! only grow; `present` and `table_pages` are gauges.
//!
//! An attachment's counters are plain integers in its [`State`], updated with the table's lock
//! held, which every callback takes anyway: a callback pays one add per counter, no atomic
//! operation (callbacks are on KSM's and the page fault's hot paths). The global counters are
//! summed when read, over the attachments alive ([`REGISTRY`]) plus what the ones gone left
//! behind.
//!
//! # Locking
//!
//! [`REGISTRY`] is a mutex, taken only by attachment creation and teardown and by readers of the
//! global counters. It comes before `mirror::State::inner` (a reader holds it while it takes
//! each live attachment's lock), and is never taken with `inner` held.

use crate::mirror::State;
use kernel::{debugfs::ScopedDir, prelude::*, sync::Arc};

/// Declares [`Counter`] and the [`Counters`] structure, in ABI order (the order of
/// `struct shadowpt_stats`).
macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// A counter of [`Counters`]: its index in [`Counters::values`].
        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types)]
        #[repr(usize)]
        pub(crate) enum Counter {
            $($name,)*
        }

        /// The number of counters.
        const COUNTERS: usize = [$(Counter::$name),*].len();

        /// The counters of one attachment, or a snapshot of the global ones.
        #[derive(Clone, Copy)]
        pub(crate) struct Counters {
            // Indexed by `Counter`: an update is one indexed add, without a branch per counter.
            values: [u64; COUNTERS],
        }

        impl Counters {
            /// Every counter at 0.
            pub(crate) const fn new() -> Self {
                Self { values: [0; COUNTERS] }
            }

            /// The value of `c`.
            #[inline]
            pub(crate) fn get(&self, c: Counter) -> u64 {
                self.values[c as usize]
            }

            /// The `struct shadowpt_stats` reply. Its fields are named like the counters, so a
            /// counter missing from the C header, or one more there, does not compile.
            pub(crate) fn reply(&self, mode: u32) -> crate::uapi::StatsReply {
                crate::uapi::StatsReply {
                    size: crate::uapi::STATS_SIZE as u32,
                    mode,
                    $($name: self.get(Counter::$name),)*
                }
            }
        }

        /// Creates one read-only debugfs file per counter in `dir`, showing `source`'s value.
        pub(crate) fn create_files<'data, T: Source>(source: &'data T, dir: &ScopedDir<'data, '_>) {
            $(dir.read_callback_file(
                kernel::c_str!(stringify!($name)),
                source,
                &|s: &T, f: &mut core::fmt::Formatter<'_>| {
                    writeln!(f, "{}", s.counter(Counter::$name))
                },
            );)*
        }
    };
}

counters!(
    faults,
    fault_retries,
    invalidate_start,
    invalidate_end,
    zapped,
    change_pte,
    change_pte_updated,
    change_pte_absent,
    change_pte_illegal,
    releases,
    young,
    present,
    table_pages,
    invalidate_ns,
    change_pte_ns,
    invalidate_nonblock,
);

impl Counters {
    /// Adds `n` to an event counter. Counters wrap instead of overflowing: a wrapped counter
    /// is still a correct difference between two reads.
    #[inline]
    pub(crate) fn add(&mut self, c: Counter, n: u64) {
        let v = &mut self.values[c as usize];
        *v = v.wrapping_add(n);
    }

    /// Adds one to an event counter.
    #[inline]
    pub(crate) fn inc(&mut self, c: Counter) {
        self.add(c, 1);
    }

    /// Sets a gauge to `v`.
    #[inline]
    pub(crate) fn set(&mut self, c: Counter, v: u64) {
        self.values[c as usize] = v;
    }

    /// Adds every counter of `other` to ours.
    fn add_all(&mut self, other: &Counters) {
        for (v, o) in self.values.iter_mut().zip(other.values.iter()) {
            *v = v.wrapping_add(*o);
        }
    }
}

/// What a directory of counter files shows.
pub(crate) trait Source: Send + Sync + 'static {
    /// The current value of `c`.
    fn counter(&self, c: Counter) -> u64;
}

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
