/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * shadowpt: user-space ABI of /dev/shadowpt.
 *
 * The ioctls acting on an open /dev/shadowpt are documented in
 * Documentation/abi.rst as they are added. Every structure passed through an
 * ioctl starts with a size field so that the ABI can grow.
 */
#ifndef _UAPI_LINUX_SHADOWPT_H
#define _UAPI_LINUX_SHADOWPT_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The misc device. */
#define SHADOWPT_DEVICE		"/dev/shadowpt"

/* ioctl type byte of every shadowpt ioctl. */
#define SHADOWPT_IOCTL_TYPE	0xb7

#endif /* _UAPI_LINUX_SHADOWPT_H */
