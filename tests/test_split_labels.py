"""data/split_labels.py: the split, a rerun into its own folder, and an --out that would write
over the source, a folder of images or through a file is one 'error:' line before anything is written
(issue 25, P5)."""
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
    assert line == f"error: cannot write --out {tmp_path}/split: it is a file, not a folder"


SMALL_LABEL = "# ev/a.jpg\n10 10 20 20\n# ev/b.jpg\n# ev/c.jpg\n5 5 8 8\n"


def test_out_the_sources_dataset_folder_is_refused_and_the_source_kept(tmp_path, capsys):
    """--out X for X/train/label.txt: a FileExistsError traceback (its images folder is not a
    link), and the source's train part would have replaced the source."""
    label = tmp_path / 'X' / 'train' / 'label.txt'
    (label.parent / 'images').mkdir(parents=True)
    label.write_text(SMALL_LABEL)
    argv = [str(label), '--out', str(tmp_path / 'X'), '--every', '2']
    assert run_cli(split_labels.main, split_labels.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'X'} would overwrite the source label file {label} with the train part's "
        f"label.txt: choose another --out")
    assert label.read_text() == SMALL_LABEL and sorted(p.name for p in (tmp_path / 'X').iterdir()) == ['train']


def test_a_folder_where_an_images_link_goes_is_one_error_line_before_any_work(tmp_path, capsys):
    label = tmp_path / 'src' / 'label.txt'
    label.parent.mkdir()
    label.write_text(SMALL_LABEL)
    (tmp_path / 'out' / 'val' / 'images').mkdir(parents=True)
    argv = [str(label), '--out', str(tmp_path / 'out'), '--every', '2']
    assert run_cli(split_labels.main, split_labels.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'out'}: {tmp_path / 'out' / 'val' / 'images'} exists and is not a link (split_labels "
        f"writes train/ and val/, each with an 'images' link to {tmp_path / 'src' / 'images'}, and never over a "
        f"folder of images): choose another --out folder, a new one")
    assert not (tmp_path / 'out' / 'train').exists()  # nothing written before the check
