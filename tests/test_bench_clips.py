"""bench.clips: the test clips are H.264 + AAC .mp4 files that OpenCV decodes frame for frame,
made once per spec into a cache, the same bytes each time, and their frames show the photo
exactly where Clip.to_frame says (checked on a synthetic photo to a twentieth of a pixel)."""
import av
import numpy as np
import pytest

import bench.clips as clips
from bench.clips import AUDIO_RATE, ClipSpec, decode_frames, make_clip, render_frames
from tests.conftest import need_shared
from utils.atomic import TEMP_SUFFIX

SMALL = dict(size=(160, 90), frames=6, fps=30.0)


@pytest.fixture(scope='module')
def small_clip(tmp_path_factory):
    need_shared('images', 'largest_selfie.jpg')
    return make_clip(tmp_path_factory.mktemp('clips'), **SMALL)


def test_a_clip_is_h264_with_aac_sound_in_mp4(small_clip):
    with av.open(str(small_clip.path)) as f:
        video, = f.streams.video
        audio, = f.streams.audio
        assert 'mp4' in f.format.name
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ('h264', 'yuv420p')
        assert (video.width, video.height, video.frames, video.average_rate) == (160, 90, 6, 30)
        assert (audio.codec_context.name, audio.rate, audio.codec_context.channels) == ('aac', AUDIO_RATE, 2)
        # The sound lasts the video's 0.2 s, to within one AAC frame (1024 samples).
        assert abs(float(audio.duration * audio.time_base) - 0.2) <= 1024 / AUDIO_RATE


def test_opencv_decodes_every_frame_close_to_the_rendered_one(small_clip):
    frames = decode_frames(small_clip.path, expected=6)
    rendered = list(render_frames(small_clip.spec))
    assert all(f.shape == (90, 160, 3) for f in frames)
    for got, want in zip(frames, rendered):
        mse = np.mean((got.astype(np.float64) - want) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 30  # PSNR in dB: a phone's quality, not a lossy mess
    # A pan moves the picture: the last frame is not the first.
    assert np.abs(rendered[0].astype(int) - rendered[-1]).mean() > 10


def test_a_clip_is_made_once_and_then_reused(small_clip):
    before = small_clip.path.stat().st_mtime_ns
    again = make_clip(small_clip.path.parent, **SMALL)
    assert again.path == small_clip.path and again.path.stat().st_mtime_ns == before
    assert not [p for p in small_clip.path.parent.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_the_same_spec_gives_the_same_bytes(small_clip, tmp_path):
    assert make_clip(tmp_path, **SMALL).path.read_bytes() == small_clip.path.read_bytes()


def test_every_setting_is_in_the_file_name():
    base = ClipSpec()
    changed = [ClipSpec(photo='test'), ClipSpec(size=(1280, 720)), ClipSpec(frames=30), ClipSpec(fps=25),
               ClipSpec(motion='zoom'), ClipSpec(audio=False), ClipSpec(pan_overscan=1.5)]
    names = {base.file_name()} | {c.file_name() for c in changed}
    assert len(names) == 1 + len(changed)
    assert base.file_name().endswith(f'_v{clips.CLIP_VERSION}.mp4')


@pytest.mark.parametrize('changes, match', [
    (dict(size=(161, 90)), 'even'),
    (dict(frames=1), 'at least 2 frames'),
    (dict(motion='tilt'), 'unknown motion'),
    (dict(pan_overscan=1.0), 'pan_overscan must be > 1'),
])
def test_bad_specs_are_refused(changes, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        make_clip(tmp_path, **changes)
    assert not list(tmp_path.iterdir())


# A synthetic photo: a white 20x20 square on black at photo pixels [40, 60) x [20, 40).
SQUARE = np.array([[40.0, 20.0, 60.0, 40.0]])


def _synthetic_photo(_name):
    img = np.zeros((60, 100, 3), np.uint8)
    img[20:40, 40:60] = 255
    return img


@pytest.mark.parametrize('motion', clips.MOTIONS)
def test_each_frame_shows_the_photo_where_to_frame_says(monkeypatch, motion):
    """The white square's centroid and area in every rendered frame are the square's box
    mapped by the clip's camera path: a half-pixel slip in the map would move it by 0.3 px."""
    monkeypatch.setattr(clips, '_read_photo', _synthetic_photo)
    spec = ClipSpec(size=(160, 96), frames=5, motion=motion)
    scales, offsets = clips.camera_path(spec, (100, 60))
    clip = clips.Clip(spec, None, scales, offsets, (100, 60))
    reference = SQUARE * scales[0]  # the square in the reference image (the photo at frame 0's scale)
    ref_img = clip.reference_image()
    assert ref_img.shape[:2] == (round(60 * scales[0]), round(100 * scales[0]))
    for k, frame in enumerate(render_frames(spec)):
        x1, y1, x2, y2 = clip.to_frame(k, reference)[0]
        assert clip.inside(k, reference)[0]
        weight = frame[:, :, 0].astype(np.float64) / 255  # [H, W]
        ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]] + 0.5  # pixel centres
        centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        np.testing.assert_allclose(centroid, [(x1 + x2) / 2, (y1 + y2) / 2], atol=0.05)
        np.testing.assert_allclose(weight.sum(), (x2 - x1) * (y2 - y1), rtol=0.02)
    if motion == 'pan':  # whole pixels, from the photo's left edge to its right edge
        assert offsets[0, 0] == 0 and offsets[-1, 0] == round(100 * scales[0]) - 160
        assert np.all(offsets == np.round(offsets))
    else:  # the scale grows by one factor a frame, ZOOM_FACTOR over the clip
        np.testing.assert_allclose(scales[-1] / scales[0], clips.ZOOM_FACTOR)
        np.testing.assert_allclose(np.diff(np.log(scales)), np.log(clips.ZOOM_FACTOR) / 4)
