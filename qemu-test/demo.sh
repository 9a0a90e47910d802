#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The guest half of `make run`. Runs inside the test guest as /tests/demo.
set -e
N=1024
echo "==== shadowpt demo ===="
echo "guest kernel: $(uname -r) (with the change_pte series), KSM: $([ -f /sys/kernel/mm/ksm/run ] && echo available || echo missing)"
echo
echo "\$ insmod /lib/modules/shadowpt.ko"
insmod /lib/modules/shadowpt.ko
echo "\$ ls /dev/shadowpt /sys/kernel/debug/shadowpt"
ls /dev/shadowpt /sys/kernel/debug/shadowpt
echo
echo "A process fills $N + 1 identical pages and mirrors $N of them in shadowpt (written through"
echo "the table, so every entry is present and writable). KSM merges them, the process writes"
echo "each page (COW break), and after each step the $N pages are read again through the table."
echo "Same run twice: 'change_pte' mode honours the series' range flag and updates entries in"
echo "->change_pte(); 'zap' mode zaps on every invalidation, which is what mainline does."
echo
echo "\$ sptest ksm_demo $N"
sptest ksm_demo $N
echo
echo "Global counters after both runs (/sys/kernel/debug/shadowpt/global/):"
for f in /sys/kernel/debug/shadowpt/global/*; do
	printf '  %-20s %s\n' "$(basename "$f")" "$(cat "$f")"
done
echo "\$ rmmod shadowpt"
rmmod shadowpt
echo
echo "KVM, the in-tree user (patches 0009-0012): a minimal VMM on rust-vmm's kvm-ioctls runs an L2"
echo "guest (nested SVM, emulated by QEMU) that reads 1024 identical pages of its memory; KSM merges"
echo "them, then the VMM writes every page (a host-side COW). NPT faults are KVM's own pf_taken stat;"
echo "kvm.change_pte=N makes a new VM zap like mainline KVM."
echo
echo "\$ sptest kvm_ksm demo"
sptest kvm_ksm demo
echo "==== end of demo ===="
