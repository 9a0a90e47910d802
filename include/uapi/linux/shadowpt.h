/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * shadowpt: the user-space ABI of /dev/shadowpt, a software secondary MMU.
 *
 * The kernel-doc comments in this header are the reference of the ABI:
 * Documentation/abi.rst includes them, and adds the model (what an
 * attachment is and how long it lives) and the errors.
 */
#ifndef _UAPI_LINUX_SHADOWPT_H
#define _UAPI_LINUX_SHADOWPT_H

#include <linux/ioctl.h>
#include <linux/types.h>

/**
 * DOC: Structures and versioning
 *
 * Every argument structure starts with ``__u32 size``, which must equal the
 * size of the structure as this header defines it (``EINVAL`` otherwise).
 * The size is also encoded in the ioctl number: a number with another size
 * is unknown (``ENOTTY``). A later version that grows a structure will give
 * it a new ioctl number and keep accepting the old one. Flag and reserved
 * fields must be zero unless a flag is defined (``EINVAL``).
 *
 * Addresses and lengths are ``__u64``; an attachment lies below 2^48, the
 * reach of a four-level page table.
 *
 * A file belongs to the address space that opened it. Every ioctl from a
 * process with another address space (a child that inherited the file
 * across fork(), a process the file was passed to, the opener after
 * execve()) fails with ``EPERM`` before anything else is looked at, and
 * changes nothing; only close() works from anywhere.
 */

/**
 * define SHADOWPT_DEVICE - path of the misc device
 */
#define SHADOWPT_DEVICE		"/dev/shadowpt"

/**
 * define SHADOWPT_IOCTL_TYPE - ioctl type byte of every shadowpt ioctl
 *
 * Free in the kernel's Documentation/userspace-api/ioctl/ioctl-number.rst.
 */
#define SHADOWPT_IOCTL_TYPE	0xb9

/**
 * define SHADOWPT_MAX_ATTACH - largest range one attachment may mirror
 *
 * 64 GiB. A longer &shadowpt_attach.length gets ``E2BIG``.
 */
#define SHADOWPT_MAX_ATTACH	(1ULL << 36)

/**
 * define SHADOWPT_MAX_IO - largest range of one FAULT, READ, WRITE or SNAPSHOT
 *
 * 1 GiB. A longer range gets ``E2BIG``.
 */
#define SHADOWPT_MAX_IO		(1ULL << 30)

/**
 * define SHADOWPT_IOC_ATTACH - mirror a range of the caller's memory
 *
 * Argument: &struct shadowpt_attach. Mirrors ``[start, start + length)`` of
 * the caller's own address space in the file's table, in ``mode``, and
 * returns the attachment's id in ``id``. The whole range must be mapped now
 * (``EFAULT`` otherwise); it may change later. The table starts empty: a
 * page is mapped by the first FAULT, READ or WRITE that needs it. One
 * attachment per open file (``EBUSY`` while the file has one; of two
 * concurrent ATTACHes on a file without one, one gets ``EBUSY``).
 *
 * An address space may have at most ``max_attachments_per_mm`` attachments
 * alive at a time (a module parameter, default 16; 0: no limit), over all
 * its files: one more gets ``ENOSPC``. Each costs the registration of an MMU
 * notifier, which takes every lock of the address space, and a callback in
 * every later invalidation of it.
 *
 * A failing ATTACH changes nothing: no attachment, no debugfs directory,
 * no id used up (except when another file's ATTACH took the next id
 * meanwhile), the global counters as they were. In particular, when the
 * reply cannot be written (``EFAULT``), the range is not attached. The
 * ``id`` field of a failing call is undefined.
 */
#define SHADOWPT_IOC_ATTACH	_IOWR(SHADOWPT_IOCTL_TYPE, 1, struct shadowpt_attach)

/**
 * define SHADOWPT_MODE_CHANGE_PTE - attachment mode: keep and update entries
 *
 * An invalidation of a single page that the core mm flags as followed by
 * ``->change_pte()`` (a KSM merge, a copy-on-write break) keeps the entry,
 * and ``->change_pte()`` then points it at the new page, read-only. Every
 * other invalidation zaps.
 */
#define SHADOWPT_MODE_CHANGE_PTE	0

/**
 * define SHADOWPT_MODE_ZAP - attachment mode: zap on every invalidation
 *
 * What every secondary MMU has done since 2012 and mainline does: the flag
 * is ignored, ``->change_pte()`` finds no entry, and the next access through
 * the table faults the page in again.
 */
#define SHADOWPT_MODE_ZAP		1

/**
 * struct shadowpt_attach - argument of %SHADOWPT_IOC_ATTACH
 * @size: sizeof(struct shadowpt_attach)
 * @mode: %SHADOWPT_MODE_CHANGE_PTE or %SHADOWPT_MODE_ZAP
 * @start: first byte of the range, page aligned
 * @length: bytes, page aligned, 1 page to %SHADOWPT_MAX_ATTACH; the range
 *	must end at or below 2^48
 * @id: out: the attachment's id, which names its debugfs directory
 *	``/sys/kernel/debug/shadowpt/<id>/``; ids are not reused while the
 *	module stays loaded
 */
struct shadowpt_attach {
	__u32 size;
	__u32 mode;
	__u64 start;
	__u64 length;
	__u64 id;
};

/**
 * define SHADOWPT_IOC_DETACH - take the attachment off the file
 *
 * No argument. Returns at once; the attachment is torn down (notifier
 * unregistered, table freed, debugfs directory removed) when its last
 * reference goes: here, or when the last ioctl still in flight on the file
 * returns. Closing the file detaches too (its last close, by whichever
 * process). ``ENXIO`` without an attachment; ``EPERM`` from another address
 * space than the file's, which cannot take the attachment away.
 */
#define SHADOWPT_IOC_DETACH	_IO(SHADOWPT_IOCTL_TYPE, 2)

/**
 * define SHADOWPT_IOC_FAULT - make pages present in the table
 *
 * Argument: &struct shadowpt_fault. Makes every page of
 * ``[addr, addr + length)`` present in the table, writable with
 * %SHADOWPT_ACCESS_WRITE. A read fault maps what a read by the process would
 * see (the shared zero page for untouched anonymous memory); a write fault
 * breaks copy-on-write first, as a write by the process would, and marks the
 * page dirty. On an error, the pages before the failing one may have been
 * mapped.
 */
#define SHADOWPT_IOC_FAULT	_IOWR(SHADOWPT_IOCTL_TYPE, 3, struct shadowpt_fault)

/**
 * define SHADOWPT_ACCESS_WRITE - &shadowpt_fault.flags: fault in writable
 */
#define SHADOWPT_ACCESS_WRITE	(1U << 0)

/**
 * struct shadowpt_fault - argument of %SHADOWPT_IOC_FAULT
 * @size: sizeof(struct shadowpt_fault)
 * @flags: 0 or %SHADOWPT_ACCESS_WRITE
 * @addr: first byte, page aligned, inside the attachment
 * @length: bytes, page aligned, 1 page to %SHADOWPT_MAX_IO
 * @faults: out: the entries this call installed: pages that were absent,
 *	or read-only for a write fault
 */
struct shadowpt_fault {
	__u32 size;
	__u32 flags;
	__u64 addr;
	__u64 length;
	__u64 faults;
};

/**
 * define SHADOWPT_IOC_READ - copy from the attachment through the table
 *
 * Argument: &struct shadowpt_rw. Copies ``length`` bytes at ``addr`` to
 * ``buf``, faulting in the entries that are absent. As with a device's DMA,
 * the data comes from the page the table's entry maps. A failing call may
 * have copied a prefix, and may have faulted entries in (a ``READ`` into a
 * bad buffer fails with ``EFAULT`` after that): the table is a cache,
 * nothing the process sees changes. While the copy waits on ``buf`` (a
 * buffer backed by userfaultfd or FUSE), the call holds no reference on the
 * mirrored pages: they can migrate meanwhile.
 */
#define SHADOWPT_IOC_READ	_IOWR(SHADOWPT_IOCTL_TYPE, 4, struct shadowpt_rw)

/**
 * define SHADOWPT_IOC_WRITE - copy into the attachment through the table
 *
 * Argument: &struct shadowpt_rw. Copies ``length`` bytes from ``buf`` to
 * ``addr``, faulting in writable the entries that are absent or read-only.
 * The entries of each leaf table's span are faulted in only once the data of
 * its first page has been read from ``buf``, so a ``buf`` that cannot be
 * read maps nothing. A failing call may have copied a prefix.
 */
#define SHADOWPT_IOC_WRITE	_IOWR(SHADOWPT_IOCTL_TYPE, 5, struct shadowpt_rw)

/**
 * struct shadowpt_rw - argument of %SHADOWPT_IOC_READ and %SHADOWPT_IOC_WRITE
 * @size: sizeof(struct shadowpt_rw)
 * @flags: reserved, 0
 * @addr: first byte, any alignment, inside the attachment
 * @length: bytes, 1 to %SHADOWPT_MAX_IO
 * @buf: user buffer of @length bytes
 * @faults: out: the entries this call installed (absent, or read-only for
 *	a write)
 */
struct shadowpt_rw {
	__u32 size;
	__u32 flags;
	__u64 addr;
	__u64 length;
	__u64 buf;
	__u64 faults;
};

/**
 * define SHADOWPT_IOC_SNAPSHOT - the table's state, one byte per page
 *
 * Argument: &struct shadowpt_snapshot. Writes the state bits below of each
 * page of ``[addr, addr + npages * 4096)`` to ``buf``. Both sides of a page,
 * the entry and the process's page table, are sampled in the same
 * invalidation epoch (the snapshot waits, like a fault, while an
 * invalidation of the page is in progress), so ``PRESENT`` without
 * ``PFN_MATCH`` is a stale entry: the tests' coherence oracle. Page frame
 * numbers are not exposed. Faults nothing in.
 */
#define SHADOWPT_IOC_SNAPSHOT	_IOW(SHADOWPT_IOCTL_TYPE, 6, struct shadowpt_snapshot)

/**
 * DOC: Snapshot state bits
 *
 * %SHADOWPT_IOC_SNAPSHOT writes one byte per page, an OR of:
 *
 * ``SHADOWPT_PAGE_PRESENT``
 *	the table maps the page
 * ``SHADOWPT_PAGE_WRITABLE``
 *	... writable
 * ``SHADOWPT_PAGE_ACCESSED``
 *	the entry's accessed bit: set by faults and by copies through the
 *	table, cleared by the core mm's ``clear_young`` (page aging)
 * ``SHADOWPT_PAGE_DIRTY``
 *	the entry's dirty bit: set by write faults and ``WRITE``, and by
 *	``->change_pte()`` when the new PTE is dirty; kept when the entry
 *	stays on its page; never set on the zero page. The core mm does not
 *	read it: the page itself is marked dirty when a writable entry is
 *	installed
 * ``SHADOWPT_PAGE_PRIMARY``
 *	the process's own page table maps the page now (looked up without
 *	faulting)
 * ``SHADOWPT_PAGE_PFN_MATCH``
 *	present, primary, and both map the same page frame
 * ``SHADOWPT_PAGE_ZERO``
 *	the entry maps the shared zero page (not set for a page of the huge
 *	zero folio, which a read fault may map where THP is enabled)
 */
#define SHADOWPT_PAGE_PRESENT	(1U << 0)
#define SHADOWPT_PAGE_WRITABLE	(1U << 1)
#define SHADOWPT_PAGE_ACCESSED	(1U << 2)
#define SHADOWPT_PAGE_DIRTY	(1U << 3)
#define SHADOWPT_PAGE_PRIMARY	(1U << 4)
#define SHADOWPT_PAGE_PFN_MATCH	(1U << 5)
#define SHADOWPT_PAGE_ZERO	(1U << 6)

/**
 * struct shadowpt_snapshot - argument of %SHADOWPT_IOC_SNAPSHOT
 * @size: sizeof(struct shadowpt_snapshot)
 * @flags: reserved, 0
 * @addr: first byte, page aligned, inside the attachment
 * @npages: pages, 1 to %SHADOWPT_MAX_IO / 4096
 * @buf: user buffer of @npages bytes
 */
struct shadowpt_snapshot {
	__u32 size;
	__u32 flags;
	__u64 addr;
	__u64 npages;
	__u64 buf;
};

/**
 * define SHADOWPT_IOC_STATS - the attachment's mode and counters
 *
 * Argument: &struct shadowpt_stats. Only ``size`` is read; the rest is
 * written.
 */
#define SHADOWPT_IOC_STATS	_IOWR(SHADOWPT_IOCTL_TYPE, 7, struct shadowpt_stats)

/**
 * struct shadowpt_stats - argument of %SHADOWPT_IOC_STATS
 * @size: sizeof(struct shadowpt_stats)
 * @mode: out: the attachment's mode, %SHADOWPT_MODE_CHANGE_PTE or
 *	%SHADOWPT_MODE_ZAP
 * @faults: out: entries installed by the fault path
 * @fault_retries: out: faults that started over because an invalidation of
 *	their address ran meanwhile
 * @invalidate_start: out: ``invalidate_range_start`` calls that met the
 *	attachment
 * @invalidate_end: out: the matching ``invalidate_range_end`` calls
 * @zapped: out: entries removed by invalidations and ``release``
 * @change_pte: out: ``change_pte`` calls for addresses in the attachment
 * @change_pte_updated: out: ... that updated an entry in place
 * @change_pte_absent: out: ... that found no entry
 * @change_pte_illegal: out: ... that zapped an entry they could not update
 * @releases: out: 1 once the address space went away, else 0
 * @young: out: ``clear_young``, ``clear_flush_young`` and ``test_young``
 *	calls that met the attachment
 * @present: out: entries present now
 * @table_pages: out: 4 KiB tables allocated now, the root included
 * @invalidate_ns: out: nanoseconds spent in ``invalidate_range_start``
 *	(0 unless the module parameter ``time_callbacks`` was set at attach)
 * @change_pte_ns: out: nanoseconds spent in ``change_pte`` (likewise)
 * @invalidate_nonblock: out: ``invalidate_range_start`` calls that must
 *	not sleep (the OOM reaper)
 * @zap_chunks: out: holds of the table's lock that zapped entries of an
 *	invalidated range larger than 16 MiB, which is zapped 4096 leaf slots'
 *	worth (and the rest of a leaf table) per hold
 * @zap_hold_max_ns: out: the longest hold of the table's lock by those
 *	invalidations and by ``release`` (which swaps the whole table out), in
 *	nanoseconds: a maximum since attach
 *
 * The counters of ``/sys/kernel/debug/shadowpt/<id>/``, in the same order,
 * read under the table's lock (a consistent snapshot):
 * Documentation/debugfs.rst says exactly when each one moves.
 */
struct shadowpt_stats {
	__u32 size;
	__u32 mode;
	__u64 faults;
	__u64 fault_retries;
	__u64 invalidate_start;
	__u64 invalidate_end;
	__u64 zapped;
	__u64 change_pte;
	__u64 change_pte_updated;
	__u64 change_pte_absent;
	__u64 change_pte_illegal;
	__u64 releases;
	__u64 young;
	__u64 present;
	__u64 table_pages;
	__u64 invalidate_ns;
	__u64 change_pte_ns;
	__u64 invalidate_nonblock;
	__u64 zap_chunks;
	__u64 zap_hold_max_ns;
};

#endif /* _UAPI_LINUX_SHADOWPT_H */
