# SPDX-License-Identifier: GPL-2.0
# Shared settings for shadowpt's scripts. Source it; every value can be
# overridden from the environment (see README.md, "Environment").

: "${SHADOWPT_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/shadowpt}"
: "${SHADOWPT_RUSTC:=/usr/bin/rustc}"
: "${SHADOWPT_RUSTDOC:=/usr/bin/rustdoc}"
: "${SHADOWPT_RUST_SRC:=/usr/lib/rustlib/src/rust}"
# Debian's cargo and rustfmt of the same release (cargo-web, rustfmt-web): the guest test programs
# and bindgen-cli are built with them, the module is formatted with them; no rustup needed.
: "${SHADOWPT_CARGO:=/usr/bin/cargo}"
: "${SHADOWPT_RUSTFMT:=/usr/bin/rustfmt}"
: "${LIBCLANG_PATH:=/usr/lib/llvm-19/lib}"
BINDGEN_VERSION=0.72.1
: "${SHADOWPT_BINDGEN:=$SHADOWPT_CACHE/tools/bin/bindgen}"
# The kernel tree whose kernel-doc (Documentation/sphinx, tools/lib/python) builds the
# documentation (scripts/check-docs): the source tree in SHADOWPT_LINUX_SRC, or what setup
# unpacks from the source tarball.
if [ -d "${SHADOWPT_LINUX_SRC:-}" ]; then
	: "${SHADOWPT_KERNEL_DOC:=$SHADOWPT_LINUX_SRC}"
else
	: "${SHADOWPT_KERNEL_DOC:=$SHADOWPT_CACHE/kernel-doc}"
fi
# sparse for check-series, built by setup (SHADOWPT_SETUP_SERIES=1).
: "${SHADOWPT_SPARSE:=$SHADOWPT_CACHE/tools/bin/sparse}"
# SHADOWPT_VARIANT selects a variant of the test kernel: its fragment qemu-test/<variant>.config
# is applied on top of kernel.config. `kasan` (scripts/check-kasan) is built by clang:
# SHADOWPT_LLVM is the LLVM= suffix the kernel and module builds get. `bench` (qemu-test/bench)
# is the production kernel the benchmarks run on: the same options minus the debugging ones.
: "${SHADOWPT_VARIANT:=}"
case "$SHADOWPT_VARIANT" in "" | kasan | bench) ;; *)
	echo "SHADOWPT_VARIANT must be empty, kasan or bench, not '$SHADOWPT_VARIANT'" >&2
	exit 1
	;;
esac
if [ "$SHADOWPT_VARIANT" = kasan ]; then
	: "${SHADOWPT_LLVM:=-19}"
else
	SHADOWPT_LLVM=
fi
export SHADOWPT_CACHE SHADOWPT_RUSTC SHADOWPT_RUSTDOC SHADOWPT_RUST_SRC LIBCLANG_PATH SHADOWPT_BINDGEN
export SHADOWPT_CARGO SHADOWPT_RUSTFMT SHADOWPT_SPARSE SHADOWPT_KERNEL_DOC
export SHADOWPT_VARIANT SHADOWPT_LLVM
