#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The guest half of `make run`. Runs inside the test guest as /tests/demo.
set -e
echo "==== shadowpt demo ===="
echo "guest kernel: $(uname -r), KSM: $([ -f /sys/kernel/mm/ksm/run ] && echo available || echo missing)"
echo
echo "\$ insmod /lib/modules/shadowpt.ko"
insmod /lib/modules/shadowpt.ko
echo "\$ ls -l /dev/shadowpt"
ls -l /dev/shadowpt
echo "\$ find /sys/kernel/debug/shadowpt"
find /sys/kernel/debug/shadowpt
for f in $(find /sys/kernel/debug/shadowpt -type f); do
	echo "\$ cat $f"
	cat "$f"
done
echo "\$ rmmod shadowpt"
rmmod shadowpt
echo "\$ ls /dev/shadowpt /sys/kernel/debug/shadowpt"
ls /dev/shadowpt /sys/kernel/debug/shadowpt 2>&1 || true
echo
echo "The module registered /dev/shadowpt and its debugfs tree, and removed both on unload."
echo
echo "Is ->change_pte() reachable? A minimal notifier (spt_cptest.ko) tracks 64 pages that KSM"
echo "merges and the process then writes; 'keep' honours the change_pte range flag, 'zap' ignores"
echo "it like every notifier since 2012:"
echo "\$ sptest change_pte_reachable"
sptest change_pte_reachable
echo
echo "With the flag, every KSM write-protect/replace and COW break updates the entry in place;"
echo "without it, the same calls find nothing to update (the dead code Linux 6.10 removed)."
echo "==== end of demo ===="
