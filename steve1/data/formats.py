"""The on-disk formats, declared once: dataset names, attribute names, schema versions, codecs.

Every reader and writer in the project takes its names from here; no other module spells an
HDF5 dataset or attribute name as a string literal.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Iterator, Optional, get_args

import numpy as np


def available_cores() -> int:
    """Cores this process may really use: its CPU affinity, capped by a cgroup CPU quota if set.

    ``os.cpu_count()`` counts the host's CPUs, which overstates a container's share.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


# Blosc decompresses with this many threads (c-blosc reads BLOSC_NTHREADS at every call): 2
# threads took the loader's best batch from ~53k to ~75k frames/s on 2 cores
# (benchmarks/results/dataloader_*). An explicit BLOSC_NTHREADS in the environment wins; the
# training loader sets it per process to its share of the cores (steve1.data.dataset). Writers
# compress single-threaded (:func:`deterministic_compression`): threaded Blosc compression is
# not byte-reproducible.
os.environ.setdefault("BLOSC_NTHREADS", str(min(4, available_cores())))

import hdf5plugin  # noqa: E402  registers the Blosc filters with h5py: every reader of a blosc file needs it
import simplejpeg  # noqa: E402  libjpeg-turbo; releases the GIL, so threads decode in parallel

from steve1.names import FrameCodec  # noqa: E402

# ---------------------------------------------------------------- raw recordings: data/raw/<id>.{mp4,jsonl}
RAW_FORMAT_VERSION = 1                  # of data/raw/manifest.json
RAW_VIDEO_SUFFIX = ".mp4"
RAW_ACTIONS_SUFFIX = ".jsonl"

# ---------------------------------------------------------------- episodes: data/episodes/<id>.h5
# Version 2 records the frame codec (attribute ``frame_codec``) and adds the per-frame encoded
# layout (FRAME_BYTES + FRAME_OFFSETS, codec "jpeg"); a lossless codec keeps version 1's FRAMES
# dataset, so version 1 files read unchanged (their codec is an HDF5 filter on FRAMES).
EPISODE_FORMAT_VERSION = 2
READABLE_EPISODE_VERSIONS = (1, 2)
EPISODE_SUFFIX = ".h5"
FRAME_SHAPE = (128, 128, 3)  # H, W, C (RGB uint8)

FRAMES = "frames"                       # uint8 [N,128,128,3], HDF5-filtered (lossless codecs)
FRAME_BYTES = "frame_bytes"             # uint8 [total]: the encoded frames one after another (per-frame codecs)
FRAME_OFFSETS = "frame_offsets"         # int64 [N+1]: frame i is FRAME_BYTES[offsets[i]:offsets[i+1]]
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
A_FRAME_CODEC = "frame_codec"           # a FrameCodec name (version >= 2; version 1 files: an HDF5 filter on FRAMES)
A_FRAME_QUALITY = "frame_quality"       # JPEG quality of a "jpeg" file
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

# Embeddings reused from a dataset (a STEVE-1 EpisodeStorage set, custom.<name>.embeddings) record
# weights "dataset:<W>", W the MineCLIP the user declares made them (custom.<name>.dataset_mineclip),
# or "dataset:unverified@custom.<name>" when none is declared. The mixing rule: goals of two sets
# live in one space only if one MineCLIP made them, so a sampling mixes sets only when their
# mineclip_space is the same; an undeclared dataset is a space of its own and mixes with nothing.
DATASET_WEIGHTS_PREFIX = "dataset:"
UNVERIFIED_SPACE = "unverified@"
STEVE1_RECORDER = "import:steve1"       # recorder_version of an episode imported from a STEVE-1 dataset
STEVE1_EMBED_DIM = 512                  # its embeddings' width (STEVE-1's MineCLIP, attn.pth)
DATASET_EMBEDS_SUFFIX = ".embeds.npy"   # <set>/raw/<id>.embeds.npy: the dataset's vectors, float32 [N,512],
                                        # zero rows before NONE_EMBED_OFFSET (import-set writes, embed-set reads)


def mineclip_space(weights_id: str) -> str:
    """The MineCLIP whose space an embeds file's ``weights`` puts its vectors in (the mixing rule above)."""
    if weights_id.startswith(DATASET_WEIGHTS_PREFIX):
        return weights_id[len(DATASET_WEIGHTS_PREFIX):]
    return weights_id


# ---------------------------------------------------------------- samplings: data/samplings/<name>.json
SAMPLING_FORMAT_VERSION = 1

# ---------------------------------------------------------------- frame codecs (params: decode.frame_codec)
CODECS: tuple[str, ...] = get_args(FrameCodec)   # the names params accept; their filters below
PER_FRAME_CODECS = ("jpeg",)            # stored as FRAME_BYTES + FRAME_OFFSETS, lossy
LOSSLESS_CODECS = tuple(c for c in CODECS if c not in PER_FRAME_CODECS)  # an HDF5 filter on FRAMES
JPEG_SUBSAMPLING = "420"                # chroma 4:2:0, as STEVE-1's mp4v frames


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
    """h5py ``create_dataset`` keyword arguments for a lossless frame codec name."""
    if codec in PER_FRAME_CODECS:
        raise ValueError(f"{codec!r} stores frames one by one ({FRAME_BYTES}), not as an HDF5 filter")
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


# ---------------------------------------------------------------- per-frame encoders (codec "jpeg")

def encode_frames(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG-encode RGB frames [N,H,W,3]: ``(bytes uint8 [total], offsets int64 [N+1])``.

    One libjpeg-turbo call per frame on the calling thread: the same frames, quality and
    simplejpeg version give the same bytes.
    """
    parts = [simplejpeg.encode_jpeg(np.ascontiguousarray(f), quality=quality, colorspace="RGB",
                                    colorsubsampling=JPEG_SUBSAMPLING) for f in frames]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return np.frombuffer(b"".join(parts), np.uint8), offsets


def decode_frames_into(data: np.ndarray, offsets: np.ndarray, out: np.ndarray, codec: str = "jpeg") -> None:
    """Decode encoded frames into ``out`` [n,H,W,3]; ``offsets`` [n+1] index into ``data``.

    The loop is the loader's only per-frame Python: offsets become Python ints once and each
    frame is a memoryview slice (a numpy slice and two numpy-scalar conversions cost ~2x more).
    """
    if codec != "jpeg":
        raise ValueError(f"{codec!r} is not a per-frame codec; expected one of {', '.join(PER_FRAME_CODECS)}")
    bounds = (np.asarray(offsets, np.int64) - int(offsets[0])).tolist()
    view, shape, decode = memoryview(np.ascontiguousarray(data)).cast("B"), out.shape[1:], simplejpeg.decode_jpeg
    for i in range(len(out)):
        img = decode(view[bounds[i]:bounds[i + 1]], colorspace="RGB", buffer=out[i])
        if img.shape != shape:
            raise ValueError(f"frame {i} decodes to {list(img.shape)}, expected {list(shape)}")


def codec_library(codec: str) -> Optional[str]:
    """The library whose version shapes a codec's bytes (recorded with the conversion settings)."""
    return f"simplejpeg=={simplejpeg.__version__}" if codec == "jpeg" else None
