"""The three C modules; everything else about the package is in pyproject.toml.

Built at install, so installing from source needs a C compiler and the Python headers:
pdp/server/_wire.c (the decision path's request decoder, its Request builders and the
answer encoder), pdp/policy/_json.c (the bundle loader's duplicate-key check and a push's
per-rule work: validating, the canonical form, compiling) and pdp/policy/_doorkeeper.c (the
decision cache's admission test). See docs/performance.md, items 22, 23, 25, 26, 30 and 40.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra"]

SLOTTED = {"include_dirs": ["pdp"], "depends": ["pdp/_slotted.h"]}  # shared by two modules

setup(ext_modules=[
    Extension("pdp.server._wire", ["pdp/server/_wire.c"], extra_compile_args=FLAGS, **SLOTTED),
    Extension("pdp.policy._json", ["pdp/policy/_json.c"], extra_compile_args=FLAGS, **SLOTTED),
    Extension("pdp.policy._doorkeeper", ["pdp/policy/_doorkeeper.c"],
              extra_compile_args=FLAGS),
])
