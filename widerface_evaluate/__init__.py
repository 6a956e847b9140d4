"""WIDER FACE evaluation: the Cython box-overlap kernel and evaluation.py."""
