# SPDX-License-Identifier: GPL-2.0
#
# Sphinx configuration of shadowpt's Documentation/, built by scripts/check-docs
# (part of `make check`) and `make htmldocs`.
#
# The kernel-doc directive, with which abi.rst includes the comments of
# include/uapi/linux/shadowpt.h, is the kernel's own Sphinx extension,
# Documentation/sphinx/kerneldoc.py, with its parser in tools/lib/python, from
# the Linux 7.3 tree in $srctree: scripts/check-docs sets it to what
# scripts/setup unpacks ($SHADOWPT_KERNEL_DOC, see scripts/env.sh).

import os
import sys

top = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

srctree = os.environ.get("srctree", "")
if not os.path.isfile(os.path.join(srctree, "Documentation", "sphinx", "kerneldoc.py")):
    sys.exit(f"conf.py: no kernel tree with Documentation/sphinx/kerneldoc.py in "
             f"srctree ('{srctree}'); build with scripts/check-docs or make htmldocs")
sys.path.insert(0, os.path.join(srctree, "Documentation", "sphinx"))

project = "shadowpt"
copyright = "The shadowpt authors; GPL-2.0"
extensions = ["kerneldoc"]
# The paths of `.. kernel-doc::` are relative to the project's top directory.
kerneldoc_srctree = top
root_doc = "index"
source_suffix = ".rst"
exclude_patterns = ["benchmarks"]
# Literal blocks are shell sessions, program output and pseudo-code.
highlight_language = "none"
primary_domain = "c"
html_theme = "alabaster"
html_show_sourcelink = False
