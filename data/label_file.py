"""The RetinaFace label.txt parser, the one both training (data.wider_face) and the
evaluation's --label mode (widerface_evaluate/evaluation.py) read it with; and the reader of
WIDER's image list (wider_val.txt), for test_widerface.py and validation during training.

The format is described in data/wider_face.py. This module needs only numpy, so that the
evaluation stays free of torch.
"""
import os

import numpy as np

from utils.errors import InputError
from utils.input_files import open_text

# Values per face line of the two label formats.
TRAIN_LINE_VALUES = 20
BOXES_ONLY_LINE_VALUES = 4
# WIDER FACE's list of val images, beside its images/ folder.
WIDER_IMAGE_LIST = 'wider_val.txt'


def read_label_file(txt_path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Parse a RetinaFace label.txt without touching the images.

    Args:
        txt_path (str | PathLike): path of label.txt.
    Returns:
        list of (relative_image_path, ndarray[N, 20 or 4] float64): the images in file
        order with their face lines as written. A boxes-only file gives [N, 4] arrays; an
        image without faces gives an empty [0, 20] array.
    Raises:
        InputNotFoundError: txt_path does not exist.
        InputError: txt_path is not a UTF-8 text file, or a line is malformed; the message
            names the file and the 1-based line number.
    """
    txt_path = os.fspath(txt_path)
    entries = []
    current = None
    with open_text(txt_path, 'label file') as f:  # UTF-8, a BOM ignored; a binary file is refused
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue  # tolerate blank lines (the reference would crash on them)
            if line.startswith('#'):
                rel = line[1:].strip()
                if not rel:
                    raise InputError(f"{txt_path}:{lineno}: '#' line without an image path")
                current = (rel, [])
                entries.append(current)
                continue
            if current is None:
                raise InputError(f"{txt_path}:{lineno}: face line before the first '# image' line: {line[:80]!r}")
            fields = line.split()
            if len(fields) not in (TRAIN_LINE_VALUES, BOXES_ONLY_LINE_VALUES):
                raise InputError(
                    f"{txt_path}:{lineno}: expected {TRAIN_LINE_VALUES} values (x y w h, 5 x (lx ly flag), score) "
                    f"or {BOXES_ONLY_LINE_VALUES} (x y w h), got {len(fields)}: {line[:80]!r}")
            try:
                values = [float(x) for x in fields]
            except ValueError:
                raise InputError(f"{txt_path}:{lineno}: non-numeric value in face line: {line[:80]!r}") from None
            if not all(np.isfinite(values)):
                raise InputError(f"{txt_path}:{lineno}: non-finite value in face line: {line[:80]!r}")
            current[1].append(values)

    parsed = []
    for rel, faces in entries:
        widths = {len(v) for v in faces}
        if len(widths) > 1:
            # Mixed widths in one image: pad the 4-value lines to 20 with 'no landmarks'.
            faces = [v if len(v) == TRAIN_LINE_VALUES else v + [-1.0] * (TRAIN_LINE_VALUES - len(v)) for v in faces]
        width = widths.pop() if len(widths) == 1 else TRAIN_LINE_VALUES
        parsed.append((rel, np.asarray(faces, dtype=np.float64).reshape(-1, width)))
    return parsed


def read_wider_list(path: str, what: str = 'image list') -> list[tuple[int, str, str]]:
    """The entries of a WIDER image list (wider_val.txt), read as the reference reads it:
    whitespace-separated image paths, relative to the images folder.

    Args:
        path: the list file.
        what: what the file is, for open_text's messages.
    Returns:
        (line number, entry as written, entry without its leading '/') for each entry, in
        file order (empty for an empty list).
    Raises:
        InputError: the file is not UTF-8 text.
    """
    with open_text(path, what) as f:
        text = f.read()
    return [(lineno, n, n.lstrip('/')) for lineno, line in enumerate(text.split('\n'), 1) for n in line.split()]
