"""utils/outputs.py: the one check of a run's outputs, on small hand-made paths (no detector).

Each test names one input or output and one way it can meet another (a link, a hard link,
'..', a relative path, a clash of two outputs, a folder, a FIFO or a device where a file is
meant) and checks the one-line message, and that the check itself creates nothing.
"""
import os

import pytest

from utils.errors import InputError
from utils.outputs import RunOutputs


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / 'in' / 'a.jpg'
    path.parent.mkdir()
    path.write_bytes(b'a photo')
    return path


def _check(*, inputs=(), files=(), folders=(), numbered=()):
    """RunOutputs with inputs [(flag, path, what)], files [(flag, path, kwargs)], folders
    [(flag, path)] and numbered [(flag, given, stems)], checked."""
    outputs = RunOutputs()
    for flag, path, what in inputs:
        outputs.reads(flag, path, what)
    for flag, path in folders:
        outputs.folder(flag, path)
    for flag, path, kwargs in files:
        outputs.file(flag, path, **kwargs)
    for flag, given, stems in numbered:
        outputs.numbered(flag, given, stems)
    outputs.check()


def _refused(message, **kwargs):
    with pytest.raises(InputError) as e:
        _check(**kwargs)
    assert str(e.value) == message
    return e.value


def _listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob('*'))


IMAGE = ('--image', None, 'the input image')


def _image(path):
    return [(IMAGE[0], path, IMAGE[2])]


# -- an output over an input ----------------------------------------------------------------------

def test_an_output_that_is_an_input_is_refused_naming_both(photo):
    _refused(f"--json {photo} would overwrite the input image {photo} (--image) with the detections: "
             f"choose another --json",
             inputs=_image(photo), files=[('--json', photo, {'what': 'the detections'})])


def test_an_output_through_a_symbolic_link_to_an_input_is_refused(photo, tmp_path):
    link = tmp_path / 'dets.json'
    link.symlink_to(photo)
    _refused(f"--json {link} would overwrite the input image {photo} (--image) ({link} leads to it): "
             f"choose another --json",
             inputs=_image(photo), files=[('--json', link, {})])


def test_an_output_through_a_linked_folder_is_refused(photo, tmp_path):
    (tmp_path / 'alias').symlink_to(photo.parent, target_is_directory=True)
    out = tmp_path / 'alias' / 'a.jpg'
    _refused(f"--output {tmp_path / 'alias'} would overwrite the input image {photo} (--image) with the "
             f"annotated copy ({out} leads to it): choose another --output",
             inputs=_image(photo),
             files=[('--output', out, {'given': tmp_path / 'alias', 'what': 'the annotated copy'})])


def test_an_output_that_is_a_hard_link_to_an_input_is_refused(photo, tmp_path):
    hard = tmp_path / 'dets.json'
    os.link(photo, hard)
    _refused(f"--json {hard} would overwrite the input image {photo} (--image) ({hard} is a hard link to it): "
             f"choose another --json",
             inputs=_image(photo), files=[('--json', hard, {})])


def test_dot_dot_and_a_relative_path_resolve_to_the_input(photo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = os.path.join('in', '..', 'in', 'a.jpg')
    _refused(f"--json {relative} would overwrite the input image {photo} (--image): choose another --json",
             inputs=_image(photo), files=[('--json', relative, {})])


def test_an_output_may_replace_the_input_it_is_declared_to_replace(tmp_path):
    state = tmp_path / 'run_last_state.pth'
    state.write_bytes(b'state')
    _check(inputs=[('--resume', state, 'the training state')],
           files=[('--save_folder', state, {'given': tmp_path, 'may_replace': ('--resume',)})])
    _refused(f"--save_folder {tmp_path} would overwrite the weights {state} (--resume_net): "
             f"choose another --save_folder",
             inputs=[('--resume_net', state, 'the weights')],
             files=[('--save_folder', state, {'given': tmp_path, 'may_replace': ('--resume',)})])


def test_inputs_that_do_not_exist_or_are_not_files_are_left_to_their_readers(tmp_path):
    _check(inputs=[('-m', tmp_path / 'missing.pth', 'the weights'), ('-p', tmp_path, 'the predictions')],
           files=[('--json', tmp_path / 'missing.pth', {})])


# -- two outputs --------------------------------------------------------------------------------

def test_two_outputs_of_two_flags_clash_before_either_exists(tmp_path):
    out = tmp_path / 'out'
    _refused(f"--json {out / 'x.mp4'} and --output {out} would both write {out / 'x.mp4'} (the annotated video): "
             f"only one would survive; choose another --json",
             files=[('--output', out / 'x.mp4', {'given': out, 'what': 'the annotated video'}),
                    ('--json', out / 'x.mp4', {})])
    assert not out.exists()


def test_two_outputs_clash_through_a_link(tmp_path):
    (tmp_path / 'real').mkdir()
    (tmp_path / 'alias').symlink_to(tmp_path / 'real', target_is_directory=True)
    _refused(f"--curve-plot {tmp_path / 'alias' / 'pr.png'} and --curve-data {tmp_path / 'real' / 'pr.png'} would "
             f"both write {tmp_path / 'alias' / 'pr.png'} ({tmp_path / 'alias' / 'pr.png'} leads to it): only one "
             f"would survive; choose another --curve-plot",
             files=[('--curve-data', tmp_path / 'real' / 'pr.png', {}),
                    ('--curve-plot', tmp_path / 'alias' / 'pr.png', {})])


def test_two_inputs_with_one_output_are_told_to_rename_one(tmp_path):
    out = tmp_path / 'out'
    _refused(f"in/snap and in/snap.jpg would both be written to {out / 'snap.jpg'} (--output {out}): "
             f"rename one of them",
             files=[('--output', out / 'snap.jpg', {'given': out, 'source': 'in/snap'}),
                    ('--output', out / 'snap.jpg', {'given': out, 'source': 'in/snap.jpg'})])


def test_a_file_output_where_an_output_folder_goes_is_refused(tmp_path):
    _refused(f"--json {tmp_path / 'o'} would be a file where --output {tmp_path / 'o'} needs a folder (it is "
             f"{tmp_path / 'o'}): choose another --json",
             folders=[('--output', tmp_path / 'o')], files=[('--json', tmp_path / 'o', {})])
    _refused(f"--json {tmp_path / 'o.json'} would be a file where --output {tmp_path / 'o.json' / 'sub'} needs a "
             f"folder (it holds {tmp_path / 'o.json' / 'sub'}): choose another --json",
             folders=[('--output', tmp_path / 'o.json' / 'sub')], files=[('--json', tmp_path / 'o.json', {})])


# -- what is there: folders, FIFOs, devices, streams ---------------------------------------------

def test_a_folder_where_a_file_is_meant_is_refused(tmp_path):
    (tmp_path / 'out' / 'x.mp4').mkdir(parents=True)
    _refused(f"cannot write --output {tmp_path / 'out'}: {tmp_path / 'out' / 'x.mp4'} is a folder, not a file "
             f"(the annotated video goes there)",
             files=[('--output', tmp_path / 'out' / 'x.mp4', {'given': tmp_path / 'out', 'what': 'the annotated video'})])
    _refused(f"cannot write --json {tmp_path}: it is a folder, not a file", files=[('--json', tmp_path, {})])


def test_a_fifo_where_a_file_is_meant_is_refused_and_taken_as_a_stream_where_allowed(tmp_path):
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    _refused(f"cannot write --curve-data {fifo}: it is a FIFO, not a file", files=[('--curve-data', fifo, {})])
    _check(files=[('--json', fifo, {'stream': True})])  # nothing opened: the check must not block


def test_a_device_is_refused_where_a_file_is_meant_and_a_stream_where_allowed():
    _refused("cannot write --output /dev/null: it is a character device, not a file",
             files=[('--output', '/dev/null', {})])
    _check(files=[('--json', '/dev/null', {'stream': True})])
    assert os.path.exists('/dev/null') and not os.path.isfile('/dev/null')


def test_a_file_or_fifo_where_a_folder_is_meant_is_refused(tmp_path):
    (tmp_path / 'f').write_text('')
    _refused(f"cannot write --save_crops {tmp_path / 'f'}: it is a file, not a folder",
             folders=[('--save_crops', tmp_path / 'f')])
    os.mkfifo(tmp_path / 'p')
    _refused(f"cannot write --output {tmp_path / 'p'}: it is a FIFO, not a folder", folders=[('--output', tmp_path / 'p')])


@pytest.mark.parametrize('name', ['-', '/dev/stdout', '/dev/stderr'])
def test_stdout_and_stderr_are_streams_where_allowed_and_refused_elsewhere(name):
    _check(files=[('--json', name, {'stream': True})])
    kind = 'stderr' if 'err' in name else 'stdout'
    _refused(f"cannot write --curve-data {name}: --curve-data writes a file, not {kind}: give it a file name",
             files=[('--curve-data', name, {})])


def test_a_location_under_a_file_is_refused(tmp_path):
    (tmp_path / 'file.txt').write_text('')
    _refused(f"cannot write --json {tmp_path / 'file.txt' / 'd.json'}: {tmp_path / 'file.txt'} is a file, not a folder",
             files=[('--json', tmp_path / 'file.txt' / 'd.json', {})])


def test_the_check_creates_nothing(photo, tmp_path):
    before = _listing(tmp_path)
    _check(inputs=_image(photo), folders=[('--output', tmp_path / 'new' / 'out')],
           files=[('--output', tmp_path / 'new' / 'out' / 'a.jpg', {'given': tmp_path / 'new' / 'out'}),
                  ('--json', tmp_path / 'deeper' / 'still' / 'd.json', {})],
           numbered=[('--save_crops', tmp_path / 'crops', [(str(tmp_path / 'crops' / 'a'), str(photo))])])
    assert _listing(tmp_path) == before


# -- numbered outputs (crops: <stem>_<k>.jpg) -----------------------------------------------------

def test_an_input_named_like_a_crop_in_the_crops_folder_is_refused(tmp_path):
    folder = tmp_path / 'dir'
    folder.mkdir()
    for name in ('a.jpg', 'a_0.jpg', 'a_x.jpg', 'b_0.jpg'):
        (folder / name).write_bytes(b'photo')
    images = [(IMAGE[0], folder / name, IMAGE[2]) for name in ('a.jpg', 'a_0.jpg')]
    stems = [(str(folder / 'a'), str(folder / 'a.jpg')), (str(folder / 'a_0'), str(folder / 'a_0.jpg'))]
    _refused(f"--save_crops {folder} would overwrite the input image {folder / 'a_0.jpg'} (--image) with a crop of "
             f"{folder / 'a.jpg'} ({folder / 'a'}_<k>.jpg): choose another --save_crops",
             inputs=images, numbered=[('--save_crops', folder, stems)])
    # a_x.jpg and b_0.jpg are no crop's name: a.jpg alone in the run is fine.
    _check(inputs=_image(folder / 'a.jpg') + _image(folder / 'a_x.jpg') + _image(folder / 'b_0.jpg'),
           numbered=[('--save_crops', folder, stems[:1])])


def test_an_existing_crop_name_that_links_to_an_input_is_refused(photo, tmp_path):
    crops = tmp_path / 'crops'
    crops.mkdir()
    (crops / 'a_3.jpg').symlink_to(photo)
    _refused(f"--save_crops {crops} would overwrite the input image {photo} (--image) with a crop of {photo} "
             f"({crops / 'a'}_<k>.jpg) ({crops / 'a_3.jpg'} leads to it): choose another --save_crops",
             inputs=_image(photo), numbered=[('--save_crops', crops, [(str(crops / 'a'), str(photo))])])


def test_another_output_named_like_a_crop_is_refused(photo, tmp_path):
    crops = tmp_path / 'crops'
    _refused(f"--json {crops / 'a_0.jpg'} and --save_crops {crops} would both write {crops / 'a_0.jpg'} (a crop of "
             f"{photo} ({crops / 'a'}_<k>.jpg)): only one would survive; choose another --json",
             files=[('--json', crops / 'a_0.jpg', {})],
             numbered=[('--save_crops', crops, [(str(crops / 'a'), str(photo))])])


def test_two_inputs_with_one_crop_stem_are_told_to_rename_one(tmp_path):
    crops = tmp_path / 'crops'
    _refused(f"in/a.jpg and in/a.png would both be written to {crops / 'a'}_<k>.jpg (--save_crops {crops}): "
             f"rename one of them",
             numbered=[('--save_crops', crops, [(str(crops / 'a'), 'in/a.jpg'), (str(crops / 'a'), 'in/a.png')])])


def test_a_folder_named_like_a_crop_is_refused(photo, tmp_path):
    crops = tmp_path / 'crops'
    (crops / 'a_1.jpg').mkdir(parents=True)
    _refused(f"cannot write --save_crops {crops}: {crops / 'a_1.jpg'} is a folder, not a file (a crop of {photo} "
             f"({crops / 'a'}_<k>.jpg) goes there)",
             numbered=[('--save_crops', crops, [(str(crops / 'a'), str(photo))])])
