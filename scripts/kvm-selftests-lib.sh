# SPDX-License-Identifier: GPL-2.0
# KVM's selftests in the test guest: reading qemu-test/kvm-selftests.list and staging the
# tests into an initramfs. Sourced by qemu-test/mkinitramfs and scripts/compare-kvm-tests
# (and used by scripts/build-kvm-selftests); needs $top.

kvm_selftests_list=${SHADOWPT_KVM_SELFTESTS_LIST:-$top/qemu-test/kvm-selftests.list}

# kvm_list SET [KDIR]: the runs of SET, one "ID TIMEOUT ARGS..." line each, in list order.
# SET is check (the make check subset) or full (compare-kvm: check and full lines).
# A "#" starts a comment anywhere on a line. With KDIR, only the runs of tests whose
# source KDIR's tree has: a test the series adds (x86/ksm_change_pte_test) is not in
# the kernel without it (kvm_missing lists what is left out).
kvm_list() {
	awk -v set="$1" -v sel="${2:+$2/tools/testing/selftests/kvm}" '{ sub(/[ \t]*#.*/, "") }
		$1 == "check" || (set == "full" && $1 == "full") {
			$1 = ""; sub(/^ /, "")
			if (sel != "") {
				src = $1; sub(/:.*/, "", src); src = sel "/" src ".c"
				found = (getline junk <src) >= 0; close(src)
				if (!found) next
			}
			print }' "$kvm_selftests_list"
}

# kvm_names SET [KDIR]: the binaries SET runs (a run's ID up to ":"), each once.
kvm_names() {
	kvm_list "$@" | awk '{ sub(/:.*/, "", $1); if (!seen[$1]++) print $1 }'
}

# kvm_missing SET KDIR: the binaries of SET whose source KDIR's tree does not have.
kvm_missing() {
	kvm_names "$1" | { grep -vxF -f <(kvm_names "$1" "$2") || true; }
}

# kvm_left_out: "NAME REASON..." for each test the list leaves out.
kvm_left_out() {
	awk '$1 == "out" { $1 = ""; sub(/^ /, ""); print }' "$kvm_selftests_list"
}

# kvm_tree_tests KDIR: every x86 test KDIR's selftests Makefile builds.
kvm_tree_tests() {
	local tmp
	tmp=$(mktemp -d)
	make -s -C "$1/tools/testing/selftests/kvm" ARCH=x86 OUTPUT="$tmp" -f Makefile \
		-f <(printf 'shadowpt-print-tests:\n\t@echo $(TEST_GEN_PROGS) $(TEST_GEN_PROGS_EXTENDED)\n') \
		shadowpt-print-tests | tr ' ' '\n' | sed -n "s|^$tmp/||p"
	rm -rf "$tmp"
}

# kvm_unlisted KDIR: tests of KDIR's tree that the list neither runs nor leaves out.
kvm_unlisted() {
	kvm_tree_tests "$1" | { grep -vxF -f <({ kvm_names full; kvm_left_out | awk '{ print $1 }'; }) || true; }
}

# kvm_stage KDIR STAGE SET MODE: put SET's selftests (built from KDIR by
# scripts/build-kvm-selftests, stripped) and the guest script (/tests/kvm_selftests,
# MODE check or report) into the initramfs staging directory STAGE. The KVM modules
# (/lib/modules/{irqbypass,kvm,kvm-amd}.ko) are the caller's to put there.
kvm_stage() {
	local k=$1 stage=$2 set=$3 mode=$4 built t
	built=$("$top/scripts/build-kvm-selftests" "$k") || return 1
	mkdir -p "$stage/lib/kvm-selftests/bin/x86" "$stage/tests"
	for t in $(kvm_names "$set" "$k"); do
		strip -o "$stage/lib/kvm-selftests/bin/$t" "$built/$t" || return 1
	done
	for t in $(kvm_missing "$set" "$k"); do
		echo "kvm-selftests: warning: $k has no $t (a test the series adds?): not run" >&2
	done
	kvm_list "$set" "$k" >"$stage/lib/kvm-selftests/run.list"
	echo "$mode" >"$stage/lib/kvm-selftests/mode"
	install -m 0755 "$top/qemu-test/kvm-selftests-guest" "$stage/tests/kvm_selftests"
}

# kvm_guest_seconds SET: the sum of SET's timeouts (an upper bound on its guest time).
kvm_guest_seconds() {
	kvm_list "$1" | awk '{ s += $2 } END { print s + 0 }'
}
