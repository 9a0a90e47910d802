# SPDX-License-Identifier: GPL-2.0
# Kernel tree helpers shared by build-kernel and check-series. Source it after
# env.sh. Functions die through the caller's die().

# kernel_git DIR ARGS...: git in a kernel tree. No auto-gc: it would compete
# with the kernel build for the CPUs.
kernel_git() {
	git -C "$1" -c gc.auto=0 -c user.name=shadowpt -c user.email=shadowpt@localhost "${@:2}"
}

# series_patches DIR: the patches of the series in DIR, in order; the cover
# letter (0000-*) is not one of them.
series_patches() {
	local p
	for p in "$1"/*.patch; do
		[ -e "$p" ] || continue
		case ${p##*/} in 0000-*) ;; *) echo "$p" ;; esac
	done
}

# kernel_make DIR ARGS...: make in a kernel tree with the project's toolchain.
# With SHADOWPT_LLVM set (the KASAN variant), clang/LLVM build the C side.
kernel_make() {
	make -C "$1" ARCH=x86_64 RUSTC="$SHADOWPT_RUSTC" RUSTDOC="$SHADOWPT_RUSTDOC" \
		HOSTRUSTC="$SHADOWPT_RUSTC" BINDGEN="$SHADOWPT_BINDGEN" \
		${SHADOWPT_LLVM:+LLVM="$SHADOWPT_LLVM"} "${@:2}"
}

# copy_module_sources DEST: the sources of shadowpt.ko (Kbuild, rust/, include/)
# into DEST, for a build that must leave the tree's own objects alone (the
# broken variants, clippy, the KASAN variant). Needs $top.
copy_module_sources() {
	mkdir -p "$1" && cp -r "$top/Kbuild" "$top/rust" "$top/include" "$1/"
}

# copy_test_module_sources DEST: the sources of qemu-test/modules/ into DEST.
copy_test_module_sources() {
	mkdir -p "$1" && cp "$top"/qemu-test/modules/{Kbuild,*.c,*.rs} "$1/"
}

# kernel_unpack SRC DEST: copy a source tree or unpack a tarball into DEST
# (which must not exist), check it is 7.3.y, and commit it as the pristine
# source of a new git repository. Prints the kernel version.
kernel_unpack() {
	local src=$1 dest=$2 tmp inner ver
	if [ -d "$src" ]; then
		mkdir -p "$dest"
		(cd "$src" && tar --exclude=.git -cf - .) | tar -C "$dest" -xf -
	else
		tmp=$(mktemp -d "$(dirname "$dest")/unpack.XXXXXX")
		tar -C "$tmp" -xf "$src"
		inner=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)
		[ -f "$inner/Makefile" ] || die "$src does not contain a kernel tree"
		mv "$inner" "$dest"
		rmdir "$tmp"
	fi
	ver=$(make -s -C "$dest" kernelversion)
	case "$ver" in 7.3|7.3.*) ;; *) die "kernel source is $ver, shadowpt needs 7.3.y" ;; esac
	kernel_git "$dest" init -q
	kernel_git "$dest" add -A -f .
	kernel_git "$dest" commit -q -m "Linux $ver (pristine source)"
	echo "$ver"
}

# kernel_configure DIR FRAGMENT...: tinyconfig, then the fragments, then olddefconfig.
kernel_configure() {
	local dir=$1
	kernel_make "$dir" -s tinyconfig >/dev/null
	(cd "$dir" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m -Q .config "${@:2}" >/dev/null)
	kernel_make "$dir" -s olddefconfig >/dev/null
}
