// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/debug/shadowpt/`: the module's debugfs tree.
//!
//! ```text
//! shadowpt/version        module version
//! shadowpt/global/<ctr>   every counter, summed over all attachments past and present
//! shadowpt/global/attachments   attachments alive now
//! shadowpt/<id>/<ctr>     the counters of attachment <id>, plus `mode` and `range`
//! ```
//!
//! Every file is documented in `Documentation/debugfs.rst`.

use crate::{
    global::{self, Global},
    mirror::{Mode, State},
    stats,
};
use core::fmt;
use kernel::{
    debugfs::{self, Dir, Scope},
    prelude::*,
    str::CString,
    sync::Arc,
};

/// The module version, as printed by `/sys/kernel/debug/shadowpt/version`.
pub(crate) const VERSION: &str = "0.2.0";

/// Contents of the `version` file: the version string followed by a newline.
struct Version;

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(VERSION)
    }
}

kernel::sync::global_lock! {
    // SAFETY: Initialised by `Root::new()`, in module init, before `/dev/shadowpt` exists.
    unsafe(uninit) static ROOT_DIR: Mutex<Option<Dir>> = None;
}

/// Contents of `global/attachments`.
struct Attachments;

impl fmt::Debug for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", global::attachments())
    }
}

/// Data of the `global` scope: its files sum the attachments' counters when read.
struct GlobalFiles {
    counters: Global,
    attachments: Attachments,
}

/// The debugfs directory `shadowpt/` and the files in it.
///
/// Dropping it removes the directory and everything in it (attachments' directories are gone
/// by then: each open file pins the module).
pub(crate) struct Root {
    // Dropped first: the files go before their directory.
    _version: Pin<KBox<debugfs::File<Version>>>,
    _global: Pin<KBox<Scope<GlobalFiles>>>,
    _dir: Dir,
}

impl Root {
    /// Creates `/sys/kernel/debug/shadowpt/` and its files.
    pub(crate) fn new() -> Result<Self> {
        let dir = Dir::new(c"shadowpt");
        let version = KBox::pin_init(dir.read_only_file(c"version", Version), GFP_KERNEL)?;
        let files = GlobalFiles {
            counters: Global,
            attachments: Attachments,
        };
        let global = KBox::pin_init(
            dir.scope(
                Ok::<GlobalFiles, Error>(files),
                c"global",
                |files: &GlobalFiles, scoped: &debugfs::ScopedDir<'_, '_>| {
                    stats::create_files(&files.counters, scoped);
                    scoped.read_only_file(c"attachments", &files.attachments);
                },
            ),
            GFP_KERNEL,
        )?;
        // SAFETY: Called once, from module init, before any other use of `ROOT_DIR`.
        unsafe { ROOT_DIR.init() };
        *ROOT_DIR.lock() = Some(dir.clone());
        Ok(Self {
            _version: version,
            _global: global,
            _dir: dir,
        })
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        ROOT_DIR.lock().take();
    }
}

/// Contents of `<id>/mode`.
struct ModeName(Mode);

impl fmt::Debug for ModeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Mode::ChangePte => "change_pte",
            Mode::Zap => "zap",
        })
    }
}

/// Contents of `<id>/range`: `start-end` in hex.
struct RangeName(usize, usize);

impl fmt::Debug for RangeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.0, self.1)
    }
}

/// What the directory of one attachment shows.
pub(crate) struct AttachmentInfo {
    state: Arc<State>,
    mode: ModeName,
    range: RangeName,
}

impl AttachmentInfo {
    pub(crate) fn new(state: Arc<State>, mode: Mode, start: usize, end: usize) -> Self {
        Self {
            state,
            mode: ModeName(mode),
            range: RangeName(start, end),
        }
    }
}

/// Creates `shadowpt/<id>/` showing `info`; dropping the returned scope removes it.
pub(crate) fn attachment_dir(
    id: u64,
    info: AttachmentInfo,
) -> Result<Pin<KBox<Scope<AttachmentInfo>>>> {
    let name = CString::try_from_fmt(kernel::prelude::fmt!("{id}"))?;
    let root = ROOT_DIR.lock().clone().ok_or(ENODEV)?;
    KBox::pin_init(
        root.scope(
            Ok::<AttachmentInfo, Error>(info),
            &name,
            |info: &AttachmentInfo, dir: &debugfs::ScopedDir<'_, '_>| {
                stats::create_files(&*info.state, dir);
                dir.read_only_file(c"mode", &info.mode);
                dir.read_only_file(c"range", &info.range);
            },
        ),
        GFP_KERNEL,
    )
}
