// SPDX-License-Identifier: GPL-2.0

//! The counters: their names, one set of values, and their debugfs files.
//!
//! Every counter is documented in `Documentation/debugfs.rst`, with when it moves. Event counters
//! only grow; `present` and `table_pages` are gauges, `zap_hold_max_ns` a maximum.
//!
//! This file knows nothing of who keeps counters. An attachment keeps its [`Counters`] as plain
//! integers in its `mirror::State`, updated with the table's lock held, which every callback
//! takes anyway: a callback pays one add per counter, no atomic operation (callbacks are on KSM's
//! and the page fault's hot paths). `global.rs` sums them over the attachments.

use kernel::debugfs::ScopedDir;

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
    zap_chunks,
    zap_hold_max_ns,
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

    /// Raises a maximum to `v` if `v` is larger.
    #[inline]
    pub(crate) fn raise_max(&mut self, c: Counter, v: u64) {
        let m = &mut self.values[c as usize];
        *m = (*m).max(v);
    }

    /// Adds every counter of `other` to ours; a maximum becomes the larger of the two.
    pub(crate) fn add_all(&mut self, other: &Counters) {
        for (i, (v, o)) in self.values.iter_mut().zip(other.values.iter()).enumerate() {
            *v = if i == Counter::zap_hold_max_ns as usize {
                (*v).max(*o)
            } else {
                v.wrapping_add(*o)
            };
        }
    }
}

/// What a directory of counter files shows.
pub(crate) trait Source: Send + Sync + 'static {
    /// The current value of `c`.
    fn counter(&self, c: Counter) -> u64;
}
