// SPDX-License-Identifier: GPL-2.0

//! `/dev/shadowpt`: the misc device and its file operations.
//!
//! Each open file is one client. The file holds a reference on the module (the misc device's
//! `fops.owner`), so the module cannot be unloaded while any file is open.

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
};

/// Returns an initialiser registering `/dev/shadowpt`.
pub(crate) fn register() -> impl PinInit<MiscDeviceRegistration<ShadowPtFile>, Error> {
    MiscDeviceRegistration::register(MiscDeviceOptions { name: c"shadowpt" })
}

/// Per-open-file state of `/dev/shadowpt`.
pub(crate) struct ShadowPtFile;

#[vtable]
impl MiscDevice for ShadowPtFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        Ok(KBox::new(ShadowPtFile, GFP_KERNEL)?)
    }
}
