"""Image files: what counts as one.

Kept free of torch and of the rest of the project, so that the torch-free paths
(widerface_evaluate/evaluation.py, ONNX inference) can import it.
"""

# Extensions a folder or glob of images is filtered by, and that a WIDER image name
# loses to become its prediction file's name (case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
