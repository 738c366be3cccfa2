"""Builds the optional C kernel; the metadata is in ``pyproject.toml``.

``bncli.native.moments`` is a fast path: when it cannot be compiled (no C
compiler, no Python headers), the install goes on without it and bncli uses
its NumPy kernels.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """``build_ext`` whose failures are warnings, not errors."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # any failure: go on without it
            self._warn(error)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            self._warn(error, ext.name)

    @staticmethod
    def _warn(error: Exception, name: str = "the C extensions") -> None:
        print(
            f"WARNING: could not build {name} ({error}); "
            "bncli will use its NumPy kernels instead.",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "bncli.native.moments",
            ["bncli/native/moments.c"],
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        ),
        Extension("bncli.native.crc", ["bncli/native/crc.c"], optional=True),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
