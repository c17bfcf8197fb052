"""Typed schema of ``params.yaml``: one load-and-validate entry point for every stage.

Every stage calls :func:`load_params` before doing any work. Unknown keys, wrong types and
out-of-range values raise :class:`ParamsError`, whose message names the key, the value and
what was expected. Each section is a model of its own; stages read only their section.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_serializer,
                      model_validator)

from steve1.errors import UserError
from steve1.names import GENERATED_SET, FrameCodec


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or does not match the schema."""


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return any(_accepts_bool(a) for a in get_args(annotation) if a is not type(None))


# A name that becomes a file or folder name (a run, a sampling, a rollout, a custom set): letters,
# digits, '_', '-' and '.', never first, so never '.', '..', a hidden file or a path separator.
NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
NAME_RULE = "a name that becomes a file or folder: letters, digits, '_', '-', '.', not starting with '.' (no '/', '.' or '..')"


def _check_name(value: str) -> str:
    if not re.match(NAME, value):
        raise ValueError(f"expected {NAME_RULE}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def _booleans_in(value: Any) -> bool:
    """Whether a list (or nested list) holds a YAML boolean."""
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) or _booleans_in(v) for v in value)


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are validated on assignment, and a
    float must be finite (``.nan``/``.inf`` are refused wherever a number is meant)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        """YAML's true/false are not numbers: pydantic would read ``learning_rate: true`` as 1.0, and
        ``spin_degrees: [true, 360]`` as [1, 360]."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is None or _accepts_bool(field.annotation):
                    continue
                ann = field.annotation
                expected = ann.__name__ if isinstance(ann, type) and not get_args(ann) else str(ann).replace("typing.", "")
                if isinstance(value, bool):
                    raise ValueError(f"key '{name}' is {str(value).lower()} (a boolean); expected {expected}")
                if _booleans_in(value):
                    raise ValueError(f"key '{name}' is {value!r}, which holds a boolean; expected {expected}")
        return data


class Paths(Section):
    """Where each stage reads and writes; relative to the repository root."""

    source: str = Field("data/source", description="embedded default recordings + their index")
    raw: str = Field("data/raw", description="downloaded mp4 + jsonl pairs and the download manifest")
    episodes: str = Field("data/episodes", description="decoded HDF5 episodes, one per recording")
    embeds: str = Field("data/embeds", description="MineCLIP embeddings, one HDF5 per episode")
    samplings: str = Field("data/samplings", description="train/val splits and chunk indices")
    models: str = Field("models", description="trained weights and checkpoints")
    eval: str = Field("eval", description="evaluation metrics, plots and videos")
    generated: str = Field("data/generated", description="VPT-agent episodes of the generate stage: episodes/, raw/ (companion videos), embeds/")
    reports: str = Field("reports", description="data reports")
    custom: str = Field("data/custom", description="your own recording sets (custom.<name>), one folder each: episodes/, raw/, embeds/")


class SourceParams(Section):
    """The embedded default: contractor-format recordings made offline, plus the shipped real pair."""

    n_synthetic: int = Field(2, ge=0, le=1000, description="synthetic contractor recordings to generate")
    synthetic_steps: int = Field(300, ge=20, le=100_000, description="jsonl lines (= video frames) per synthetic recording")
    include_real: bool = Field(True, description="add the real recording shipped in assets/recordings")
    seed: int = Field(0, ge=0, description="seed of the synthetic generator")


class DownloadParams(Section):
    """Fetch recordings listed in a VPT index JSON (``basedir`` + ``relpaths``)."""

    index: str | list[str] = Field("data/source/index.json", description="index JSON (local path, file:// or http(s):// URL), or a list of them read in order")
    versions: list[str] = Field(default_factory=list, description="keep only these recorder versions, e.g. ['6.13']; empty keeps all")
    select: Literal["first", "sample", "list"] = Field("first", description="which episodes: the first N, a seeded sample of N, or an explicit list")
    n_episodes: Optional[int] = Field(None, ge=1, description="how many episodes for 'first'/'sample'; null = all")
    episodes: list[str] = Field(default_factory=list, description="episode ids for select: list")
    seed: int = Field(0, ge=0, description="seed for select: sample")
    concurrency: int = Field(4, ge=1, le=64, json_schema_extra={"speed_only": True}, description="files fetched at once (speed only: the same bytes, reruns nothing)")
    retries: int = Field(5, ge=0, le=100, description="retries per file on connection errors, 5xx and short bodies")
    backoff_s: float = Field(0.5, ge=0.0, le=600.0, description="first retry delay; doubles each retry")
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="socket timeout per request")
    max_failed_fraction: float = Field(0.1, ge=0.0, le=1.0, description="stage fails when more than this share of episodes fail")

    @model_validator(mode="after")
    def _list_needs_episodes(self) -> "DownloadParams":
        if self.select == "list" and not self.episodes:
            raise ValueError("select is 'list' but 'episodes' is empty: name the episode ids to fetch")
        return self


class DecodeParams(Section):
    """Convert mp4 + jsonl to HDF5 episodes."""

    camera_int_truncation: bool = Field(False, description="reproduce the official int64 camera truncation bit-for-bit (a known bug)")
    frame_codec: FrameCodec = Field("jpeg", description="how frames are stored: jpeg (lossy, ~2 KB/frame) or a lossless HDF5 filter")
    codec_level: int = Field(1, ge=0, le=9, description="compression level for gzip/blosc codecs")
    frame_quality: int = Field(85, ge=1, le=100, description="JPEG quality of the jpeg codec (4:2:0); lossless codecs ignore it")
    chunk_frames: int = Field(64, ge=1, le=4096, description="frames per HDF5 chunk")
    workers: int = Field(1, ge=1, le=256, json_schema_extra={"speed_only": True}, description="episodes decoded in parallel processes (speed only: the same bytes, reruns nothing)")
    min_kept_steps: int = Field(1, ge=1, description="episodes with fewer kept steps are skipped with a reason")
    max_frame_mismatch: int = Field(64, ge=0, description="skip an episode whose video frame count and jsonl line count differ by more")
    cursor_png: Optional[str] = Field(None, description="official mouse_cursor_white_16x16.png for bit-exact GUI frames; null draws our own arrow")
    video_threads: int = Field(1, ge=0, le=64, json_schema_extra={"speed_only": True}, description="FFmpeg threads per video (0 = FFmpeg's choice); scale with workers instead (speed only: the same bytes, reruns nothing)")


class EmbedParams(Section):
    """MineCLIP goal embeddings of every 16-frame window."""

    weights: Optional[str] = Field(None, description="path to the official attn.pth; null uses a seeded tiny random MineCLIP")
    preset: Literal["tiny", "full"] = Field("tiny", description="architecture when weights is null; tiny keeps the STEVE-1 shapes (160x256 frames in, 512-d out)")
    seed: int = Field(0, ge=0, description="seed of the random tiny MineCLIP")
    batch_size: int = Field(64, ge=1, le=65536, description="frames per vision-tower batch")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to run")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="autocast dtype on GPU (CPU always float32)")
    store_dtype: Literal["float16", "float32"] = Field("float32", description="dtype of the stored embeddings")


class WeightsParams(Section):
    """Official checkpoint files fetched and verified by the weights stage (paper/fine-tune profiles)."""

    dir: str = Field("data/weights", description="where official files live (train/embed/prior params point into it)")
    files: list[str] = Field(default_factory=list, description="official files to fetch/verify, e.g. ['2x.model', 'rl-from-foundation-2x.weights', 'attn.pth']; empty = none (embedded default)")
    retries: int = Field(5, ge=0, le=100, description="retries per file on connection errors")
    timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description="socket timeout per request")



class RayResources(Section):
    """What one per-episode Ray task (or one MineCLIP actor) reserves on the cluster."""

    num_cpus: float = Field(1.0, gt=0.0, le=1024.0, description="CPUs reserved per task or actor")
    num_gpus: float = Field(0.0, ge=0.0, le=64.0, description="GPUs per task or actor (fractions share a GPU); taken only where the cluster has GPUs")
    workers: Optional[int] = Field(None, ge=1, le=1_000_000, description="tasks at once, or actors (embed, generate, rollout); null = as many as the cluster's CPUs and GPUs hold")


class RayParams(Section):
    """How ``engine: ray`` spreads per-episode work over a Ray cluster. Where work runs, never what it
    writes: no stage lists these keys (or ``engine``) as params, so changing them reruns nothing."""

    max_retries: int = Field(3, ge=0, le=100, description="times an episode is retried elsewhere after its worker died (crash, out of memory, lost node) before it is recorded as failed")
    download: RayResources = Field(default_factory=lambda: RayResources(num_cpus=0.25), description="per download task (network-bound: a quarter CPU)")
    decode: RayResources = Field(default_factory=RayResources, description="per decode or import-set task")
    embed: RayResources = Field(default_factory=lambda: RayResources(num_cpus=1.0, num_gpus=1.0), description="per MineCLIP actor; CPU actors where the cluster has no GPU")
    generate: RayResources = Field(default_factory=lambda: RayResources(num_cpus=2.0, num_gpus=0.25), description="per generate actor: one environment (MineRL's Minecraft takes about two cores) and the two VPT agents; a quarter GPU each, CPU actors where the cluster has no GPU")
    rollout: RayResources = Field(default_factory=lambda: RayResources(num_cpus=2.0, num_gpus=0.25), description="per rollout actor: one environment and the STEVE-1 policy; a quarter GPU each, CPU actors where the cluster has no GPU")
    local_num_cpus: Optional[int] = Field(None, ge=1, le=4096, description="CPUs of the local Ray started when RAY_ADDRESS is unset; null = this machine's")
    local_object_store_mb: int = Field(512, ge=80, le=1_000_000, description="object store of that local Ray (only small results travel through it)")


SET_NAME = NAME


class CustomSet(Section):
    """A folder of your own recordings; the ``import-set`` and ``embed-set`` stages turn it into
    episodes and embeds under ``<paths.custom>/<name>/`` (DVC outputs, like the main set's)."""

    source: str = Field(..., min_length=1, description="folder of recordings, one sub-folder per episode: frames/*.png + actions.jsonl, MineRL v0.4 (recording.mp4 + rendered.npz), or an official STEVE-1 dataset (frames.mp4 + actions.pkl + embeds_attn.pkl + len.txt)")
    format: Literal["auto", "frames", "minerl", "steve1"] = Field("auto", description="recording format; auto tells them apart per folder")
    fps: float = Field(20.0, gt=0.0, le=1000.0, description="frame rate of PNG-frame recordings")
    embeddings: Literal["auto", "dataset", "mineclip"] = Field("auto", description="embed-set: dataset reuses a STEVE-1 dataset's own MineCLIP embeddings, mineclip recomputes them with the embed params; auto reuses them when every episode brought its own")
    dataset_mineclip: Optional[str] = Field(None, min_length=1, description="the MineCLIP that embedded the dataset, as embeds files name it (e.g. attn.pth:md5=<md5 of attn.pth>); lets reused embeddings mix with sets embedded by it; null: they mix with no other set")

    @model_validator(mode="after")
    def _embeddings_come_from_somewhere(self) -> "CustomSet":
        if self.embeddings == "dataset" and self.format in ("frames", "minerl"):
            raise ValueError(f"embeddings: dataset, but format {self.format} carries no embeddings; "
                             f"use format steve1 (or auto) or embeddings: mineclip")
        if self.dataset_mineclip is not None and (self.dataset_mineclip.startswith(("dataset:", "unverified@"))):
            raise ValueError(f"dataset_mineclip {self.dataset_mineclip!r} must name a MineCLIP "
                             f"(e.g. attn.pth:md5=...), not a dataset")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_embeddings(self, handler: Any) -> dict[str, Any]:
        data = handler(self)   # sets without the new keys dump exactly as before they existed
        if self.embeddings == "auto":
            data.pop("embeddings", None)
        if self.dataset_mineclip is None:
            data.pop("dataset_mineclip", None)
        return data


class MixSet(Section):
    """A custom set (``custom.<name>``) drawn into a mixed sampling beside the main set.

    Budgets count training frames (T per chunk) and are met within one chunk.
    """

    name: Name = Field(..., description="a key of custom, or 'generated' (the generate stage's episodes); its episodes are keyed '<name>/<episode_id>' in the sampling JSON")
    train_frames: int = Field(..., ge=0, description="train frames drawn from this set")
    val_frames: int = Field(0, ge=0, description="val frames drawn from this set")

    @model_validator(mode="after")
    def _contributes(self) -> "MixSet":
        if self.train_frames == 0 and self.val_frames == 0:
            raise ValueError(f"mix set {self.name!r} has train_frames: 0 and val_frames: 0, so it adds nothing; "
                             f"give it a budget or remove it")
        return self


class SampleParams(Section):
    """Train/val split by frame budgets and chunk indices.

    ``mix`` adds extra episode sets beside the main one; each set is split with its own frame
    budgets, so a 80/20 mix of 100k train frames is ``train_frames: 80000`` plus a set with
    ``train_frames: 20000``. With a mix, every budget (the main one included) counts training
    frames (T per chunk) and is met within one chunk; without one, sampling is unchanged (whole
    episodes, STEVE-1's rule). An empty ``mix`` is left out of dumps, so existing samplings and
    run fingerprints keep their bytes.
    """

    name: Name = Field("default", description="sampling name: data/samplings/<name>.json")
    train_frames: int = Field(100_000, ge=1, description="frame budget of the train split")
    val_frames: int = Field(20_000, ge=0, description="frame budget of the val split")
    seed: int = Field(0, ge=0, description="seed of the split")
    val_from: Optional[str] = Field(None, description="reuse the val episodes of an earlier sampling JSON")
    T: int = Field(640, ge=1, description="chunk length in frames")
    min_btwn_goals: int = Field(15, ge=15, description="smallest gap between hindsight goals; >= 15 because embeddings start at frame 15 (STEVE-1 asserts it)")
    max_btwn_goals: int = Field(200, ge=2, description="gaps are drawn below this")
    mix: list[MixSet] = Field(default_factory=list, description="sets mixed in: [{name, train_frames, val_frames}], name a key of custom or 'generated' (the generate stage's episodes), each budget in training frames")

    @model_validator(mode="after")
    def _gap_order(self) -> "SampleParams":
        if self.max_btwn_goals <= self.min_btwn_goals:
            raise ValueError(
                f"max_btwn_goals ({self.max_btwn_goals}) must be greater than min_btwn_goals ({self.min_btwn_goals})"
            )
        return self

    @model_validator(mode="after")
    def _mix_names(self) -> "SampleParams":
        names = [m.name for m in self.mix]
        if "main" in names:
            raise ValueError("mix: the set name 'main' is reserved for paths.episodes/paths.embeds; pick another")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"mix: set names must be unique, {dup} appear more than once")
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_mix(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if not self.mix:  # the single-set default dumps exactly as before mix existed
            data.pop("mix", None)
        return data


class AgentSpec(Section):
    """One VPT agent of the generate stage: an architecture and its weights."""

    name: Name = Field(..., description="label recorded in the manifest")
    model: Optional[str] = Field(None, description="VPT .model file: a file name in weights.dir (listed in weights.files) or a path; null = preset")
    preset: Literal["tiny", "1x", "2x", "3x"] = Field("tiny", description="architecture when model is null")
    weights: Optional[str] = Field(None, description="VPT .weights file: a file name in weights.dir (listed in weights.files) or a path; null = a seeded random agent (embedded default only)")
    seed: int = Field(0, ge=0, description="init seed of a random agent (weights: null)")


class GenerateParams(Section):
    """STEVE-1's second data source: two VPT agents take turns playing (its gen_mixed_agents.py).

    Per step the inactive agent takes over with probability ``switch_agent_prob``; when exactly one
    of the pair is an ``rl-from-*`` model the probabilities are ``switch_to_rl_prob`` towards it and
    ``switch_from_rl_prob`` away from it. With probability ``spin_prob`` the agent stops and spins
    (a random total in ``spin_degrees`` at a random ``spin_step_degrees`` per step, left or right).
    The active agent's memory is reset at each switch and after each spin.
    """

    env: Literal["standin", "minerl"] = Field("standin", description="minerl: MineRL HumanSurvival (paper); standin: the deterministic stand-in world (embedded default)")
    n_episodes: int = Field(0, ge=0, le=1_000_000, description="episodes to play; 0 = none (the stage writes empty folders)")
    agents: list[AgentSpec] = Field(default_factory=list, description="the two agents that take turns: [{name, model, weights, ...}, {...}]")
    max_steps: int = Field(7200, ge=1, le=10_000_000, description="steps per episode at most (STEVE-1 7200)")
    min_steps: int = Field(1000, ge=1, le=10_000_000, description="shorter episodes (env crash or end) are dropped, with the reason in the manifest (STEVE-1 1000)")
    switch_agent_prob: float = Field(0.001, ge=0.0, le=1.0, description="per-step probability that the other agent takes over (STEVE-1 0.001)")
    switch_to_rl_prob: float = Field(1 / 3000, ge=0.0, le=1.0, description="towards the rl-from-* agent when exactly one is one (STEVE-1 1/3000)")
    switch_from_rl_prob: float = Field(1 / 1000, ge=0.0, le=1.0, description="away from the rl-from-* agent when exactly one is one (STEVE-1 1/1000)")
    spin_prob: float = Field(0.00133, ge=0.0, le=1.0, description="per-step probability of a spin when not spinning (STEVE-1 0.00133)")
    spin_degrees: tuple[int, int] = Field((90, 360), description="a spin's total turn is drawn from [low, high] degrees")
    spin_step_degrees: tuple[int, int] = Field((20, 30), description="its turn per step is drawn from [low, high] degrees")
    seed: int = Field(0, ge=0, description="episode i plays world seed seed + i; switches, spins and agent sampling are seeded by (seed, i)")
    video_size: tuple[int, int] = Field((256, 160), description="(width, height) of the lossless companion video the embed stage reads (MineCLIP's input)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the agents run")

    @model_validator(mode="after")
    def _consistent(self) -> "GenerateParams":
        if self.n_episodes and len(self.agents) != 2:
            raise ValueError(f"n_episodes is {self.n_episodes} but {len(self.agents)} agent(s) are given; "
                             f"list exactly two agents (the same one twice to play a single agent)")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        for key in ("spin_degrees", "spin_step_degrees"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi:
                raise ValueError(f"{key} {[lo, hi]} must be [low, high] with 0 < low <= high")
        if min(self.video_size) < 1:
            raise ValueError(f"video_size {list(self.video_size)} must be positive")
        return self


class PriorAnnotation(Section):
    """One (text, visual goal) pair: the prompt and the embeds row it describes."""

    text: str = Field(..., min_length=1, description="the instruction, e.g. 'chop a tree'")
    episode_id: str = Field(..., min_length=1, description="episode whose data/embeds/<id>.h5 holds the visual goal")
    t: int = Field(..., ge=15, description="row of that embeds file (>= 15: a full 16-frame window)")


class PriorParams(Section):
    """Text-to-goal CVAE prior (models/prior.pt, official steve1_prior.pt key format)."""

    data: Optional[str] = Field(None, description="official-layout data.pkl (numpy-only unpickler) or .npz with text_embeddings/visual_embeddings; null = pairs from annotations")
    annotations: list[PriorAnnotation] = Field(default_factory=list, description="inline {text, episode_id, t} pairs")
    annotations_file: Optional[str] = Field(None, description="JSON list of {text, episode_id, t}; with no data/annotations/file the toy default is used")
    baseline: Optional[str] = Field(None, description="another prior (the official steve1_prior.pt) scored on the same val pairs: baseline_val_loss beside ours; null = none")
    toy_windows_per_episode: int = Field(4, ge=1, le=10_000, description="toy default: windows per episode, paired with the toy prompts in turn")
    toy_samples_per_window: int = Field(16, ge=1, le=10_000, description="toy default: embeds rows drawn per window")
    hidden_dim: int = Field(512, ge=1, description="MLP width (official 512)")
    latent_dim: int = Field(512, ge=1, description="latent size (official 512)")
    beta: float = Field(1.0, ge=0.0, description="KL weight; KL summed over batch and latent as in the official loop")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW learning rate (official 1e-4)")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="pairs per step (official 256)")
    epochs: int = Field(50, ge=1, le=100_000, description="maximum epochs (official 50)")
    patience: int = Field(10, ge=0, description="stop after this many epochs without a better val loss; 0 = never")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of pairs held out for validation (official: 200 pairs)")
    seed: int = Field(0, ge=0, description="seed of the split, shuffling, noise and init")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where to train")

    @model_validator(mode="after")
    def _one_source(self) -> "PriorParams":
        given = [k for k, v in (("data", self.data), ("annotations", self.annotations),
                                ("annotations_file", self.annotations_file)) if v]
        if len(given) > 1:
            raise ValueError(f"set only one of data, annotations, annotations_file (got {', '.join(given)})")
        return self

    @property
    def is_toy(self) -> bool:
        """No data, annotations or file: the offline toy prior."""
        return not (self.data or self.annotations or self.annotations_file)


# STEVE-1's programmatic evaluation pairs these prompts with the metric they aim at (paper, Fig. 4)
PAPER_PROMPT_TARGETS = {"wood": "log", "dirt": "dirt", "seeds": "seed", "explore": "travel_dist"}


class RolloutParams(Section):
    """Rollouts of the trained agent with STEVE-1's programmatic metrics (the ``rollout`` stage).

    ``env: minerl`` plays MineRL 1.0.2's HumanSurvival (from its tag, JDK 8, xvfb: docs/rollouts.md "Rollouts
    in MineRL"); ``env: standin`` plays the deterministic stand-in world of the embedded default,
    and every output says so.
    """

    name: Name = Field("default", description="results go to <paths.eval>/rollouts/<name>/")
    env: Literal["standin", "minerl"] = Field("standin", description="minerl: MineRL HumanSurvival (paper, finetune); standin: the deterministic stand-in world (embedded default)")
    checkpoint: Literal["best", "latest"] = Field("best", description="which weights of <paths.models>/<train.run>/ play, unless policy_weights is set")
    text_prompts: dict[str, str] = Field(default_factory=dict, description="name -> instruction; empty = the 11 paper prompts")
    visual_prompts: dict[str, str] = Field(default_factory=dict, description="name -> .npy file of a visual goal embedding (the policy's goal width)")
    visual_prompts_from: Optional[str] = Field(None, description="folder or .zip of <name>.npy/.pkl visual goals (STEVE-1's visual_prompt_embeds.zip); each becomes a visual prompt")
    targets: dict[str, str] = Field(default_factory=lambda: dict(PAPER_PROMPT_TARGETS), description="prompt name -> the programmatic metric it aims at; the metrics file holds each one's mean")
    n_episodes: int = Field(10, ge=1, le=10_000, description="episodes per prompt")
    steps: int = Field(3000, ge=1, le=1_000_000, description="env steps per episode (paper: 3000)")
    seed: int = Field(0, ge=0, description="episode i of every prompt uses world seed seed + i")
    text_cond_scale: float = Field(6.0, ge=0.0, description="classifier-free guidance scale for text prompts (paper 6)")
    visual_cond_scale: float = Field(7.0, ge=0.0, description="classifier-free guidance scale for visual prompts (paper 7)")
    prior: Optional[str] = Field(None, description="prior weights; null = <paths.models>/prior.pt")
    prior_deterministic: bool = Field(False, description="decode the prior mean instead of a seeded sample")
    prior_seed: int = Field(0, ge=0, description="seed of the prior sample")
    policy_model: Optional[str] = Field(None, description="VPT .model file giving the architecture (goal width read from the weights); null = the train section's architecture")
    policy_weights: Optional[str] = Field(None, description="STEVE-1 weights to play (e.g. the official steve1.weights); null = <paths.models>/<train.run>/<checkpoint>.weights")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the policy runs")
    max_retries: int = Field(3, ge=0, le=100, description="env crashes tolerated per episode before it is recorded as failed")
    video: bool = Field(True, description="write one mp4 per episode with the prompt and env in a banner")
    video_fps: int = Field(20, ge=1, le=240, description="mp4 frame rate (MineRL runs 20 steps/s)")
    ci: Literal["bootstrap", "t"] = Field("bootstrap", description="confidence interval of the per-prompt means")
    ci_level: float = Field(0.95, gt=0.0, lt=1.0, description="confidence level")
    n_bootstrap: int = Field(2000, ge=100, le=1_000_000, description="bootstrap resamples")


class ReportParams(Section):
    """Dataset summaries and Evidently drift reports (train vs val, optionally vs an earlier sampling)."""

    reference_sampling: Optional[str] = Field(None, description="earlier sampling JSON to compare all current episodes against; null = none")
    drift_share_threshold: float = Field(0.5, ge=0.0, le=1.0, description="drift is detected when the share of drifted columns is above this")
    on_drift: Literal["warn", "fail"] = Field("warn", description="detected drift logs a warning, or fails the stage after writing the reports")
    column_threshold: float = Field(0.1, gt=0.0, le=10.0, description="a column drifts when its distance (normed Wasserstein / Jensen-Shannon) reaches this")
    max_steps_per_split: int = Field(20_000, ge=100, le=10_000_000, description="steps drawn per split for the per-step tables and drift tests")
    n_components: int = Field(4, ge=1, le=64, description="principal components of the reference MineCLIP embeddings used as drift columns")
    seed: int = Field(0, ge=0, description="seed of the step draw")


GUIDE_GRAD_NORM = (0.5, 5.0)   # the fine-tuning guide's normal range, for a per-step mean loss
BEST_ON_ALL = "all"            # train.best_on: the val loss over every set's val chunks


class AugmentParams(Section):
    """Colour augmentation of the training frames on the device (``steve1.train.augment``); off in STEVE-1."""

    enabled: bool = Field(False, description="augment training frames (validation never is)")
    brightness: float = Field(0.2, ge=0.0, le=1.0, description="brightness factor drawn from [1-x, 1+x] per sequence")
    contrast: float = Field(0.2, ge=0.0, le=1.0, description="contrast factor drawn from [1-x, 1+x] per sequence")
    saturation: float = Field(0.2, ge=0.0, le=1.0, description="saturation factor drawn from [1-x, 1+x] per sequence")
    hue: float = Field(0.02, ge=0.0, le=0.5, description="hue shift drawn from [-x, x] turns per sequence")
    grayscale_p: float = Field(0.1, ge=0.0, le=1.0, description="probability that a sequence is turned gray")


class TrainParams(Section):
    """STEVE-1 behavioural cloning (the learning rate is the top-level ``learning_rate``)."""

    run: Name = Field("default", description="outputs go to <paths.models>/<run>/")
    preset: Literal["tiny", "1x", "2x", "3x"] = Field("tiny", description="architecture when in_model is null")
    in_model: Optional[str] = Field(None, description="official VPT .model file giving the architecture (e.g. 2x.model)")
    in_weights: Optional[str] = Field(None, description="VPT .weights (goal layer initialised) or steve1.weights to fine-tune; null = from scratch")
    goal_init: Literal["default", "zeros"] = Field("default", description="init of mineclip_embed_linear when in_weights is VPT: PyTorch default (official) or zeros")
    deepspeed: str = Field("zero2", pattern=r"^(none|zero1|zero2|zero3|.+\.json)$", description="none (plain Accelerate), zero1|zero2|zero3 (configs/deepspeed/<name>.json) or a DeepSpeed JSON path")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    n_frames: int = Field(2560, ge=1, description="train until this many frames (all processes) have been seen; cosine ends at 1.1x this")
    warmup_frames: int = Field(256, ge=0, description="linear learning-rate warmup, in frames")
    batch_size: int = Field(1, ge=1, le=65536, description="chunks per process per batch")
    grad_accum: int = Field(1, ge=1, le=4096, description="trunc_t micro-steps per optimizer step")
    trunc_t: int = Field(64, ge=1, description="truncated-BPTT length: each [B,T] batch runs in T/trunc_t chunks")
    weight_decay: float = Field(0.039428, ge=0.0, le=10.0, description="AdamW decay of the decayed group (STEVE-1 0.039428)")
    max_grad_norm: float = Field(5.0, gt=0.0, description="gradient clipping max norm")
    p_uncond: float = Field(0.1, ge=0.0, le=1.0, description="share of chunks with a zero goal (classifier-free guidance)")
    gap_dist: Literal["uniform", "geometric"] = Field("uniform", description="distribution of the hindsight goal gaps")
    official_goal_lag: bool = Field(False, description="reproduce STEVE-1's one-step-late goal switch")
    num_workers: int = Field(0, ge=0, le=256, json_schema_extra={"speed_only": True}, description="DataLoader worker processes per training process (speed only: the same batches, reruns nothing)")
    val_freq: int = Field(50, ge=1, description="validate every this many optimizer steps (after val_freq_switch_steps)")
    val_freq_begin: int = Field(10, ge=1, description="validation frequency before val_freq_switch_steps")
    val_freq_switch_steps: int = Field(100, ge=0, description="step at which val_freq replaces val_freq_begin")
    val_every_nth: int = Field(10, ge=1, description="validate on every n-th val chunk (a fixed subset)")
    log_every_steps: int = Field(5, ge=1, description="optimizer steps between metric logs (the only host syncs)")
    snapshot_every_frames: int = Field(0, ge=0, description="write snapshots/<frames>.weights every this many frames; 0 = never")
    checkpoint_every_steps: int = Field(10, ge=1, description="optimizer steps between resumable checkpoints (taken at batch ends)")
    seed: int = Field(0, ge=0, description="seed of init, shuffling and relabeling")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory, more time)")
    loss_reduction: Literal["official", "mean"] = Field("official", description="official: sum over the chunk's steps, mean over the batch (STEVE-1); mean: per step")
    grad_norm_range: Optional[tuple[float, float]] = Field(None, description="warn (and log grad_norm_out_of_range=1) when the logged gradient norm falls outside [low, high]; null = the guide's 0.5-5.0 for a per-step mean loss, times trunc_t with the official summed loss")
    freeze: list[str] = Field(default_factory=list, description="module groups not trained: cnn, transformer, goal, heads or a module path prefix (e.g. net.recurrent_layer.blocks.0); guide: [cnn, transformer]")
    mineclip_embed_dim: int = Field(512, ge=1, le=65536, description="goal embedding width of the goal fusion layer; must equal the embeds files' embed_dim (512 = MineCLIP)")
    augment: AugmentParams = Field(default_factory=AugmentParams, description="colour augmentation of the training frames")
    tensorboard: bool = Field(False, description="also write the logged scalars to <paths.models>/<run>/dvclive/tensorboard/ (needs the tensorboard package)")
    best_on: Name = Field(BEST_ON_ALL, description="best.weights by the val loss of all val chunks, or of one sampling set's (main or a sample.mix name, with val_frames > 0): forgetting vs gain; changing it restarts the run")

    @model_validator(mode="before")
    @classmethod
    def _no_T(cls, data: Any) -> Any:
        if isinstance(data, dict) and "T" in data:
            raise ValueError(f"train.T ({data['T']!r}) was removed: training reads sample.T, the chunk length the "
                             f"sample stage cuts; delete train.T from params.yaml (and set sample.T)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainParams":
        if self.warmup_frames >= 1.1 * self.n_frames:
            raise ValueError(f"warmup_frames ({self.warmup_frames}) must be below 1.1 x n_frames ({self.n_frames})")
        if self.grad_norm_range is not None and self.grad_norm_range[0] >= self.grad_norm_range[1]:
            raise ValueError(f"grad_norm_range {list(self.grad_norm_range)} must be [low, high] with low < high")
        return self


    @property
    def grad_norm_bounds(self) -> tuple[float, float]:
        """The expected gradient-norm range. The guide's 0.5-5.0 is for a loss averaged over steps; the
        official loss sums the steps of each truncated-BPTT call, so its gradients are trunc_t times larger."""
        if self.grad_norm_range is not None:
            return self.grad_norm_range
        scale = self.trunc_t if self.loss_reduction == "official" else 1
        return (GUIDE_GRAD_NORM[0] * scale, GUIDE_GRAD_NORM[1] * scale)

    @model_serializer(mode="wrap")
    def _omit_default_best_on(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.best_on == BEST_ON_ALL:  # the default dumps (config.json, the run fingerprint) exactly as before
            data.pop("best_on", None)
        return data


class EvaluateParams(Section):
    """Offline evaluation on the val chunks: action NLL/accuracy, goal sensitivity, cond_scale sweep."""

    checkpoint: Literal["best", "latest"] = Field("best", description="which weights of <paths.models>/<train.run>/ to score")
    weights: Optional[str] = Field(None, description="score this weights file instead (a dep of evaluate in the generated dvc.yaml)")
    baseline_weights: Optional[str] = Field(None, description="also score these weights (VPT, official STEVE-1 or an earlier run) and write baseline.* and delta.*; null = none")
    every_nth: int = Field(1, ge=1, description="score every n-th val chunk")
    max_chunks: Optional[int] = Field(None, ge=1, description="score at most this many chunks; null = all")
    batch_size: int = Field(4, ge=1, le=4096, description="chunks per batch (3x rows go through the policy: true, zero and other goal)")
    call_t: Optional[int] = Field(None, ge=1, description="frames per policy call (memory only; results equal); null = train.trunc_t")
    cond_scales: list[float] = Field(default_factory=lambda: [0.0, 1.0, 3.0, 6.0, 7.0], min_length=1, description="classifier-free guidance scales of the guided sweep")
    seed: int = Field(0, ge=0, description="seed of the hindsight goals and the other-episode goals")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to run")

    @model_validator(mode="after")
    def _scales(self) -> "EvaluateParams":
        if any(s < 0 for s in self.cond_scales) or len(set(self.cond_scales)) != len(self.cond_scales):
            raise ValueError(f"cond_scales {self.cond_scales} must be distinct and >= 0")
        return self


class TuneParam(Section):
    """One searched param of ``tune.space``: a range (``low``, ``high``, ``log``, ``step``) or ``choices``."""

    low: Optional[int | float] = Field(None, description="smallest value (with high); ints on both ends and an int param search integers")
    high: Optional[int | float] = Field(None, description="largest value (inclusive)")
    log: bool = Field(False, description="search the range on a log scale (low > 0)")
    step: Optional[int | float] = Field(None, gt=0, description="grid step of the range; null = continuous")
    choices: Optional[list[Any]] = Field(None, min_length=1, description="the values to choose from (any YAML value, lists included), instead of a range")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "TuneParam":
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError(f"log: true needs low > 0 (is {self.low}) and no step")
        return self


class TuneParams(Section):
    """``steve1 tune``: an Optuna study whose trials are DVC experiments (``steve1.tune``). No stage reads it."""

    study: str = Field("default", pattern=r"^[A-Za-z0-9_-]+$", description="study name; trial N is the DVC experiment <study>-t<N>")
    storage: str = Field("tune/optuna.db", description="the study's SQLite file in the workspace (resume, optuna-dashboard sqlite:///<it>)")
    objective: str | dict[str, float] = Field("val_loss", description="headline metric to minimise (val_loss, main_val_loss, delta_nll, ...: steve1 compare's names) or {metric: weight} summed, e.g. {main_val_loss: 1, mine_val_loss: 1}")
    space: dict[str, TuneParam] = Field(default_factory=dict, description="searched params by dotted key (learning_rate, train.freeze, ...): {low, high, log, step} or {choices}")
    n_trials: int = Field(4, ge=1, le=100_000, description="trials of the study in all (a resumed study runs the rest)")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler; seeded per trial by (seed, trial number)")
    seed: int = Field(0, ge=0, description="the sampler's seed: the same study config and seed propose the same trials")
    jobs: int = Field(1, ge=1, le=256, description="trials run at once (dvc queue start --jobs)")
    pruner: Literal["median", "none"] = Field("median", description="stop a trial whose intermediate val loss is worse than the median of earlier trials' at the same step")
    prune_after_trials: int = Field(2, ge=1, description="trials that must finish before any is pruned")
    prune_warmup_steps: int = Field(0, ge=0, description="optimizer steps of a trial before it may be pruned")
    poll_s: float = Field(5.0, gt=0.0, le=3600.0, description="seconds between looks at the running trials")


class Params(Section):
    """The whole of params.yaml. Every random source is seeded by its own section's ``seed`` (there is
    no global seed: one would have to override or be overridden by each of them)."""

    learning_rate: float = Field(4e-5, gt=0.0, le=1.0, description="train stage learning rate (top level so `dvc exp run -S learning_rate=...` works)")
    engine: Literal["local", "ray"] = Field("local", description="where per-episode work of download/decode/embed/import-set/embed-set/generate/rollout runs: this machine, or the Ray cluster named by RAY_ADDRESS (a local Ray when unset); outputs are the same bytes")
    ray: RayParams = Field(default_factory=RayParams, description="the ray engine's resources and retries")
    paths: Paths = Field(default_factory=Paths)
    source: SourceParams = Field(default_factory=SourceParams)
    weights: WeightsParams = Field(default_factory=WeightsParams)
    custom: dict[str, CustomSet] = Field(default_factory=dict, description="your own recording sets by name, e.g. {mine: {source: recordings/mine}}; imported and embedded by the import-set/embed-set stages")
    download: DownloadParams = Field(default_factory=DownloadParams)
    decode: DecodeParams = Field(default_factory=DecodeParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    prior: PriorParams = Field(default_factory=PriorParams)
    rollout: RolloutParams = Field(default_factory=RolloutParams)
    report: ReportParams = Field(default_factory=ReportParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    tune: TuneParams = Field(default_factory=TuneParams, description="steve1 tune's search (no stage reads it)")

    @model_validator(mode="after")
    def _trunc_t_divides_T(self) -> "Params":
        """Chunks are cut by the sample stage (sample.T); training runs them in trunc_t calls."""
        T = self.train_T
        if T % self.train.trunc_t:
            raise ValueError(f"train.trunc_t ({self.train.trunc_t}) must divide the chunk length T={T} (sample.T)")
        return self

    @model_validator(mode="after")
    def _paths_apart(self) -> "Params":
        """Each stage owns its folder: two ``paths.*`` (or ``weights.dir``) that are the same folder or
        one inside the other would let one stage's outputs overwrite or stale another's."""
        named = {f"paths.{k}": v for k, v in self.paths.model_dump().items()}
        named["weights.dir"] = self.weights.dir
        parts = {k: tuple(p for p in posixpath.normpath(v.replace("\\", "/")).split("/") if p not in ("", "."))
                 for k, v in named.items()}
        clashes = [f"{a} ({named[a]!r}) and {b} ({named[b]!r})" for i, a in enumerate(parts)
                   for b in list(parts)[i + 1:] if parts[a][:len(parts[b])] == parts[b] or parts[b][:len(parts[a])] == parts[a]]
        if clashes:
            raise ValueError("paths must be distinct folders, none inside another (each is one stage's output): "
                             + "; ".join(clashes) + " overlap")
        return self

    @model_validator(mode="after")
    def _mix_names_are_custom_sets(self) -> "Params":
        bad = [f"custom.{name}" for name in self.custom if not re.match(SET_NAME, name) or name == GENERATED_SET]
        if bad:
            raise ValueError(f"custom set names must be {NAME_RULE}, and not "
                             f"'{GENERATED_SET}' (the generate stage's set): {', '.join(bad)}")
        unknown = [m.name for m in self.sample.mix if m.name not in self.custom and m.name != GENERATED_SET]
        if unknown:
            raise ValueError(f"sample.mix names {unknown}, which are not custom sets (custom has "
                             f"{sorted(self.custom) or 'none'}) nor '{GENERATED_SET}'; add them under custom: with "
                             f"their source folder")
        return self

    @model_validator(mode="after")
    def _best_on_is_a_set(self) -> "Params":
        """train.best_on names a sampling set (with val chunks, unless val_from may bring some)."""
        best_on, sample = self.train.best_on, self.sample
        if best_on == BEST_ON_ALL:
            return self
        val_frames = {"main": sample.val_frames, **{m.name: m.val_frames for m in sample.mix}}
        choices = [BEST_ON_ALL, *val_frames] if sample.mix else [BEST_ON_ALL]
        if best_on not in choices:
            why = ("sample.mix is empty, so the one set's val loss is the 'all' one" if not sample.mix else
                   "'main' is paths.episodes' set, the others are sample.mix names")
            raise ValueError(f"train.best_on is {best_on!r}, expected one of {choices} ({why})")
        if val_frames[best_on] == 0 and not sample.val_from:
            raise ValueError(f"train.best_on is {best_on!r}, but that set has val_frames: 0 (no val chunks to choose "
                             f"best.weights by); give it val_frames or pick another of {choices}")
        return self

    @property
    def train_T(self) -> int:
        """Chunk length used by training: sample.T, the length the sample stage cuts."""
        return self.sample.T


def describe_invalid(key: str, value: Any, why: str) -> str:
    """One line of a params error: the key, its value and what was expected."""
    return f"key '{key}': value {value!r} is invalid: {why}"


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (value {err['input']!r}); check the spelling against params.yaml's documented keys"
    if isinstance(err.get("input"), dict):  # a rule over a section's keys: its message names them
        where = f"section '{key}'" if err["loc"] else "params"
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    return describe_invalid(key, err.get("input"), err["msg"].removeprefix("Value error, "))


def validate_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise ParamsError listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    with params_errors(origin):
        return Params.model_validate(raw)


@contextlib.contextmanager
def params_errors(origin: str) -> Iterator[None]:
    """Pydantic's ValidationError from building or assigning a params model, as one ParamsError that
    names each key, its value and what was expected (``origin``: where the values came from)."""
    try:
        yield
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; the single entry point every stage uses."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return validate_params(raw, origin=str(path))
