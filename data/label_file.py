"""The RetinaFace label.txt parser, the one both training (data.wider_face) and the
evaluation's --label mode (widerface_evaluate/evaluation.py) read it with; and the reader of
WIDER's image list (wider_val.txt), for test_widerface.py and validation during training.

The format is described in data/wider_face.py. This module needs only numpy, so that the
evaluation stays free of torch.
"""
import os

import numpy as np

from utils.errors import InputError
from utils.input_files import note_listed_once, open_text

# Values per face line of the two label formats.
TRAIN_LINE_VALUES = 20
BOXES_ONLY_LINE_VALUES = 4
# Positions of the five landmarks' x, y in a 20-value line (the flags at 6, 9, ... and
# the score at 19 are not used), in the target's order: left eye, right eye, nose,
# left mouth corner, right mouth corner.
LANDMARK_INDICES = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]
# A face without landmarks has this in all ten landmark fields.
NO_LANDMARK = -1.0
# How far outside its box, in box widths (x) and heights (y), a face's landmark may lie.
# Landmarks are points of the face, so they lie in or next to its box: in minitrain's
# labels every one is inside its box or just beside it. A face cut by the photo's border
# has its box and landmarks cut alike, slightly outside the photo, and the augmentation
# clips both to the crop, which is harmless that close. Half a box leaves room for other
# annotators' conventions (a profile face's hidden eye) and still refuses a point that
# belongs to no face, or a value in another unit: the augmentation would clip it to the
# crop's border, far from the face, and its loss would dwarf every other.
LANDMARK_BOX_MARGIN = 0.5
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
        InputError: txt_path is not a UTF-8 text file, a line is malformed, an image is listed
            twice, or a landmark lies far outside its face's box (check_landmarks); the message
            names the file and the 1-based line number (both lines for a duplicate).
    """
    txt_path = os.fspath(txt_path)
    entries = []
    current = None
    first_listed = {}
    with open_text(txt_path, 'label file') as f:  # UTF-8, a BOM ignored; a binary file is refused
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue  # tolerate blank lines (the reference would crash on them)
            if line.startswith('#'):
                rel = line[1:].strip()
                if not rel:
                    raise InputError(f"{txt_path}:{lineno}: '#' line without an image path")
                note_listed_once(first_listed, rel, f"{txt_path}:{lineno}",
                                 remedy="keep one '# image' line, with all the image's faces below it")
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
            check_landmarks(values, f"{txt_path}:{lineno}")
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


def check_landmarks(values: list[float], where: str) -> None:
    """Refuse a 20-value face line whose landmark lies more than LANDMARK_BOX_MARGIN of the
    box outside its box x y w h (all in pixels). A face without landmarks (NO_LANDMARK in
    every field), a boxes-only line and a box without area (training drops it) are not checked.

    Raises:
        InputError: naming where (file:line), the landmark and the box.
    """
    if len(values) != TRAIN_LINE_VALUES:
        return
    x, y, w, h = values[:4]
    points = [values[i] for i in LANDMARK_INDICES]
    if w <= 0 or h <= 0 or all(v == NO_LANDMARK for v in points):
        return
    for k in range(len(points) // 2):
        lx, ly = points[2 * k], points[2 * k + 1]
        if not (x - LANDMARK_BOX_MARGIN * w <= lx <= x + w + LANDMARK_BOX_MARGIN * w and
                y - LANDMARK_BOX_MARGIN * h <= ly <= y + h + LANDMARK_BOX_MARGIN * h):
            raise InputError(
                f"{where}: landmark {k + 1} ({lx:g}, {ly:g}) is far outside its face's box (x y w h "
                f"{x:g} {y:g} {w:g} {h:g}): more than {LANDMARK_BOX_MARGIN:g} of the box's size away. Landmarks "
                f"are pixels of the image, like the box; a face without landmarks has {NO_LANDMARK:g} in all "
                f"ten landmark fields")


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
