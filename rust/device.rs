// SPDX-License-Identifier: GPL-2.0

//! `/dev/shadowpt`: the misc device, its ioctls and the attachments they create.
//!
//! Each open file is one client with at most one [`Attachment`]. The file holds a reference on
//! the module (the misc device's `fops.owner`), so the module cannot be unloaded while any file
//! is open. Closing the file detaches.
//!
//! A file belongs to the address space that opened it, as a KVM VM belongs to the one that
//! created it: every ioctl from another one (a child that inherited the file across `fork()`, a
//! process it was passed to) fails with `EPERM`, `ATTACH` and `DETACH` included, so no other
//! process can take the attachment away or mirror its own memory through the file.
//!
//! # Locking
//!
//! Lock order: [`ShadowPtFile::attaching`] -> the core mm's locks (`mmap_lock` for the range
//! check, `mm_take_all_locks()` in registration, page faults of the reply's copy) ->
//! `global::REGISTRY`. `attaching` is a mutex held across a whole `ATTACH`: the `ATTACH` calls of
//! one file run one after the other, so a losing one fails before it changes anything. No
//! notifier callback and no other ioctl takes it.
//! [`ShadowPtFile::attachment`] is a mutex held only to read or replace the attachment pointer,
//! never across a fault, a copy from or to user space, or a registration: an ioctl clones the
//! [`Arc`] and works on the clone. The attachment is torn down (notifier unregistered) when the
//! last clone is dropped, by `DETACH`, `close()` or the last ioctl in flight.

use crate::{
    debugfs,
    global::Registered,
    mirror::{pages, FaultContext, Mirror, Mode, State},
    table::{leaf_end, ADDRESS_LIMIT},
    uapi,
};
use kernel::{
    alloc::KVec,
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::{mmu_notifier::Registration, virt::flags as vm_flags, Mm, MmWithUser},
    new_mutex,
    page::PAGE_SIZE,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{Atomic, Relaxed},
        Arc, Mutex,
    },
    uaccess::{UserPtr, UserSlice},
};

/// Returns an initialiser registering `/dev/shadowpt`.
pub(crate) fn register() -> impl PinInit<MiscDeviceRegistration<ShadowPtFile>, Error> {
    MiscDeviceRegistration::register(MiscDeviceOptions { name: c"shadowpt" })
}

/// Next attachment id; ids are never reused while the module is loaded. An `ATTACH` that fails
/// gives its id back unless another file's `ATTACH` took the next one meanwhile.
static NEXT_ID: Atomic<u64> = Atomic::new(1);

/// One mirrored range: the notifier registration (which owns the [`Mirror`]), its debugfs
/// directory and its place in the global counters.
pub(crate) struct Attachment {
    // Dropped first: unregistering runs `release`, which empties the table.
    registration: Pin<KBox<Registration<Mirror>>>,
    // `None` only while `ATTACH` builds the attachment.
    _debugfs: Option<Pin<KBox<kernel::debugfs::Scope<debugfs::AttachmentInfo>>>>,
    // Dropped last, once no callback can run: the final counters move to the global totals.
    _registered: Registered,
}

impl Attachment {
    fn mirror(&self) -> &Mirror {
        &self.registration
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // Runs before the fields are dropped, i.e. before unregistration calls `release`.
        self.mirror().detaching();
    }
}

/// Per-open-file state of `/dev/shadowpt`.
#[pin_data]
pub(crate) struct ShadowPtFile {
    /// The address space that opened the file, the only one whose tasks may use it (`None`:
    /// opened by a kernel thread, which can use nothing). Held with `mmgrab()`, so that no other
    /// address space can ever have the same address while the file is open.
    mm: Option<ARef<Mm>>,
    /// Serialises `ATTACH` on this file (see the locking rules above).
    #[pin]
    attaching: Mutex<()>,
    #[pin]
    attachment: Mutex<Option<Arc<Attachment>>>,
}

#[vtable]
impl MiscDevice for ShadowPtFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        let task = kernel::current!();
        let mm = task.mm().map(|mm| ARef::<Mm>::from(&**mm));
        KBox::try_pin_init(
            try_pin_init!(ShadowPtFile {
                mm,
                attaching <- new_mutex!((), "shadowpt::ShadowPtFile::attaching"),
                attachment <- new_mutex!(None, "shadowpt::ShadowPtFile::attachment"),
            }),
            GFP_KERNEL,
        )
    }

    fn ioctl(me: Pin<&ShadowPtFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let task = kernel::current!();
        // Every known ioctl checks its caller first: an unknown number is `ENOTTY` for anyone.
        let caller = || me.check_caller(task.mm());
        match cmd {
            uapi::IOC_ATTACH => me.attach(caller()?, arg),
            uapi::IOC_DETACH => caller().and_then(|_| me.detach()),
            uapi::IOC_FAULT => me.fault(caller()?, arg),
            uapi::IOC_READ => me.read_write(caller()?, arg, false),
            uapi::IOC_WRITE => me.read_write(caller()?, arg, true),
            uapi::IOC_SNAPSHOT => caller().and_then(|_| me.snapshot(arg)),
            uapi::IOC_STATS => caller().and_then(|_| me.stats(arg)),
            _ => Err(ENOTTY),
        }
    }
}

/// Checks that `addr` and `len` are page aligned and `len` is in `1..=max`.
fn check_pages(addr: usize, len: usize, max: usize) -> Result {
    if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
        return Err(EINVAL);
    }
    if len > max {
        return Err(E2BIG);
    }
    Ok(())
}

/// Turns `EFAULT` from a write fault on memory the process maps read-only into `EACCES`.
fn refine_fault_error(mm: &MmWithUser, addr: usize, write: bool, err: Error) -> Error {
    if err != EFAULT || !write {
        return err;
    }
    let guard = mm.mmap_read_lock();
    match guard.vma_lookup(addr) {
        Some(vma) if vma.flags() & vm_flags::WRITE == 0 => EACCES,
        _ => EFAULT,
    }
}

/// Faults in, when `page` reaches `*populated_to`, what the table lacks of the leaf table's span
/// that starts at `page` (up to `end_page` at most), with one lookup for the run, and moves
/// `*populated_to` to the end of that span. Errors are ignored: the copy that follows faults
/// page by page where the batch stopped, and reports the error at the page where it happens. A
/// failed batch keeps no page reference ([`Mirror::populate`] drops them on every return), so
/// the copy does not hold them.
fn populate_ahead(
    mirror: &Mirror,
    page: usize,
    end_page: usize,
    write: bool,
    populated_to: &mut usize,
    ctx: &mut FaultContext,
    faults: &mut u64,
) {
    if page >= *populated_to {
        *populated_to = leaf_end(page, end_page);
        let _ = mirror.populate(page, *populated_to, write, ctx, faults);
    }
}

/// `READ`: copies `[req.addr, req.addr + req.length)` to `req.buf` through the table, faulting
/// in what is missing; returns the faults taken.
///
/// Page by page through a bounce buffer, the mirror of `WRITE`: faults a leaf table's span at a
/// time (what the span lacks: one lookup for the run), then copies each page's bytes out of the
/// page its entry maps into the bounce buffer under the table's lock ([`Mirror::read`], which
/// faults the page alone where the entry is missing after all, and reports its error), and
/// then, with no lock and no page reference held, to user space. That copy may fault on the
/// destination and block for as long as the destination takes (a userfaultfd or FUSE-backed
/// buffer): meanwhile the mirrored pages can migrate, be compacted or go offline.
fn read_pages(mirror: &Mirror, req: &uapi::Rw) -> Result<u64> {
    let mut writer = UserSlice::new(UserPtr::from_addr(req.buf), req.length).writer();
    let mut bounce = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
    let mut ctx = FaultContext::new();
    let mut faults = 0u64;
    let mut addr = req.addr;
    let end = req.addr + req.length;
    let end_page = end.next_multiple_of(PAGE_SIZE);
    // The first page of the request starts a batch, even where `req.addr` is not page aligned.
    let mut populated_to = addr & !(PAGE_SIZE - 1);
    while addr < end {
        let chunk = core::cmp::min(end - addr, PAGE_SIZE - addr % PAGE_SIZE);
        let buf = &mut bounce[..chunk];
        let page = addr & !(PAGE_SIZE - 1);
        populate_ahead(
            mirror,
            page,
            end_page,
            false,
            &mut populated_to,
            &mut ctx,
            &mut faults,
        );
        faults += mirror.read(addr, buf, &mut ctx)?;
        writer.write_slice(buf)?;
        addr += chunk;
    }
    Ok(faults)
}

/// `WRITE`: copies `req.buf` to `[req.addr, req.addr + req.length)` through the table, faulting
/// in (writable) what is missing; returns the faults taken.
///
/// Page by page through a bounce buffer: the data of a page is read from user space before the
/// table is touched (so that a write from a bad buffer maps nothing), and written into the page
/// under the table's lock, which keeps the entry writable for the copy.
fn write_pages(mirror: &Mirror, mm: &MmWithUser, req: &uapi::Rw) -> Result<u64> {
    let mut reader = UserSlice::new(UserPtr::from_addr(req.buf), req.length).reader();
    let mut bounce = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
    let mut ctx = FaultContext::new();
    let mut faults = 0u64;
    let mut addr = req.addr;
    let end = req.addr + req.length;
    let end_page = end.next_multiple_of(PAGE_SIZE);
    // The first page of the request starts a batch, even where `req.addr` is not page aligned.
    let mut populated_to = addr & !(PAGE_SIZE - 1);
    while addr < end {
        let chunk = core::cmp::min(end - addr, PAGE_SIZE - addr % PAGE_SIZE);
        let buf = &mut bounce[..chunk];
        // The page's data first: a write from a bad buffer maps nothing.
        reader.read_slice(buf)?;
        let buf = &*buf;
        let page = addr & !(PAGE_SIZE - 1);
        populate_ahead(
            mirror,
            page,
            end_page,
            true,
            &mut populated_to,
            &mut ctx,
            &mut faults,
        );
        faults += mirror
            .write(addr, buf, &mut ctx)
            .map_err(|e| refine_fault_error(mm, addr, true, e))?;
        addr += chunk;
    }
    Ok(faults)
}

impl ShadowPtFile {
    /// Fails with `EPERM` unless the caller's address space is the one that opened the file.
    fn check_caller<'a>(&self, mm: Option<&'a MmWithUser>) -> Result<&'a MmWithUser> {
        match (mm, &self.mm) {
            (Some(mm), Some(own)) if mm.as_raw() == own.as_raw() => Ok(mm),
            _ => Err(EPERM),
        }
    }

    /// The attachment. The caller was checked: it is of the attached address space.
    fn get(&self) -> Result<Arc<Attachment>> {
        self.attachment.lock().clone().ok_or(ENXIO)
    }

    /// `ATTACH`, for a caller of the file's address space `mm`.
    ///
    /// All or nothing: the attachment is published on the file only once nothing can fail any
    /// more, the reply's copy included; a failure drops what was built (unregistering the
    /// notifier), gives the id back and leaves the file, debugfs and the global counters as they
    /// were.
    fn attach(&self, mm: &MmWithUser, arg: usize) -> Result<isize> {
        let req = uapi::Attach::read(
            &mut UserSlice::new(UserPtr::from_addr(arg), uapi::ATTACH_SIZE).reader(),
        )?;
        let mode = Mode::from_abi(req.mode)?;
        check_pages(req.start, req.length, uapi::MAX_ATTACH)?;
        let end = req.start.checked_add(req.length).ok_or(EOVERFLOW)?;
        if end > ADDRESS_LIMIT {
            return Err(EFAULT);
        }
        // Held to the end: a concurrent `ATTACH` on the file waits, then gets `EBUSY` here.
        let _attaching = self.attaching.lock();
        if self.attachment.lock().is_some() {
            return Err(EBUSY);
        }
        {
            // The whole range must be mapped now; it may change later.
            let guard = mm.mmap_read_lock();
            let mut addr = req.start;
            while addr < end {
                addr = guard.vma_lookup(addr).ok_or(EFAULT)?.end();
            }
        }

        let state = State::new()?;
        // Counted, and held to the per-address-space cap, before the notifier is registered:
        // an `ATTACH` beyond the cap costs no `mm_take_all_locks()`.
        let registered = Registered::new(state.clone(), mm)?;
        let mirror = Mirror::new(req.start, end, mode, state.clone());
        let registration = KBox::pin_init(Registration::register(mm, mirror), GFP_KERNEL)?;
        // From here on a failure drops the attachment, whose `Drop` announces the coming
        // `release` as an unregistration (not counted as an exit).
        let mut attachment = Attachment {
            registration,
            _debugfs: None,
            _registered: registered,
        };
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let published = (|| -> Result<Arc<Attachment>> {
            // The reply first: a reply that cannot be written fails before anything shows.
            uapi::write(arg, &req.reply(id))?;
            let info = debugfs::AttachmentInfo::new(state, mode, req.start, end);
            attachment._debugfs = Some(debugfs::attachment_dir(id, info)?);
            Ok(Arc::new(attachment, GFP_KERNEL)?)
        })();
        match published {
            Ok(attachment) => {
                // Nothing else sets the slot while we hold `attaching`; a `DETACH` can only
                // have emptied it.
                *self.attachment.lock() = Some(attachment);
                Ok(0)
            }
            Err(e) => {
                // The id goes back unless another file's `ATTACH` took the next one meanwhile.
                let _ = NEXT_ID.cmpxchg(id + 1, id, Relaxed);
                Err(e)
            }
        }
    }

    fn detach(&self) -> Result<isize> {
        let attachment = self.attachment.lock().take().ok_or(ENXIO)?;
        // Unregisters here unless an ioctl in flight still holds a clone.
        drop(attachment);
        Ok(0)
    }

    fn fault(&self, mm: &MmWithUser, arg: usize) -> Result<isize> {
        let attachment = self.get()?;
        let req = uapi::Fault::read(
            &mut UserSlice::new(UserPtr::from_addr(arg), uapi::FAULT_SIZE).reader(),
        )?;
        if req.flags & !uapi::ACCESS_WRITE != 0 {
            return Err(EINVAL);
        }
        check_pages(req.addr, req.length, uapi::MAX_IO)?;
        let mirror = attachment.mirror();
        mirror.check_range(req.addr, req.length)?;
        let write = req.flags & uapi::ACCESS_WRITE != 0;
        let mut ctx = FaultContext::new();
        let mut faults = 0u64;
        mirror
            .populate(
                req.addr,
                req.addr + req.length,
                write,
                &mut ctx,
                &mut faults,
            )
            .map_err(|e| refine_fault_error(mm, e.addr, write, e.err))?;
        uapi::write(arg, &req.reply(faults))?;
        Ok(0)
    }

    fn read_write(&self, mm: &MmWithUser, arg: usize, write: bool) -> Result<isize> {
        let attachment = self.get()?;
        let req =
            uapi::Rw::read(&mut UserSlice::new(UserPtr::from_addr(arg), uapi::RW_SIZE).reader())?;
        if req.flags != 0 || req.length == 0 {
            return Err(EINVAL);
        }
        if req.length > uapi::MAX_IO {
            return Err(E2BIG);
        }
        let mirror = attachment.mirror();
        mirror.check_range(req.addr, req.length)?;
        let faults = if write {
            write_pages(mirror, mm, &req)?
        } else {
            read_pages(mirror, &req)?
        };
        uapi::write(arg, &req.reply(faults))?;
        Ok(0)
    }

    fn snapshot(&self, arg: usize) -> Result<isize> {
        let attachment = self.get()?;
        let req = uapi::Snapshot::read(
            &mut UserSlice::new(UserPtr::from_addr(arg), uapi::SNAPSHOT_SIZE).reader(),
        )?;
        if req.flags != 0 || req.npages == 0 || req.addr % PAGE_SIZE != 0 {
            return Err(EINVAL);
        }
        if req.npages > pages(uapi::MAX_IO) {
            return Err(E2BIG);
        }
        let mirror = attachment.mirror();
        mirror.check_range(req.addr, req.npages * PAGE_SIZE)?;
        let mut writer = UserSlice::new(UserPtr::from_addr(req.buf), req.npages).writer();
        let mut states = KVec::with_capacity(PAGE_SIZE, GFP_KERNEL)?;
        for i in 0..req.npages {
            states.push(mirror.snapshot(req.addr + i * PAGE_SIZE)?, GFP_KERNEL)?;
            if states.len() == PAGE_SIZE || i + 1 == req.npages {
                writer.write_slice(&states)?;
                states.clear();
            }
        }
        Ok(0)
    }

    fn stats(&self, arg: usize) -> Result<isize> {
        let attachment = self.get()?;
        let mut size = [0u8; 4];
        UserSlice::new(UserPtr::from_addr(arg), 4)
            .reader()
            .read_slice(&mut size)?;
        if u32::from_ne_bytes(size) as usize != uapi::STATS_SIZE {
            return Err(EINVAL);
        }
        let mirror = attachment.mirror();
        uapi::write(arg, &mirror.counters().reply(mirror.mode().to_abi()))?;
        Ok(0)
    }
}
