"""Where every artifact lives: one object made from params, asked by stages, library, CLI and tests.

No other module joins path strings for a pipeline artifact. The same object, built from
placeholders instead of values (:meth:`Layout.template`), gives ``dvc.yaml`` its ``${...}``
paths, so the pipeline's declared deps/outs and the files the code writes cannot drift apart.

Per-episode files inside a folder (``<id>.h5``, ``<id>.mp4``) are named by the format module
(``steve1.data.formats``); this module names folders and the files a stage writes once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the layout needs a few values of params, never the schema's code
    from steve1.params import Params

MANIFEST = "manifest.json"  # every data folder's index: <raw|episodes|embeds>/manifest.json
SOURCE_INDEX = "index.json"
PRIOR = "prior.pt"
PRIOR_METRICS = "prior_metrics.json"
EVAL_METRICS = "metrics.json"
EVAL_OFFLINE = "offline.json"
EVAL_PLOTS = "plots/custom"      # dvclive custom plots: <name>.json
EVAL_PLOT_SWEEP = "cond_scale_sweep"
EVAL_PLOT_CHUNKS = "chunk_nll"
EVAL_PLOT_SETS = "set_nll"
REPORT_SUMMARY = "summary.json"
REPORT_DATA = "data"
ROLLOUTS = "rollouts"


@dataclass(frozen=True)
class RunLayout:
    """One training run's folder, ``<paths.models>/<train.run>/``."""

    dir: Path

    @property
    def latest(self) -> Path:
        return self.dir / "latest.weights"

    @property
    def best(self) -> Path:
        return self.dir / "best.weights"

    @property
    def best_json(self) -> Path:
        return self.dir / "best.json"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def snapshots(self) -> Path:
        return self.dir / "snapshots"

    def snapshot(self, frames: int) -> Path:
        return self.snapshots / f"{frames}.weights"

    def weights(self, which: str) -> Path:
        """``best`` or ``latest`` weights."""
        return self.dir / f"{which}.weights"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint"

    @property
    def dvclive(self) -> Path:
        return self.dir / "dvclive"

    @property
    def metrics(self) -> Path:
        return self.dvclive / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.dvclive / "plots" / "metrics"

    @property
    def tensorboard(self) -> Path:
        """Beside dvclive's files, which git carries into every experiment (a queued run keeps its own;
        ``dvc exp apply`` brings them back), and restored with them on resume."""
        return self.dvclive / "tensorboard"


@dataclass(frozen=True)
class CustomSetLayout:
    """One custom recording set's folder, ``<paths.custom>/<name>/``."""

    dir: Path

    @property
    def episodes(self) -> Path:
        return self.dir / "episodes"

    @property
    def raw(self) -> Path:
        """Companion videos the embed stage reads (as ``paths.raw`` for the main set)."""
        return self.dir / "raw"

    @property
    def embeds(self) -> Path:
        return self.dir / "embeds"


@dataclass(frozen=True)
class Layout:
    """Every artifact path of one params file (relative to the repository root, as params give them)."""

    source: Path
    weights: Path
    raw: Path
    episodes: Path
    embeds: Path
    samplings: Path
    models: Path
    eval: Path
    reports: Path
    custom: Path = Path("data/custom")
    sample_name: str = "default"
    run_name: str = "default"
    eval_checkpoint: str = "best"
    rollout_name: str = "default"

    @classmethod
    def from_params(cls, params: "Params") -> "Layout":
        p = params.paths
        return cls(source=Path(p.source), weights=Path(params.weights.dir), raw=Path(p.raw),
                   episodes=Path(p.episodes), embeds=Path(p.embeds), samplings=Path(p.samplings),
                   models=Path(p.models), eval=Path(p.eval), reports=Path(p.reports), custom=Path(p.custom),
                   sample_name=params.sample.name, run_name=params.train.run,
                   eval_checkpoint=params.evaluate.checkpoint, rollout_name=params.rollout.name)

    @classmethod
    def template(cls) -> "Layout":
        """The layout with DVC ``${...}`` placeholders for every value params can change (dvc.yaml)."""
        folders = {k: Path(f"${{paths.{k}}}") for k in
                   ("source", "raw", "episodes", "embeds", "samplings", "models", "eval", "reports", "custom")}
        return cls(weights=Path("${weights.dir}"), sample_name="${sample.name}", run_name="${train.run}",
                   eval_checkpoint="${evaluate.checkpoint}", rollout_name="${rollout.name}", **folders)

    # -------------------------------------------------------------------- data
    @property
    def source_index(self) -> Path:
        return self.source / SOURCE_INDEX

    @property
    def raw_manifest(self) -> Path:
        return self.raw / MANIFEST

    @property
    def decode_manifest(self) -> Path:
        return self.episodes / MANIFEST

    @property
    def embed_manifest(self) -> Path:
        return self.embeds / MANIFEST

    def custom_set(self, name: str) -> CustomSetLayout:
        return CustomSetLayout(self.custom / name)

    def mix_dirs(self, names) -> dict[str, tuple[Path, Path]]:
        """``set name -> (episodes, embeds)`` of the custom sets a sampling mixes in."""
        return {n: (self.custom_set(n).episodes, self.custom_set(n).embeds) for n in names}

    def sampling_of(self, name: str) -> Path:
        return self.samplings / f"{name}.json"

    @property
    def sampling(self) -> Path:
        """The sampling JSON that ``sample`` writes and train/evaluate/report read."""
        return self.sampling_of(self.sample_name)

    # -------------------------------------------------------------------- models
    def run_of(self, name: str) -> RunLayout:
        return RunLayout(self.models / name)

    @property
    def run(self) -> RunLayout:
        return self.run_of(self.run_name)

    @property
    def prior(self) -> Path:
        return self.models / PRIOR

    @property
    def prior_metrics(self) -> Path:
        return self.models / PRIOR_METRICS

    # -------------------------------------------------------------------- evaluation and reports
    @property
    def eval_weights(self) -> Path:
        """The run's weights the evaluate stage scores (``evaluate.checkpoint``)."""
        return self.run.weights(self.eval_checkpoint)

    @property
    def eval_metrics(self) -> Path:
        return self.eval / EVAL_METRICS

    @property
    def eval_offline(self) -> Path:
        return self.eval / EVAL_OFFLINE

    @property
    def eval_plots(self) -> Path:
        return self.eval / EVAL_PLOTS

    def eval_plot(self, name: str) -> Path:
        return self.eval_plots / f"{name}.json"

    def rollouts_of(self, name: str) -> Path:
        return self.eval / ROLLOUTS / name

    @property
    def rollouts(self) -> Path:
        return self.rollouts_of(self.rollout_name)

    @property
    def report_summary(self) -> Path:
        return self.reports / REPORT_SUMMARY

    @property
    def report_data(self) -> Path:
        return self.reports / REPORT_DATA
