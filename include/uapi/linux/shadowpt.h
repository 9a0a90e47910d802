/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * shadowpt: user-space ABI of /dev/shadowpt.
 *
 * An open /dev/shadowpt is one secondary MMU client. SHADOWPT_IOC_ATTACH
 * mirrors a page-aligned range of the caller's own address space in a software
 * page table; the other ioctls fault pages into that table, read and write
 * memory through it (as a device would with DMA), inspect it and detach.
 *
 * Every structure starts with a size field that must be set to the size of the
 * structure as defined here: a later version that grows a structure will
 * accept the older sizes. Reserved and flag fields must be zero unless a flag
 * is defined. Errors are documented in Documentation/abi.rst.
 */
#ifndef _UAPI_LINUX_SHADOWPT_H
#define _UAPI_LINUX_SHADOWPT_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The misc device. */
#define SHADOWPT_DEVICE		"/dev/shadowpt"

/*
 * ioctl type byte of every shadowpt ioctl: free in
 * Documentation/userspace-api/ioctl/ioctl-number.rst (0xb7 belongs to nsfs
 * and remoteproc).
 */
#define SHADOWPT_IOCTL_TYPE	0xb9

/* Largest range one attachment may mirror: 64 GiB. */
#define SHADOWPT_MAX_ATTACH	(1ULL << 36)

/* Largest range one FAULT, READ, WRITE or SNAPSHOT call may cover: 1 GiB. */
#define SHADOWPT_MAX_IO		(1ULL << 30)

/* Attachment modes. */
/* Keep entries on flagged invalidations and update them in ->change_pte(). */
#define SHADOWPT_MODE_CHANGE_PTE	0
/* Zap on every invalidation, like mainline since 2012: ->change_pte() finds nothing. */
#define SHADOWPT_MODE_ZAP		1

struct shadowpt_attach {
	__u32 size;		/* sizeof(struct shadowpt_attach) */
	__u32 mode;		/* SHADOWPT_MODE_* */
	__u64 start;		/* page aligned */
	__u64 length;		/* page aligned, 1 page .. SHADOWPT_MAX_ATTACH */
	__u64 id;		/* out: attachment id, its debugfs directory name */
};

/* Access flags of SHADOWPT_IOC_FAULT. */
#define SHADOWPT_ACCESS_WRITE	(1U << 0)

struct shadowpt_fault {
	__u32 size;		/* sizeof(struct shadowpt_fault) */
	__u32 flags;		/* SHADOWPT_ACCESS_* */
	__u64 addr;		/* page aligned, inside the attachment */
	__u64 length;		/* page aligned, 1 page .. SHADOWPT_MAX_IO */
	__u64 faults;		/* out: entries this call created or upgraded */
};

struct shadowpt_rw {
	__u32 size;		/* sizeof(struct shadowpt_rw) */
	__u32 flags;		/* reserved, 0 */
	__u64 addr;		/* any alignment, inside the attachment */
	__u64 length;		/* bytes, 1 .. SHADOWPT_MAX_IO */
	__u64 buf;		/* user buffer of length bytes */
	__u64 faults;		/* out: entries this call faulted in or upgraded */
};

/* Per-page state bits written by SHADOWPT_IOC_SNAPSHOT, one byte per page. */
#define SHADOWPT_PAGE_PRESENT	(1U << 0)	/* the table maps the page */
#define SHADOWPT_PAGE_WRITABLE	(1U << 1)	/* ... writable */
#define SHADOWPT_PAGE_ACCESSED	(1U << 2)	/* accessed bit of the entry */
#define SHADOWPT_PAGE_DIRTY	(1U << 3)	/* dirty bit of the entry */
#define SHADOWPT_PAGE_PRIMARY	(1U << 4)	/* the process's page table maps it */
#define SHADOWPT_PAGE_PFN_MATCH	(1U << 5)	/* present, primary, same pfn */
#define SHADOWPT_PAGE_ZERO	(1U << 6)	/* the entry maps the zero page */

struct shadowpt_snapshot {
	__u32 size;		/* sizeof(struct shadowpt_snapshot) */
	__u32 flags;		/* reserved, 0 */
	__u64 addr;		/* page aligned, inside the attachment */
	__u64 npages;		/* 1 .. SHADOWPT_MAX_IO / 4096 */
	__u64 buf;		/* user buffer of npages bytes */
};

/* Counters of one attachment; Documentation/debugfs.rst says when each moves. */
struct shadowpt_stats {
	__u32 size;		/* sizeof(struct shadowpt_stats) */
	__u32 mode;		/* out: SHADOWPT_MODE_* */
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
};

#define SHADOWPT_IOC_ATTACH	_IOWR(SHADOWPT_IOCTL_TYPE, 1, struct shadowpt_attach)
#define SHADOWPT_IOC_DETACH	_IO(SHADOWPT_IOCTL_TYPE, 2)
#define SHADOWPT_IOC_FAULT	_IOWR(SHADOWPT_IOCTL_TYPE, 3, struct shadowpt_fault)
#define SHADOWPT_IOC_READ	_IOWR(SHADOWPT_IOCTL_TYPE, 4, struct shadowpt_rw)
#define SHADOWPT_IOC_WRITE	_IOWR(SHADOWPT_IOCTL_TYPE, 5, struct shadowpt_rw)
#define SHADOWPT_IOC_SNAPSHOT	_IOW(SHADOWPT_IOCTL_TYPE, 6, struct shadowpt_snapshot)
#define SHADOWPT_IOC_STATS	_IOWR(SHADOWPT_IOCTL_TYPE, 7, struct shadowpt_stats)

#endif /* _UAPI_LINUX_SHADOWPT_H */
