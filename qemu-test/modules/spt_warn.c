// SPDX-License-Identifier: GPL-2.0
/*
 * spt_warn: raises a WARNING on load, on purpose.
 *
 * Used only by the harness self-test `harness_warn` to prove that a kernel
 * warning makes the test run fail. Never part of the normal suite.
 */
#include <linux/bug.h>
#include <linux/module.h>

static int __init spt_warn_init(void)
{
	WARN(1, "spt_warn: deliberate warning for the harness self-test\n");
	return 0;
}

static void __exit spt_warn_exit(void)
{
}

module_init(spt_warn_init);
module_exit(spt_warn_exit);
MODULE_DESCRIPTION("shadowpt harness self-test: warns on load");
MODULE_LICENSE("GPL");
