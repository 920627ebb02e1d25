"""Frame folders sort numerically; videos decode; bad clips raise ClipError with a reason."""

import numpy as np
import pytest

from tgdfer.data.video import ClipError, list_frames, open_clip_source, read_sampled
from tgdfer.testing.synthetic import make_clip, write_frame_folder, write_video


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
