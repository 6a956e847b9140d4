"""Split a RetinaFace label.txt into a train part and a held-out part, without copying images.

    python -m data.split_labels ../shared/minitrain/train/label.txt --out /tmp/minisplit --every 5

writes ``/tmp/minisplit/train/label.txt`` and ``/tmp/minisplit/val/label.txt``, each with an
``images`` link to the images folder beside the source label.txt (where the dataset reads
them from). Every ``--every``-th image (counting from ``--offset``) is held out; the rest
train. Images without faces are split the same way, so both parts keep some. The output
folder must be outside the repository's tracked files: nothing is copied, only linked.
"""
import argparse
import os
from pathlib import Path


from data.wider_face import read_label_file
from utils.atomic import atomic_write_text
from utils.cli import run_cli
from utils.errors import InputError
from utils.input_files import open_text
from utils.outputs import RunOutputs


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('label', help='source label.txt (its images are in images/ beside it)')
    parser.add_argument('--out', required=True, help='folder to write train/ and val/ into')
    parser.add_argument('--every', type=int, default=5, help='hold out every N-th image (default 5)')
    parser.add_argument('--offset', type=int, default=0, help='index of the first held-out image (default 0)')
    return parser


def split_blocks(label_path, every, offset=0):
    """(train_blocks, val_blocks): the source file's image blocks ('# path' line and its
    face lines, verbatim) sorted into the two parts."""
    if every < 2:
        raise InputError(f"--every must be >= 2, got {every}")
    read_label_file(label_path)  # validates the file (clear errors naming the line)
    blocks = []
    with open_text(label_path, 'label file') as f:
        for line in f:
            if line.startswith('#'):
                blocks.append([])
            if line.strip() and blocks:
                blocks[-1].append(line.rstrip('\n'))
    train, val = [], []
    for i, block in enumerate(blocks):
        (val if i % every == offset % every else train).append(block)
    return train, val


PARTS = ('train', 'val')


def check_outputs(label, out, image_root):
    """The two label files and images links can be made, and no label file is the source
    (--out the source's dataset folder would replace it with its own train part): checked
    before any work (utils.outputs). A rerun finds its own images links."""
    outputs = RunOutputs()
    outputs.reads('', label, 'the source label file')
    outputs.folder('--out', out)
    for name in PARTS:
        outputs.file('--out', out / name / 'label.txt', given=out, what=f"the {name} part's label.txt")
    outputs.check()
    for name in PARTS:
        link = out / name / 'images'
        if link.is_symlink():
            if Path(os.readlink(link)) != image_root:
                raise InputError(f"--out {out}: {link} is a link to {os.readlink(link)}, not to {image_root}, "
                                 f"the images of the label file split: choose another --out folder")
        elif link.exists():
            raise InputError(f"--out {out}: {link} exists and is not a link (split_labels writes train/ and "
                             f"val/, each with an 'images' link to {image_root}, and never over a folder of "
                             f"images): choose another --out folder, a new one")


def _write_part(folder, blocks, image_root):
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / 'images'
    if not link.is_symlink():
        link.symlink_to(image_root, target_is_directory=True)
    atomic_write_text(folder / 'label.txt', ''.join(line + '\n' for block in blocks for line in block))
    return len(blocks), sum(len(b) == 1 for b in blocks), sum(len(b) - 1 for b in blocks)


def main(args):
    label = Path(args.label).resolve()
    image_root = label.parent / 'images'
    out = Path(args.out)
    check_outputs(label, out, image_root)
    train, val = split_blocks(label, args.every, args.offset)
    counts = {}
    for name, blocks in zip(PARTS, (train, val)):
        n, faceless, faces = _write_part(out / name, blocks, image_root)
        counts[name] = (n, faceless, faces)
        print(f"{out / name / 'label.txt'}: {n} images ({faceless} without faces), {faces} faces")
    return counts


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
