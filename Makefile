# SPDX-License-Identifier: GPL-2.0
#
# shadowpt: out-of-tree Rust module + its QEMU test guest.
#
#   make              build shadowpt.ko (sets up tools and the test kernel if missing)
#   make run          the demo: boot the guest, load the module, show what it does
#   make check        everything: host checks, harness self-tests, guest test suite
#   make htmldocs     Documentation/ as HTML (Sphinx) -> qemu-test/out/htmldocs
#   make bench        benchmarks -> Documentation/benchmarks.md (~15 min; BENCH_MAX=, default 65536)
#   make bench-vm     two Linux L2s under KVM and KSM -> Documentation/benchmarks-vm.md (~30 min)
#   make stress       30-minute coherence stress run (STRESS_SECS=, SEED=)
#   make KDIR=...     build the module against your own Rust-enabled 7.3 kernel build
#   make KDIR=... modules_install   install it there (INSTALL_MOD_PATH= for a staging root)
#   make check-series every prefix of patches/ applies and builds (slow)
#   make compare-hmm  hmm-tests on the kernel with and without the series (slow)
#   make compare-kvm  KVM's selftests on the kernel with and without the series (slow)
#   make compare-mm   the kernel's mm selftests on the kernel with and without the series (slow)
#   make check-kasan  the guest suite and a stress run on a KASAN kernel (slow)
#
# See README.md for the environment variables.

# Kbuild reads ./Kbuild, not this file, when it builds the module.

SHELL := /bin/bash
TOP := $(CURDIR)
SCRIPTS := $(TOP)/scripts
QT := $(TOP)/qemu-test
OUT := $(QT)/out
INITRAMFS := $(OUT)/initramfs.cpio.gz
GUEST_BIN := $(OUT)/guest-target/x86_64-unknown-linux-gnu/release/sptest
CACHE_ENV = source $(SCRIPTS)/env.sh

ifeq ($(KDIR),)
# The cached test kernel: built by scripts/build-kernel, toolchain from scripts/setup.
OWN_KERNEL := 1
KDIR = $(shell $(SCRIPTS)/build-kernel --dir)
KMAKE_VARS = ARCH=x86_64 RUSTC=$${SHADOWPT_RUSTC} RUSTDOC=$${SHADOWPT_RUSTDOC} \
	HOSTRUSTC=$${SHADOWPT_RUSTC} BINDGEN=$${SHADOWPT_BINDGEN}
else
OWN_KERNEL := 0
KMAKE_VARS =
endif

.PHONY: all modules modules_install test-modules setup kernel guest initramfs run check htmldocs selftest bench bench-vm stress check-series compare-hmm \
	compare-kvm compare-mm check-kasan clean help

all: modules

help:
	@sed -n '3,19p' Makefile

setup:
	@$(SCRIPTS)/setup

ifeq ($(OWN_KERNEL),1)
kernel: setup
	@$(SCRIPTS)/build-kernel >/dev/null
else
kernel:
	@test -f $(KDIR)/Module.symvers || { echo "KDIR=$(KDIR) is not a built kernel tree"; exit 1; }
endif

modules: kernel
	@$(CACHE_ENV); $(MAKE) -s -C $(KDIR) M=$(TOP) $(KMAKE_VARS) modules

# Test-only modules (qemu-test/modules/): need the series' CONFIG_RUST_MMU_NOTIFIER.
test-modules: kernel
	@$(CACHE_ENV); $(MAKE) -s -C $(KDIR) M=$(QT)/modules $(KMAKE_VARS) modules

# build.rs generates the ABI from include/uapi with the project's bindgen (env.sh).
guest: setup
	@$(CACHE_ENV); cd $(QT)/guest && RUSTFLAGS="-C target-feature=+crt-static" \
		RUSTC=$${SHADOWPT_RUSTC} $${SHADOWPT_CARGO} build --quiet --release --locked --target x86_64-unknown-linux-gnu \
		--target-dir $(OUT)/guest-target

initramfs: modules test-modules guest
	@$(QT)/mkinitramfs $(KDIR) $(INITRAMFS)

run: initramfs
	@$(QT)/demo

check: initramfs
	@$(QT)/check

# Documentation/ with Sphinx, warnings as errors (make check runs the same build), with the
# kernel's kernel-doc extension that scripts/setup unpacks (or the tree in srctree=...).
htmldocs: setup
	@$(SCRIPTS)/check-docs $(OUT)/htmldocs && echo "htmldocs: $(OUT)/htmldocs/index.html"

# Benchmarks: writes Documentation/benchmarks.md. BENCH_MAX (default 65536) is the largest N of
# the mirror experiments; 262144 takes about three times as long.
bench: guest
	@$(QT)/bench

# Linux L2 guests under KVM in the TCG guest, KSM merging their memory: writes
# Documentation/benchmarks-vm.md (BENCH_VM_REPS=... etc., see qemu-test/bench-vm).
bench-vm: guest
	@$(QT)/bench-vm

# Long stress run (STRESS_SECS, default 1800; SEED to reproduce a run).
stress: initramfs
	@$(QT)/run -q -t stress,fuzz -T $$(( $${STRESS_SECS:-1800} + 600 )) -p $$(( $${STRESS_SECS:-1800} + 300 )) \
		-a "shadowpt.stress_secs=$${STRESS_SECS:-1800} $${SEED:+shadowpt.seed=$$SEED}" -l $(OUT)/stress-log; \
		rc=$$?; tr -d '\r' <$(OUT)/stress-log/console.log | grep -E '^(stress|fuzz): '; exit $$rc

selftest: initramfs
	@$(QT)/selftest

# Slow maintainer checks, not part of `make check`: every prefix of patches/
# builds; hmm-tests and KVM's selftests give the same results with and without the series.
check-series: setup
	@$(SCRIPTS)/check-series

compare-hmm: setup
	@$(SCRIPTS)/compare-hmm-tests

compare-kvm: setup
	@$(SCRIPTS)/compare-kvm-tests

# The kernel's mm selftests (qemu-test/mm-selftests.list) give the same results with and without
# the series (and the baseline's results are written to qemu-test/mm-selftests.expected).
compare-mm: setup
	@$(SCRIPTS)/compare-mm-tests

# The guest suite and KASAN_STRESS_SECS (120) of stress on a KASAN (clang) kernel.
check-kasan: guest
	@$(SCRIPTS)/check-kasan

# Installs shadowpt.ko into KDIR's module directory (INSTALL_MOD_PATH=... for a staging root):
# for a kernel of your own (KDIR=...); the test kernel's modules go into the initramfs instead.
modules_install: modules
	@$(CACHE_ENV); $(MAKE) -s -C $(KDIR) M=$(TOP) $(KMAKE_VARS) modules_install

clean:
	@if [ -d "$(KDIR)" ]; then $(CACHE_ENV); $(MAKE) -s -C $(KDIR) M=$(TOP) $(KMAKE_VARS) clean; fi
	@if [ -d "$(KDIR)" ]; then $(CACHE_ENV); $(MAKE) -s -C $(KDIR) M=$(QT)/modules $(KMAKE_VARS) clean; fi
	rm -rf $(OUT)
