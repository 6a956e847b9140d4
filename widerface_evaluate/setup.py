"""Builds the Cython box-overlap kernel in place, as the reference documents:

    cd widerface_evaluate && python setup.py build_ext --inplace

(`python setup.py build_ext --inplace` at the repository root builds it with the other kernels.)
Uses setuptools (Python 3.12 has no distutils) and numpy's headers; works with numpy 1 and 2.
"""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "box_overlaps",
        ["box_overlaps.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # The numpy fallback's float64 arithmetic bit for bit: no fused multiply-adds.
        extra_compile_args=["-O3", "-fno-fast-math", "-ffp-contract=off"],
    )
]

setup(
    name="widerface_evaluate_box_overlaps",
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
