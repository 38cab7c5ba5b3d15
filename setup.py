"""Build the compiled extensions. Package metadata lives in pyproject.toml.

Environment variables:

- ``FASTLSTM_DISABLE_OPENMP=1`` builds without OpenMP (``prange`` loops run
  serially).
- ``FASTLSTM_CYTHON_DEBUG=1`` turns Cython's bounds and negative-index
  checks on.
"""

import glob
import os
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

# One row per extension. Each entry lists its sources, whether it uses
# OpenMP and whether it uses NumPy's C API.
EXTENSIONS = {
    "fastlstm._packing": {"sources": ["fastlstm/_packing.pyx"], "openmp": True, "numpy": True},
    "fastlstm._fpenv": {"sources": ["fastlstm/_fpenv.pyx"], "openmp": False},
    "fastlstm._spin": {"sources": ["fastlstm/_spin.pyx"], "openmp": False},
    "fastlstm._optim_kernels": {"sources": ["fastlstm/_optim_kernels.pyx"], "openmp": False},
    "fastlstm._loss_kernels": {"sources": ["fastlstm/_loss_kernels.pyx"], "openmp": False},
    "fastlstm._kernels._gemm": {"sources": ["fastlstm/_kernels/_gemm.pyx"], "openmp": False},
    "fastlstm._kernels.cython_lstm": {"sources": ["fastlstm/_kernels/cython_lstm.pyx"], "openmp": False},
    "fastlstm._kernels._kernel_arguments": {
        "sources": ["fastlstm/_kernels/_kernel_arguments.pyx"], "openmp": False, "numpy": True},
    "fastlstm._kernels._stream_call": {
        "sources": ["fastlstm/_kernels/_stream_call.pyx"], "openmp": False, "numpy": True},
}

DEBUG = os.environ.get("FASTLSTM_CYTHON_DEBUG", "0") == "1"

# These directives live here and not in the .pyx headers, because a header
# directive would override the debug switch.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
}

_OPENMP_PROBE = textwrap.dedent(
    """\
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n < 1 || omp_get_max_threads() < 1;
    }
    """
)


def _flags(compiler):
    """Return the (optimisation, OpenMP) flags for the compiler's family."""
    if compiler.compiler_type == "msvc":
        return ["/O2"], ["/openmp"]
    return ["-O3"], ["-fopenmp"]


def _has_openmp(compiler, openmp_flags):
    """Return whether a tiny OpenMP program compiles and links.

    The probe uses the compiler that will build the extensions. Apple clang,
    for example, accepts ``-fopenmp`` only when libomp is installed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe_openmp.c")
        with open(source, "w") as f:
            f.write(_OPENMP_PROBE)
        try:
            objects = compiler.compile(
                [source], output_dir=tmp, extra_postargs=openmp_flags
            )
            compiler.link_executable(
                objects, "probe_openmp", output_dir=tmp,
                extra_postargs=openmp_flags,
            )
        except (CompileError, LinkError):
            return False
    return True


class BuildExt(build_ext):
    """Add -O3 and, when the compiler supports it, OpenMP."""

    def build_extensions(self):
        optimize, openmp = _flags(self.compiler)
        if os.environ.get("FASTLSTM_DISABLE_OPENMP", "0") == "1":
            print("fastlstm: FASTLSTM_DISABLE_OPENMP=1, building without OpenMP.")
            openmp = []
        elif not _has_openmp(self.compiler, openmp):
            print(
                "\n" + "*" * 72 + "\n"
                "WARNING fastlstm: this compiler cannot build OpenMP code "
                f"({' '.join(openmp)} failed).\n"
                "The Cython extensions will be built without OpenMP and their "
                "parallel loops\nwill run on one thread. (On macOS, installing "
                "libomp usually fixes this.)\n" + "*" * 72 + "\n"
            )
            openmp = []
        for ext in self.extensions:
            uses_openmp = EXTENSIONS[ext.name]["openmp"]
            ext.extra_compile_args += optimize + (openmp if uses_openmp else [])
            ext.extra_link_args += openmp if uses_openmp else []
        super().build_extensions()


# C headers the extensions include (own_gemm.h includes own_gemm_avx2.h,
# which Cython cannot see): an edit to one rebuilds them.
HEADERS = sorted(glob.glob(os.path.join("fastlstm", "**", "*.h"), recursive=True))


def _extension(name, row):
    if not row.get("numpy"):
        return Extension(name, row["sources"], depends=HEADERS)
    import numpy

    return Extension(name, row["sources"], include_dirs=[numpy.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                     depends=HEADERS)


setup(
    ext_modules=cythonize(
        [_extension(name, row) for name, row in EXTENSIONS.items()],
        compiler_directives=COMPILER_DIRECTIVES,
    ),
    cmdclass={"build_ext": BuildExt},
)
