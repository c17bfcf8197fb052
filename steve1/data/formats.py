"""The on-disk formats, declared once: dataset names, attribute names, schema versions, codecs.

Every reader and writer in the project takes its names from here; no other module spells an
HDF5 dataset or attribute name as a string literal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, get_args

# Blosc decompresses with this many threads (c-blosc reads BLOSC_NTHREADS at every call): 2
# threads took the loader's best batch from ~53k to ~75k frames/s on 2 cores
# (benchmarks/results/dataloader_*). An explicit BLOSC_NTHREADS in the environment wins. Writers
# compress single-threaded (:func:`deterministic_compression`): threaded Blosc compression is
# not byte-reproducible.
os.environ.setdefault("BLOSC_NTHREADS", str(min(4, os.cpu_count() or 1)))

import hdf5plugin  # noqa: E402  registers the Blosc filters with h5py: every reader of a blosc file needs it

from steve1.params import FrameCodec  # noqa: E402

# ---------------------------------------------------------------- raw recordings: data/raw/<id>.{mp4,jsonl}
RAW_FORMAT_VERSION = 1                  # of data/raw/manifest.json
RAW_VIDEO_SUFFIX = ".mp4"
RAW_ACTIONS_SUFFIX = ".jsonl"
PART_SUFFIX = ".part"                   # a resumable partial download: <id>.mp4.part

# ---------------------------------------------------------------- episodes: data/episodes/<id>.h5
EPISODE_FORMAT_VERSION = 1
EPISODE_SUFFIX = ".h5"
FRAME_SHAPE = (128, 128, 3)  # H, W, C (RGB uint8)

FRAMES = "frames"                       # uint8 [N,128,128,3]
BUTTONS = "actions/buttons"             # int16 [N] in [0, 8641)
CAMERA = "actions/camera"               # int16 [N] in [0, 121)
ENV_ACTIONS = "env_actions"             # group: one column per MineRL action key
ENV_CAMERA = "env_actions/camera"       # float32 [N,2] degrees (pitch, yaw)
SOURCE_STEP = "source_step"             # int32 [N]: jsonl line / video frame of each kept step
GUI_OPEN = "gui/open"                   # bool [N]: GUI open at that step (cursor drawn)
GUI_CURSOR = "gui/cursor_xy"            # float32 [N,2]: mouse x, y in the recorder's 1280x720 space

# attributes of an episode file
A_FORMAT_VERSION = "format_version"
A_EPISODE_ID = "episode_id"
A_SOURCE_URL = "source_url"
A_RECORDER_VERSION = "recorder_version"
A_N_FRAMES = "n_frames"
A_FPS = "fps"
A_VIDEO_SHA256 = "video_sha256"
A_JSONL_SHA256 = "jsonl_sha256"
A_CONVERSION = "conversion_json"        # JSON of the settings that shaped the episode
A_DECODE_COUNTS = "decode_counts_json"  # JSON: n_lines, n_frames_video, n_kept, n_null, ... (decode stage)
DECODE_MANIFEST_VERSION = 1

# ---------------------------------------------------------------- embeds: data/embeds/<id>.h5
EMBED_FORMAT_VERSION = 1
EMBEDS = "mineclip"                     # float16/float32 [N,D]
EMBED_VALID = "valid"                   # bool [N]: False for t < WINDOW-1
WINDOW = 16                             # frames per MineCLIP window, ending at t
NONE_EMBED_OFFSET = WINDOW - 1          # first valid row (STEVE-1: 15)
A_WEIGHTS = "weights"                   # which MineCLIP made them: "random-tiny:seed=0" or "attn.pth:md5=..."
A_EMBED_DIM = "embed_dim"
A_SOURCE_ID = "source_id"               # digest of the episode's sources + conversion: a changed episode is re-embedded

# ---------------------------------------------------------------- samplings: data/samplings/<name>.json
SAMPLING_FORMAT_VERSION = 1

# ---------------------------------------------------------------- frame codecs (params: decode.frame_codec)
CODECS: tuple[str, ...] = get_args(FrameCodec)   # the names params accept; their filters below


@contextlib.contextmanager
def deterministic_compression() -> Iterator[None]:
    """Compress with one Blosc thread inside the block, so the same frames give the same bytes."""
    before = os.environ.get("BLOSC_NTHREADS")
    os.environ["BLOSC_NTHREADS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BLOSC_NTHREADS", None)
        else:
            os.environ["BLOSC_NTHREADS"] = before


def codec_kwargs(codec: str, level: int = 1) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a frame codec name."""
    if codec == "none":
        return {}
    if codec == "lzf":
        return {"compression": "lzf"}
    if codec == "gzip":
        return {"compression": "gzip", "compression_opts": level}
    if codec in ("blosc-lz4", "blosc-zstd"):
        cname = codec.split("-", 1)[1]
        return dict(hdf5plugin.Blosc(cname=cname, clevel=level, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown frame codec {codec!r}; expected one of {', '.join(CODECS)}")
