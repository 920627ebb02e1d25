"""Frame folders sort numerically; videos decode; bad clips raise ClipError with a reason."""

import numpy as np
import pytest

from tgdfer.data.video import ClipError, VideoStream, list_frames, open_clip_source, read_sampled
from tgdfer.testing.synthetic import make_clip, write_frame_folder, write_video, write_video_pts


def test_frames_sort_numerically_and_other_files_are_ignored(tmp_path):
    for name in ["10.jpg", "2.jpg", "1.jpg", "notes.txt", "frame_003.png"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_frames(tmp_path)] == ["1.jpg", "2.jpg", "frame_003.png", "10.jpg"]


def test_video_file_decodes_the_planned_frames(tmp_path):
    frames, _ = make_clip("happiness", 30, 64, np.random.default_rng(0))
    path = write_video(tmp_path / "a.mp4", frames)
    n, decoded, _indices = read_sampled(path, lambda n: [np.array([0, n - 1])])
    assert n == 30 and set(decoded) == {0, 29} and decoded[0].shape == (64, 64, 3)
    assert np.abs(decoded[29].astype(int) - frames[29].astype(int)).mean() < 12  # lossy codec, same picture


@pytest.mark.parametrize("damage", ["missing", "empty_folder", "garbage_video", "truncated_video", "bad_frame"])
def test_bad_clips_raise_with_a_reason(tmp_path, damage):
    frames, _ = make_clip("sadness", 40, 64, np.random.default_rng(1))
    if damage == "missing":
        path = tmp_path / "nope"
    elif damage == "empty_folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif damage == "garbage_video":
        path = tmp_path / "g.mp4"
        path.write_bytes(b"\x00" * 4000)
    elif damage == "truncated_video":
        full = write_video(tmp_path / "full.avi", frames)
        path = tmp_path / "cut.avi"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    else:
        path = write_frame_folder(tmp_path / "clip", frames[:5])
        (path / "3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClipError) as err:
        read_sampled(path, lambda n: [np.arange(n)])
    assert str(path) in str(err.value) or damage == "truncated_video"


def test_open_clip_source_picks_folder_or_video(tmp_path):
    frames, _ = make_clip("fear", 8, 32, np.random.default_rng(2))
    assert open_clip_source(write_frame_folder(tmp_path / "f", frames)).num_frames == 8
    assert open_clip_source(write_video(tmp_path / "v.mp4", frames)).num_frames == 8


def _vfr_video(path, n: int = 40):
    """A variable-frame-rate video written with PyAV (gaps of 20 to 200 ms) and its frames as PyAV decodes them."""
    import av

    rng = np.random.default_rng(4)
    frames, _ = make_clip("happiness", n, 64, rng)
    pts = np.cumsum(np.r_[0, rng.integers(20, 201, n - 1)])  # ms
    write_video_pts(path, frames, pts)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return pts, decoded


def test_variable_frame_rate_video_gives_every_frame_with_its_time(tmp_path):
    pts, decoded = _vfr_video(tmp_path / "vfr.mkv")
    stream = VideoStream(tmp_path / "vfr.mkv")
    assert stream.variable_rate and np.allclose(stream.times * 1000, pts)
    source = open_clip_source(tmp_path / "vfr.mkv")
    assert source.num_frames == len(pts) == 40  # every frame, not duration x a mean frame rate
    frames = source.read([0, 17, 39])
    for i in (0, 17, 39):
        assert np.array_equal(frames[i], decoded[i])
