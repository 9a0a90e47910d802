// SPDX-License-Identifier: GPL-2.0

//! Counters, per attachment and global, and their debugfs files.
//!
//! Every counter is documented in `Documentation/debugfs.rst`, with when it moves. Event counters
//! only grow; `present` and `table_pages` are gauges, updated with the table's lock held.

use kernel::{
    debugfs::ScopedDir,
    sync::atomic::{Atomic, Relaxed},
};

/// Declares [`Counter`] and the [`Stats`] structure with one atomic per counter, in ABI order
/// (the order of `struct shadowpt_stats`).
macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// A counter of [`Stats`]: its index in [`Stats::counters`].
        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types)]
        #[repr(usize)]
        pub(crate) enum Counter {
            $($name,)*
        }

        /// The number of counters.
        const COUNTERS: usize = [$(Counter::$name),*].len();

        /// The counters of one attachment, or the global ones.
        pub(crate) struct Stats {
            // Indexed by `Counter`: a callback's update is one indexed atomic add, without a
            // branch per counter (callbacks are on KSM's and the page fault's hot paths).
            counters: [Atomic<u64>; COUNTERS],
        }

        impl Stats {
            pub(crate) const fn new() -> Self {
                Self {
                    counters: [const { Atomic::new(0) }; COUNTERS],
                }
            }

            fn get(&self, c: Counter) -> &Atomic<u64> {
                &self.counters[c as usize]
            }

            /// The `struct shadowpt_stats` reply. Its fields are named like the counters, so a
            /// counter missing from the C header, or one more there, does not compile.
            pub(crate) fn reply(&self, mode: u32) -> crate::uapi::StatsReply {
                crate::uapi::StatsReply {
                    size: crate::uapi::STATS_SIZE as u32,
                    mode,
                    $($name: self.get(Counter::$name).load(Relaxed),)*
                }
            }

            /// Creates one read-only debugfs file per counter in `dir`.
            pub(crate) fn create_files<'data>(&'data self, dir: &ScopedDir<'data, '_>) {
                $(dir.read_only_file(kernel::c_str!(stringify!($name)), self.get(Counter::$name));)*
            }
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

/// The global counters: the sum over every attachment, past and present.
pub(crate) static GLOBAL: Stats = Stats::new();

/// Attachments currently alive (a global gauge).
pub(crate) static ATTACHMENTS: Atomic<u64> = Atomic::new(0);

impl Stats {
    /// Adds `n` to an event counter here and globally.
    pub(crate) fn add(&self, c: Counter, n: u64) {
        if n != 0 {
            self.get(c).fetch_add(n, Relaxed);
            GLOBAL.get(c).fetch_add(n, Relaxed);
        }
    }

    /// Adds one to an event counter here and globally.
    pub(crate) fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Sets a gauge to `v`, adjusting the global gauge by the difference.
    pub(crate) fn set_gauge(&self, c: Counter, v: u64) {
        let old = self.get(c).load(Relaxed);
        // Most callbacks leave the table's size as it was: no atomic operation then.
        if v == old {
            return;
        }
        self.get(c).store(v, Relaxed);
        if v >= old {
            GLOBAL.get(c).fetch_add(v - old, Relaxed);
        } else {
            GLOBAL.get(c).fetch_sub(old - v, Relaxed);
        }
    }
}
