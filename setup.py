"""The two C modules; everything else about the package is in pyproject.toml.

Built at install, so installing from source needs a C compiler and the Python headers:
pdp/server/_wire.c (the decision path's request decoder) and pdp/policy/_json.c (the JSON
bundle loader's duplicate-key check). See docs/performance.md, items 22 and 23.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("pdp.server._wire", ["pdp/server/_wire.c"], extra_compile_args=FLAGS),
    Extension("pdp.policy._json", ["pdp/policy/_json.c"], extra_compile_args=FLAGS),
])
