"""data/split_labels.py: the split, a rerun into its own folder, and an --out that would write
over a folder of images (or through a file) is one 'error:' line before anything is written."""
import os

import pytest

from data import split_labels
from utils.cli import run_cli

LABEL = ''.join(f'# 0--Parade/{i}.jpg\n' + ('1 2 3 4\n' if i % 2 else '') for i in range(6))


@pytest.fixture
def dataset(tmp_path):
    """X/train/label.txt (6 images, 3 with a face) with its images/ folder beside it."""
    train = tmp_path / 'X' / 'train'
    (train / 'images' / '0--Parade').mkdir(parents=True)
    (train / 'label.txt').write_text(LABEL)
    return train / 'label.txt'


def _split(label, out, *extra):
    return run_cli(split_labels.main, split_labels.get_args_parser(), [str(label), '--out', str(out), *extra])


def _tree(folder):
    return sorted((p.relative_to(folder).as_posix(), p.is_symlink()) for p in folder.rglob('*'))


def test_split_holds_out_every_nth_image_and_links_the_images(dataset, tmp_path, capsys):
    out = tmp_path / 'split'
    assert _split(dataset, out, '--every', '3') == 0
    assert (out / 'val' / 'label.txt').read_text() == '# 0--Parade/0.jpg\n# 0--Parade/3.jpg\n1 2 3 4\n'
    assert (out / 'train' / 'label.txt').read_text().count('#') == 4
    for part in ('train', 'val'):
        assert os.readlink(out / part / 'images') == str(dataset.parent / 'images')
    # A rerun finds its own links and writes the same files.
    before = {p: (out / p).read_text() for p in ('train/label.txt', 'val/label.txt')}
    assert _split(dataset, out, '--every', '3') == 0
    assert {p: (out / p).read_text() for p in before} == before


def test_out_over_the_source_folder_is_one_error_line(dataset, capsys):
    """P5: `split_labels X/train/label.txt --out X` was a FileExistsError traceback."""
    x = dataset.parent.parent
    before = _tree(x)
    assert _split(dataset, x) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: --out {x}: {x}/train/images exists and is not a link (split_labels writes train/ and "
                   f"val/, each with an 'images' link to {x}/train/images, and never over a folder of images): "
                   f"choose another --out folder, a new one"]
    assert _tree(x) == before and dataset.read_text() == LABEL  # no val/ made, the source untouched


def test_out_with_a_foreign_images_link_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / 'split'
    (out / 'val').mkdir(parents=True)
    (out / 'val' / 'images').symlink_to(tmp_path)
    assert _split(dataset, out) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"error: --out {out}: {out}/val/images is a link to {tmp_path}, not to {dataset.parent}/images, "
                    f"the images of the label file split: choose another --out folder")
    assert not (out / 'train').exists()  # checked before the first part was written


def test_out_through_a_file_is_refused(dataset, tmp_path, capsys):
    (tmp_path / 'split').write_text('a file\n')
    assert _split(dataset, tmp_path / 'split') == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"error: cannot write --out {tmp_path}/split/train/label.txt: {tmp_path}/split is a file, "
                    f"not a folder")
