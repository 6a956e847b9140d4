"""Builds the compiled host-side pipeline stages (cpu_pipeline.pyx) in place.

    cd utils/kernels && python setup.py build_ext --inplace

The kernels must do the numpy pipeline's float32 arithmetic bit for bit: no fast-math,
and -ffp-contract=off so that the compiler never fuses a multiply and an add into one FMA
(which rounds once instead of twice).
"""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "cpu_pipeline",
        ["cpu_pipeline.pyx"],
        depends=["to_input.h"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
    )
]

setup(
    name="utils_kernels_cpu_pipeline",
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
