// SPDX-License-Identifier: GPL-2.0
/*
 * spt_leak: leaks 32 allocations on load, on purpose.
 *
 * Used only by the harness self-test `harness_leak` to prove that the
 * kmemleak scan at the end of a guest run fails the run. Never part of the
 * normal suite. A single leaked pointer can survive in a stale stack that
 * kmemleak scans; 32 of them cannot.
 */
#include <linux/module.h>
#include <linux/slab.h>

static int __init spt_leak_init(void)
{
	int i;

	for (i = 0; i < 32; i++) {
		void *p = kmalloc(1024, GFP_KERNEL);

		if (!p)
			return -ENOMEM;
		/* Forget the pointer: kmemleak must report it. */
		memset(p, 0x5a, 1024);
	}
	return 0;
}

static void __exit spt_leak_exit(void)
{
}

module_init(spt_leak_init);
module_exit(spt_leak_exit);
MODULE_DESCRIPTION("shadowpt harness self-test: leaks memory on load");
MODULE_LICENSE("GPL");
