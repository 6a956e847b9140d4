"""Builds the compiled exact NMS (cpu_nms.pyx) in place.

    cd utils/nms && python setup.py build_ext --inplace

The kernel must do py_cpu_nms's float32 arithmetic bit for bit: no fast-math, and
-ffp-contract=off so that the compiler never fuses a multiply and an add into one FMA
(which rounds once instead of twice).
"""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "cpu_nms",
        ["cpu_nms.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
    )
]

setup(
    name="utils_nms_cpu_nms",
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
