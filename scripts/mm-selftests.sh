# SPDX-License-Identifier: GPL-2.0
# The kernel's own mm selftests (tools/testing/selftests/mm) in the test guest: what they are,
# how they are built, how they get into an initramfs. Source it after env.sh; needs $top.
# Used by qemu-test/mkinitramfs (the guest test /tests/mm_selftests of `make check`) and by
# scripts/compare-mm-tests (`make compare-mm`). Functions die through the caller's die().
#
# The runs: qemu-test/mm-selftests.list (one line per run: a name, the binary, its options).
# The guest side: qemu-test/mm-selftests (a busybox sh script: runs them, reduces their
# kselftest TAP to one result line per case, compares them with the expected results).
# The expected results: qemu-test/mm-selftests.expected (written by
# `scripts/compare-mm-tests -u` from the baseline kernel's run).

# The kernel command line the runs need: ksm_functional_tests and mkdirty write to
# read-only mappings through /proc/self/mem (FOLL_FORCE), which the test kernel's
# PROC_MEM_FORCE_PTRACE refuses to a process writing its own memory.
MM_SELFTESTS_CMDLINE="proc_mem.force_override=always"

# mm_selftests_binaries: the binaries qemu-test/mm-selftests.list runs, one per line (a line
# is: the run's name, check|compare, KEY=VALUE sysctls set for it, the binary, its options).
mm_selftests_binaries() {
	awk '!/^[ \t]*(#|$)/ { for (i = 3; i <= NF && $i ~ /=/; i++); print $i }' \
		"$top/qemu-test/mm-selftests.list" | sort -u
}

# mm_selftests_build KDIR: builds (or reuses) the binaries from KDIR's
# tools/testing/selftests/mm, static, with gcc; prints the directory that holds them.
# KDIR is only read: its UAPI headers are exported (what `make headers_install` would put
# in usr/include; the test kernel is built without it, so KDIR/usr/include is empty) with
# KDIR's own scripts/headers_install.sh into the cache directory, next to the binaries.
# The cache key covers the recipe, the compiler, the static libraries, the sources the
# binaries are made of and the headers they see, so the kernel trees with and without the
# series (the same selftests and UAPI) share one build.
mm_selftests_build() {
	local k=$1 recipe=1 key out tmp mm=$1/tools/testing/selftests/mm b extra
	[ -f "$mm/vm_util.c" ] || die "no mm selftests in $k"
	[ -f /usr/lib/x86_64-linux-gnu/libnuma.a ] || die "no static libnuma (scripts/setup installs libnuma-dev)"
	key=$({
		echo "recipe $recipe"
		mm_selftests_binaries
		gcc --version | head -n1
		dpkg-query -W -f='${Package} ${Version}\n' libc6-dev libnuma-dev 2>/dev/null || true
		(cd "$k" && find tools/testing/selftests/mm tools/testing/selftests/kselftest*.h \
			tools/include mm/gup_test.h include/uapi include/generated/uapi \
			arch/x86/include/uapi arch/x86/include/generated/uapi scripts/headers_install.sh \
			scripts/unifdef.c -type f | LC_ALL=C sort | xargs sha256sum)
	} | sha256sum | cut -c1-16)
	out=$SHADOWPT_CACHE/mm-selftests/$key
	if [ -f "$out/built" ]; then
		echo "$out/bin"
		return 0
	fi
	# Built in a scratch directory and renamed into place: two builds at once (breaktest's
	# mkinitramfs runs, a compare-mm) never see each other's half-built files.
	mkdir -p "$SHADOWPT_CACHE/mm-selftests"
	tmp=$(mktemp -d "$SHADOWPT_CACHE/mm-selftests/.build.XXXXXX")
	mkdir -p "$tmp/hdr/scripts" "$tmp/hdr/usr/include" "$tmp/gen" "$tmp/bin"
	# headers_install.sh runs scripts/unifdef relative to the current directory.
	gcc -O2 -w -o "$tmp/hdr/scripts/unifdef" "$k/scripts/unifdef.c" ||
		die "cannot build unifdef from $k/scripts/unifdef.c"
	local d f
	for d in include/uapi include/generated/uapi arch/x86/include/uapi arch/x86/include/generated/uapi; do
		[ -d "$k/$d" ] || continue
		while read -r f; do
			mkdir -p "$tmp/hdr/usr/include/$(dirname "$f")"
			(cd "$tmp/hdr" && sh "$k/scripts/headers_install.sh" "$k/$d/$f" "usr/include/$f") ||
				die "headers_install.sh failed on $d/$f"
		done < <(cd "$k/$d" && find . -name '*.h' -type f)
	done
	[ -f "$tmp/hdr/usr/include/linux/userfaultfd.h" ] || die "no UAPI headers exported from $k"
	# check_config.sh's probe: no liburing here (the io_uring cases of cow skip).
	echo "// No liburing support found" >"$tmp/gen/local_config.h_gen"
	for b in $(mm_selftests_binaries); do
		[ -f "$mm/$b.c" ] || die "no $b.c in $mm"
		extra=()
		case $b in uffd-*) extra=("$mm/uffd-common.c") ;; esac
		# The selftests' Makefile's flags (lib.mk's -D_GNU_SOURCE=, the kernel's headers
		# first, then tools/include/uapi), static.
		gcc -static -Wall -O2 -U_FORTIFY_SOURCE -D_GNU_SOURCE= -I "$k" \
			-I "$k/tools/testing/selftests" -I "$tmp/gen" \
			-isystem "$tmp/hdr/usr/include" -isystem "$k/tools/include/uapi" \
			"$mm/$b.c" "$mm/vm_util.c" "$mm/hugepage_settings.c" "${extra[@]}" \
			-o "$tmp/bin/$b" -lrt -lpthread -lm -lnuma >>"$tmp/build.log" 2>&1 ||
			{ tail -n 30 "$tmp/build.log" >&2; die "building $b failed (log: $tmp/build.log)"; }
	done
	# The headers were only needed for the build.
	rm -rf "$tmp/hdr"
	touch "$tmp/built"
	if ! mv -T "$tmp" "$out" 2>/dev/null; then
		# Someone else finished the same build first.
		rm -rf "$tmp"
		[ -f "$out/built" ] || die "cannot move the mm selftests build to $out"
	fi
	# Keep the three newest builds.
	ls -1dt "$SHADOWPT_CACHE"/mm-selftests/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
	echo "$out/bin"
}

# mm_selftests_stage KDIR STAGE [EXPECTED]: puts the binaries (STAGE/bin/mm/), the list
# (STAGE/etc/mm-selftests.list), the expected results (EXPECTED, default
# qemu-test/mm-selftests.expected; none with "-") and the guest tests /tests/mm_selftests
# and /tests/mm_selftests_report (every run, results to the result port) into an initramfs
# staging directory.
mm_selftests_stage() {
	local bin stage=$2 exp=${3:-$top/qemu-test/mm-selftests.expected}
	bin=$(mm_selftests_build "$1") || exit 1
	mkdir -p "$stage/bin/mm" "$stage/etc" "$stage/tests"
	cp "$bin"/* "$stage/bin/mm/"
	cp "$top/qemu-test/mm-selftests.list" "$stage/etc/mm-selftests.list"
	[ "$exp" = - ] || cp "$exp" "$stage/etc/mm-selftests.expected"
	install -m 0755 "$top/qemu-test/mm-selftests" "$stage/tests/mm_selftests"
	printf '#!/bin/sh\nexec /tests/mm_selftests report\n' >"$stage/tests/mm_selftests_report"
	chmod 0755 "$stage/tests/mm_selftests_report"
}
