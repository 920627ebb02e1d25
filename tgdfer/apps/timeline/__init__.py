"""An emotion timeline for long videos: one row per sliding window of a few seconds, one face followed.

``tgdfer predict`` gives one label for a whole input, meaningless on a 20-minute interview. ``timeline`` cuts the
video into windows in seconds (``window`` long, one every ``stride``) and gives each window the run's
probabilities, as if the window were one of its training clips:

- **Sampling** (``windows``): a window's T frames are the segment centres of the frames inside it
  (``sampling.centre_indices``, the test view of stage 1), preprocessed as stage 1 did (face crop,
  ``preprocess.clip_view``) and encoded with the run's own CLIP (``predict.image_encoder``), then
  ``inference.predict_features``. On a CPU with AMX the image tower runs in bf16 by default (``precision``,
  ``encoder.encoder_precision``): 2-4x faster, within a measured tolerance of fp32; ``precision="fp32"`` reproduces
  predict exactly. The CLIP text tower is freed once the prompts are computed (``encoder.PromptsOnce``).
- **Time**: every frame's time is its presentation timestamp (``tgdfer.data.video.VideoStream``: PyAV's
  ``pts * time_base``, OpenCV's ``CAP_PROP_POS_MSEC`` when PyAV is missing), relative to the first frame; frame
  number / fps is never used, as it is wrong on variable-frame-rate video. A window holds the frames whose time t
  has start <= t < end.
- **Every frame once** (``run.VideoRun``): the timestamps come first from a demux pass (packets only, nothing
  decoded); the sampled frames of all windows follow from them. One decoding pass then converts and encodes only
  the sampled frames, each once, in batches; overlapping windows share their frames' features. Memory stays
  bounded: features are freed when the last window using them is done, and rows go to the CSV (flushed) as
  windows complete.
- **One face** (``follow.FollowedFace``): ``tgdfer.data.faces.FaceTracker`` (BlazeFace, or OpenCV's Haar cascade
  where BlazeFace cannot load) looks at every ``detect_every``-th sampled frame and the box is held between; it
  follows the largest face, or the ``face``-th by size, searching near where it was, and chooses again by size
  when the face stays lost.
- **No face**: a window whose share of face frames (``face_frac``) is below ``min_face`` keeps its row with status
  ``no_face`` and empty probabilities (OpenFace's ``success=0`` convention), so rows always match time. Face-less
  frames of a window that passes borrow the nearest face frame's features in that window. A window without any
  frame (a gap in a variable-frame-rate stream) has status ``no_frames``.

Outputs per video (``out``, ``outputs``): ``<stem>.timeline.csv`` (rows), ``<stem>.timeline.json`` (header: run,
classes, window, stride, fps, versions, the settings hash that ``resume`` checks, and the summary),
``<stem>.timeline.png`` and with ``save_features`` ``<stem>.features.npz`` (``saved``: per-frame features, frame
numbers, face boxes, timestamps), which ``SavedFeatures`` reads back in place of the video: re-windowing or
smoothing without decoding.
"""

from tgdfer.apps.timeline.encoder import PromptsOnce, encoder_precision, timeline_run
from tgdfer.apps.timeline.follow import FollowedFace
from tgdfer.apps.timeline.outputs import FIXED_COLUMNS, columns, format_summary, read_rows, summarize
from tgdfer.apps.timeline.run import VideoRun
from tgdfer.apps.timeline.saved import SAVED_SUFFIX, SavedFeatures
from tgdfer.apps.timeline.videos import timeline
from tgdfer.apps.timeline.windows import DEFAULT_WINDOW_S, WindowPlan, parse_span, plan_windows, smooth, span_seconds

__all__ = [
    "DEFAULT_WINDOW_S",
    "FIXED_COLUMNS",
    "SAVED_SUFFIX",
    "FollowedFace",
    "PromptsOnce",
    "SavedFeatures",
    "VideoRun",
    "WindowPlan",
    "columns",
    "encoder_precision",
    "format_summary",
    "parse_span",
    "plan_windows",
    "read_rows",
    "smooth",
    "span_seconds",
    "summarize",
    "timeline",
    "timeline_run",
]
