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

from steve1.names import GENERATED_SET

if TYPE_CHECKING:  # the layout needs a few values of params, never the schema's code
    from steve1.params import Params

MANIFEST = "manifest.json"  # every data folder's index: <raw|episodes|embeds>/manifest.json
SOURCE_INDEX = "index.json"
PRIOR = "prior.pt"
PRIOR_METRICS = "prior_metrics.json"
PRIOR_REPORT = "prior_report.json"
PRIOR_HISTORY = "prior_history.json"
EVAL_METRICS = "metrics.json"
EVAL_OFFLINE = "offline.json"
EVAL_PLOTS = "plots/custom"      # dvclive custom plots: <name>.json
EVAL_PLOT_SWEEP = "cond_scale_sweep"
EVAL_PLOT_CHUNKS = "chunk_nll"
EVAL_PLOT_SETS = "set_nll"
REPORT_SUMMARY = "summary.json"
REPORT_DATA = "data"
REPORT_DETAILS = "summary.json"          # the full data summary, inside REPORT_DATA
REPORT_PLOT_DRIFT = "drift_columns"
ROLLOUTS = "rollouts"
METRICS = "metrics.json"                 # a stage's headline figures (DVC metrics)
PLOTS = "plots"


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
        """The run's headline figures (DVC metrics): loss, val_loss, frames_per_s."""
        return self.dir / METRICS

    @property
    def dvclive_summary(self) -> Path:
        """dvclive's summary: the last logged value of every scalar."""
        return self.dvclive / "metrics.json"

    @property
    def plots(self) -> Path:
        """dvclive's per-scalar history: ``<scalar>.tsv`` with ``step`` and the value."""
        return self.dvclive / "plots" / "metrics"

    def curve(self, scalar: str) -> Path:
        return self.plots / f"{scalar}.tsv"

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
class RolloutLayout:
    """One rollout evaluation's folder, ``<paths.eval>/rollouts/<rollout.name>/``."""

    dir: Path

    @property
    def results(self) -> Path:
        """Per episode and per prompt, with confidence intervals (cached output)."""
        return self.dir / "results.json"

    @property
    def videos(self) -> Path:
        return self.dir / "videos"

    def video(self, kind: str, prompt: str, episode: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prompt)
        return self.videos / f"{kind}-{safe}-ep{episode:03d}.mp4"

    @property
    def metrics(self) -> Path:
        """Per-prompt means of each prompt's target metric (DVC metrics, uncached)."""
        return self.dir / METRICS

    @property
    def plots(self) -> Path:
        return self.dir / PLOTS

    def plot(self, metric: str) -> Path:
        """Per-prompt bars of one programmatic metric with its interval (DVC plot)."""
        return self.plots / f"{metric}.json"


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
    generated: Path = Path("data/generated")
    sample_name: str = "default"
    run_name: str = "default"
    eval_checkpoint: str = "best"
    rollout_name: str = "default"
    rollout_checkpoint: str = "best"

    @classmethod
    def from_params(cls, params: "Params") -> "Layout":
        p = params.paths
        return cls(source=Path(p.source), weights=Path(params.weights.dir), raw=Path(p.raw),
                   episodes=Path(p.episodes), embeds=Path(p.embeds), samplings=Path(p.samplings),
                   models=Path(p.models), eval=Path(p.eval), reports=Path(p.reports), custom=Path(p.custom),
                   generated=Path(p.generated),
                   sample_name=params.sample.name, run_name=params.train.run,
                   eval_checkpoint=params.evaluate.checkpoint, rollout_name=params.rollout.name,
                   rollout_checkpoint=params.rollout.checkpoint)

    @classmethod
    def template(cls) -> "Layout":
        """The layout with DVC ``${...}`` placeholders for every value params can change (dvc.yaml)."""
        folders = {k: Path(f"${{paths.{k}}}") for k in
                   ("source", "raw", "episodes", "embeds", "samplings", "models", "eval", "reports", "custom",
                    "generated")}
        return cls(weights=Path("${weights.dir}"), sample_name="${sample.name}", run_name="${train.run}",
                   eval_checkpoint="${evaluate.checkpoint}", rollout_name="${rollout.name}",
                   rollout_checkpoint="${rollout.checkpoint}", **folders)

    # -------------------------------------------------------------------- data
    @property
    def source_index(self) -> Path:
        return self.source / SOURCE_INDEX

    @property
    def generated_episodes(self) -> Path:
        """Episodes of the generate stage (VPT agents playing), in the episode format."""
        return self.generated / "episodes"

    @property
    def generated_videos(self) -> Path:
        """Their companion videos (``<id>.mp4``, lossless), which the embed step reads as it reads ``raw``."""
        return self.generated / "raw"

    @property
    def generated_embeds(self) -> Path:
        return self.generated / "embeds"

    @property
    def generated_manifest(self) -> Path:
        """Every episode's agents, world seed, switches, spins, and why one was dropped."""
        return self.generated_episodes / MANIFEST

    def custom_set(self, name: str) -> CustomSetLayout:
        return CustomSetLayout(self.custom / name)

    def mix_dirs(self, names) -> dict[str, tuple[Path, Path]]:
        """``set name -> (episodes, embeds)`` of the sets a sampling mixes in: custom sets, and
        ``generated`` (the generate stage's episodes)."""
        return {n: (self.generated_episodes, self.generated_embeds) if n == GENERATED_SET
                else (self.custom_set(n).episodes, self.custom_set(n).embeds) for n in names}

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
        """Headline: the best val loss (DVC metrics)."""
        return self.models / PRIOR_METRICS

    @property
    def prior_report(self) -> Path:
        """The prior's training record: source, pairs, history, params, toy note."""
        return self.models / PRIOR_REPORT

    @property
    def prior_history(self) -> Path:
        """Train and val loss per epoch (a DVC plot)."""
        return self.models / PRIOR_HISTORY

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

    def rollouts_of(self, name: str) -> RolloutLayout:
        return RolloutLayout(self.eval / ROLLOUTS / name)

    @property
    def rollouts(self) -> RolloutLayout:
        return self.rollouts_of(self.rollout_name)

    @property
    def rollout_weights(self) -> Path:
        """The run's weights the rollout stage plays (``rollout.checkpoint``)."""
        return self.run.weights(self.rollout_checkpoint)

    @property
    def report_summary(self) -> Path:
        return self.reports / REPORT_SUMMARY

    @property
    def report_data(self) -> Path:
        return self.reports / REPORT_DATA

    @property
    def report_details(self) -> Path:
        """The full summary (splits, every comparison), inside the data folder."""
        return self.report_data / REPORT_DETAILS

    @property
    def report_plot(self) -> Path:
        """Per-column drift scores (a DVC plot)."""
        return self.reports / PLOTS / f"{REPORT_PLOT_DRIFT}.json"
