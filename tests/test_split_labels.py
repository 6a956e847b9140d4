"""data/split_labels.py: the parts never replace the source label file (issue 25, P5)."""
from data import split_labels
from utils.cli import run_cli

LABEL = "# ev/a.jpg\n10 10 20 20\n# ev/b.jpg\n# ev/c.jpg\n5 5 8 8\n"


def test_out_the_sources_dataset_folder_is_refused_and_the_source_kept(tmp_path, capsys):
    """--out X for X/train/label.txt: a FileExistsError traceback (its images folder is not a
    link), and the source's train part would have replaced the source."""
    label = tmp_path / 'X' / 'train' / 'label.txt'
    (label.parent / 'images').mkdir(parents=True)
    label.write_text(LABEL)
    argv = [str(label), '--out', str(tmp_path / 'X'), '--every', '2']
    assert run_cli(split_labels.main, split_labels.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'X'} would overwrite the source label file {label} with the train part's "
        f"label.txt: choose another --out")
    assert label.read_text() == LABEL and sorted(p.name for p in (tmp_path / 'X').iterdir()) == ['train']


def test_a_folder_where_an_images_link_goes_is_one_error_line_before_any_work(tmp_path, capsys):
    label = tmp_path / 'src' / 'label.txt'
    label.parent.mkdir()
    label.write_text(LABEL)
    (tmp_path / 'out' / 'val' / 'images').mkdir(parents=True)
    argv = [str(label), '--out', str(tmp_path / 'out'), '--every', '2']
    assert run_cli(split_labels.main, split_labels.get_args_parser(), argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --out {tmp_path / 'out'}: {tmp_path / 'out' / 'val' / 'images'} exists and is not a link to "
        f"{tmp_path / 'src' / 'images'} (the source's images): choose another --out")
    assert not (tmp_path / 'out' / 'train').exists()  # nothing written before the check


def test_split_writes_both_parts_with_links(tmp_path):
    label = tmp_path / 'src' / 'label.txt'
    label.parent.mkdir()
    label.write_text(LABEL)
    counts = split_labels.main(split_labels.get_args_parser().parse_args(
        [str(label), '--out', str(tmp_path / 'out'), '--every', '2']))
    assert counts == {'train': (1, 1, 0), 'val': (2, 0, 2)}
    assert (tmp_path / 'out' / 'val' / 'label.txt').read_text() == "# ev/a.jpg\n10 10 20 20\n# ev/c.jpg\n5 5 8 8\n"
    assert (tmp_path / 'out' / 'train' / 'images').resolve() == tmp_path / 'src' / 'images'
