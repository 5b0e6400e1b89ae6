"""The optional compiled hot path (controller/_native): built by `pip install -e .` when a C
compiler and the Python headers are there; without them the install still succeeds and the
controller runs its pure Python engine, which stays the reference (see controller/native.py).
Set FILLALLOC_BUILD_NATIVE=0 to skip the build."""

import os

from setuptools import Extension, setup

NATIVE_DIR = "controller/_native"
FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"]


def native_extensions() -> list[Extension]:
    if os.environ.get("FILLALLOC_BUILD_NATIVE", "1") == "0":
        return []
    header = [f"{NATIVE_DIR}/alloc_core.h"]
    return [
        Extension(
            "controller._allocc",
            [f"{NATIVE_DIR}/allocmodule.c"],
            depends=header,
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "controller._hotpath",
            [f"{NATIVE_DIR}/hotpath.c"],
            depends=[*header, f"{NATIVE_DIR}/msgpack_min.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]


setup(ext_modules=native_extensions())
