"""utils.audio: the input's sound put into the video written from its frames, on tiny clips with a
sine tone that PyAV itself writes: copied packet for packet where the container takes the codec,
re-encoded to AAC where it does not, as long as the written video, atomically, and an input
without sound leaves the video as it is with a warning."""
import logging

import av
import cv2
import numpy as np
import pytest

import utils.audio as audio
from bench.clips import TONE_AMPLITUDE, TONE_HZ, AudioTrack, tone
from utils.atomic import TEMP_SUFFIX
from utils.audio import audio_stream_count, copy_audio
from utils.errors import InputError, InputNotFoundError

RATE = 48000
FPS = 10
FRAMES = 15  # 1.5 s
SIZE = (64, 48)
AAC_FRAME = 1024 / RATE  # a copied AAC stream ends within one of its frames of the cut


def make_source(path, codec=None, frames=FRAMES):
    """A video file of frames grey frames at FPS (MPEG-4) with a sine tone of codec (None: no
    sound) as long as the video; returns the frames as BGR arrays."""
    images = [np.full((SIZE[1], SIZE[0], 3), 10 * i, np.uint8) for i in range(frames)]
    with av.open(str(path), 'w') as out:
        video = out.add_stream('mpeg4', rate=FPS)
        video.width, video.height = SIZE
        video.pix_fmt = 'yuv420p'
        track = AudioTrack(out, codec=codec, rate=RATE) if codec else None
        sound = tone(frames / FPS, RATE)
        for i, img in enumerate(images):
            vf = av.VideoFrame.from_ndarray(img, format='bgr24')
            vf.pts = i
            out.mux(video.encode(vf))
            if track:
                track.write(sound[:, i * RATE // FPS:(i + 1) * RATE // FPS])
        out.mux(video.encode(None))
        if track:
            track.close()
    return images


def write_frames(path, images):
    """The frames written as detect.py writes its video: OpenCV, MPEG-4 Part 2 ('mp4v')."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), FPS, SIZE)
    for img in images:
        writer.write(img)
    writer.release()


def audio_of(path):
    """(codec name, stream duration in seconds, decoded samples [C, N] float32) of path's one audio stream."""
    with av.open(str(path)) as f:
        stream, = f.streams.audio
        name, seconds = stream.codec_context.name, float(stream.duration * stream.time_base)
        samples = np.concatenate([fr.to_ndarray() for fr in f.decode(stream)], axis=1)
    return name, seconds, samples


def packets_of(path, kind):
    with av.open(str(path)) as f:
        return [bytes(p) for p in f.demux(getattr(f.streams, kind)[0]) if p.dts is not None]


def assert_is_the_tone(samples):
    """The decoded sound is the sine tone: its strongest frequency TONE_HZ, its RMS the tone's."""
    mono = samples[0].astype(np.float64)
    peak = np.argmax(np.abs(np.fft.rfft(mono))) * RATE / len(mono)
    assert abs(peak - TONE_HZ) < 2
    assert abs(mono.std() - TONE_AMPLITUDE / np.sqrt(2)) < 0.01


@pytest.fixture
def written(tmp_path):
    """(source path, written video path) for a source with codec, its frames written by OpenCV."""
    def make(codec, ext='mp4', frames_written=FRAMES):
        source = tmp_path / f'source.{ext}'
        images = make_source(source, codec)
        video = tmp_path / 'out' / 'clip.mp4'
        video.parent.mkdir()
        write_frames(video, images[:frames_written])
        return source, video
    return make


def test_aac_is_copied_packet_for_packet_for_the_input_duration(written):
    source, video = written('aac')
    frames_before = packets_of(video, 'video')
    result = copy_audio(source, video)
    assert result.streams == ['aac copied'] and result.seconds == FRAMES / FPS
    name, seconds, samples = audio_of(video)
    assert name == 'aac' and abs(seconds - FRAMES / FPS) <= AAC_FRAME
    assert packets_of(video, 'audio') == packets_of(source, 'audio')  # copied, not re-encoded
    assert packets_of(video, 'video') == frames_before  # the picture as written
    assert_is_the_tone(samples)
    assert not [p for p in video.parent.iterdir() if p.name != 'clip.mp4']  # no temporary left


@pytest.mark.parametrize('codec', ['pcm_s16le', 'pcm_mulaw'])
def test_pcm_into_mp4_is_reencoded_to_aac(written, codec):
    # FFmpeg refuses mu-law in .mp4 and would store 16-bit PCM as ISO PCM, which players do not play.
    source, video = written(codec, ext='mov')
    assert copy_audio(source, video).streams == [f'{codec} re-encoded to aac']
    name, seconds, samples = audio_of(video)
    assert name == 'aac' and abs(seconds - FRAMES / FPS) <= AAC_FRAME
    assert_is_the_tone(samples)


def test_a_stream_the_muxer_refuses_while_writing_is_reencoded(written, monkeypatch):
    # The header check passes, the muxer refuses the stream later: written again, re-encoded.
    source, video = written('pcm_mulaw', ext='mov')
    monkeypatch.setattr(audio, 'container_takes', lambda *_: True)
    assert copy_audio(source, video).streams == ['pcm_mulaw re-encoded to aac']
    name, seconds, samples = audio_of(video)
    assert name == 'aac' and abs(seconds - FRAMES / FPS) <= AAC_FRAME
    assert_is_the_tone(samples)


def test_the_sound_of_a_run_cut_short_ends_with_its_frames(written):
    source, video = written('aac', frames_written=5)  # Ctrl-C after 5 of 15 frames: 0.5 s
    assert copy_audio(source, video).seconds == 0.5
    _, seconds, _ = audio_of(video)
    assert 0.5 <= seconds <= 0.5 + AAC_FRAME


def test_a_reencoded_stream_is_cut_to_the_sample(written):
    source, video = written('pcm_s16le', ext='mov', frames_written=5)
    copy_audio(source, video)
    _, seconds, _ = audio_of(video)
    assert seconds == pytest.approx(0.5, abs=1 / RATE)


def test_an_input_without_sound_warns_and_keeps_the_video(written, caplog):
    source, video = written(None)
    before = video.read_bytes()
    with caplog.at_level(logging.WARNING, logger='utils.audio'):
        assert audio_stream_count(source) == 0
        result = copy_audio(source, video)
    assert result.streams == [] and video.read_bytes() == before
    assert 'has no audio stream' in caplog.text and str(source) in caplog.text


def test_audio_stream_count_checks_the_input_before_the_work(written, tmp_path):
    source, _ = written('aac')
    assert audio_stream_count(source) == 1
    with pytest.raises(InputNotFoundError, match='video not found'):
        audio_stream_count(tmp_path / 'missing.mp4')
    text = tmp_path / 'notes.mp4'
    text.write_text('not a video')
    with pytest.raises(InputError, match=f'cannot read video {text}'):
        audio_stream_count(text)


def test_an_interrupted_copy_leaves_the_video_as_it_was(written, monkeypatch):
    source, video = written('aac')
    before = video.read_bytes()
    real = audio._timed

    def interrupted(packets, order):
        for i, item in enumerate(real(packets, order)):
            if i == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(audio, '_timed', interrupted)
    with pytest.raises(KeyboardInterrupt):
        copy_audio(source, video)
    assert video.read_bytes() == before
    assert not [p for p in video.parent.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_a_written_file_that_is_not_a_video_is_a_clear_error(written):
    source, video = written('aac')
    video.write_bytes(b'garbage')
    with pytest.raises(InputError, match='cannot read written video'):
        copy_audio(source, video)
    assert video.read_bytes() == b'garbage'
    assert [p.name for p in video.parent.iterdir()] == ['clip.mp4']


def test_the_audio_module_imports_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, utils.audio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, '-c', code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'
