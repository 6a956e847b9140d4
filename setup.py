"""Builds every compiled kernel in place, from the repository root:

    python setup.py build_ext --inplace

- widerface_evaluate.box_overlaps: the WIDER FACE evaluation's box overlaps (the
  reference's kernel; `cd widerface_evaluate && python setup.py build_ext --inplace`, as
  the reference documents, builds it alone);
- utils.nms.cpu_nms: the exact fast NMS;
- utils.kernels.cpu_pipeline: the detection pipeline's host-side stages.

Each has an exact fallback when it is not built (see utils/compiled.py). This file only
builds the kernels: the project itself is not installed as a package.
"""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

NUMPY = dict(include_dirs=[np.get_include()], define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
# Every kernel must do its Python fallback's float arithmetic bit for bit: no fast-math, and
# -ffp-contract=off so that the compiler never fuses a multiply and an add into one FMA
# (which rounds once instead of twice), whatever CFLAGS (-march=native) a build adds.
EXACT_FLOAT = ["-O3", "-fno-fast-math", "-ffp-contract=off"]

extensions = [
    Extension("widerface_evaluate.box_overlaps", ["widerface_evaluate/box_overlaps.pyx"],
              extra_compile_args=EXACT_FLOAT, **NUMPY),
    Extension("utils.nms.cpu_nms", ["utils/nms/cpu_nms.pyx"], extra_compile_args=EXACT_FLOAT, **NUMPY),
    Extension("utils.kernels.cpu_pipeline", ["utils/kernels/cpu_pipeline.pyx"], depends=["utils/kernels/to_input.h"],
              extra_compile_args=EXACT_FLOAT, **NUMPY),
]

setup(
    name="retinaface_kernels",
    ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
)
