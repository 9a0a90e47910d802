// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/debug/shadowpt/`: the module's debugfs tree.
//!
//! Every file is documented in `Documentation/counters.rst`.

use core::fmt;
use kernel::{debugfs, prelude::*};

/// The module version, as printed by `/sys/kernel/debug/shadowpt/version`.
pub(crate) const VERSION: &str = "0.1.0";

/// Contents of the `version` file: the version string followed by a newline.
struct Version;

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(VERSION)
    }
}

/// The debugfs directory `shadowpt/` and the files in it.
///
/// Dropping it removes the directory and everything in it.
pub(crate) struct Root {
    // Dropped first: the file goes before its directory.
    _version: Pin<KBox<debugfs::File<Version>>>,
    _dir: debugfs::Dir,
}

impl Root {
    /// Creates `/sys/kernel/debug/shadowpt/` and its files.
    pub(crate) fn new() -> Result<Self> {
        let dir = debugfs::Dir::new(c"shadowpt");
        let version = KBox::pin_init(dir.read_only_file(c"version", Version), GFP_KERNEL)?;
        Ok(Self {
            _version: version,
            _dir: dir,
        })
    }
}
