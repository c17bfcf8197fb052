"""Dataset summaries and Evidently drift reports between splits (and against an earlier sampling).

Why per-step rows: a sampling holds a handful of long episodes, too few for a test on
per-episode rows, while per-step rows give distributions of actions, camera movement and
embeddings. Steps within an episode are correlated, so drift is judged with distance
measures (normed Wasserstein for continuous columns, Jensen-Shannon for 0/1 flags and
categories) against a fixed threshold, not with p-values that any large sample would fail.

Embedding drift is made testable through a few principal-component projections fitted on
the reference side only (plus norm and mean): a shift of the current embeddings along the
reference's main directions moves these columns. Evidently's own ``EmbeddingsDrift`` is not
used: it runs t-SNE for its plot (slow on CPU) and rejects the NaN rows of the first 15 steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from steve1 import headline
from steve1.actions import CAMERA_KEY, CAMERA_NULL_IDX, NULL_BUTTONS_IDX
from steve1.data import formats
from steve1.data.episodes import EpisodeReader, read_embeds
from steve1.data.sampling import Sampling, episode_files
from steve1.errors import UserError
from steve1.io import atomic_path, remove_stale_temps, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
PRESS_PREFIX = "press_"          # per-step 0/1 column of a MineRL button key: press_attack, press_hotbar.1
PC_PREFIX = "pc_"                # projection on a reference principal component: pc_1, pc_2, ...
CONTINUOUS = ("camera_deg", "embed_norm", "embed_mean")
FLAGS = ("camera_null", "gui_open", "agent_null")
CATEGORIES = ("recorder_version",)
ID_COLUMNS = ("episode_id", "step")
NUM_METHOD = "wasserstein"       # normed by the reference std; drift when >= threshold
CAT_METHOD = "jensenshannon"     # distance in [0, 1]; drift when >= threshold



class DriftInputError(UserError, ValueError):
    """A sampling, episode or embeds file needed by the report is missing or inconsistent."""


# ---------------------------------------------------------------- samplings


# ---------------------------------------------------------------- features


@dataclass
class SplitTables:
    """Features of one split: sampled per-step rows, one row per episode, and the sampled embeddings."""

    steps: pd.DataFrame
    episodes: pd.DataFrame
    embeds: np.ndarray               # float32 [len(steps), D]; NaN rows where the embedding is invalid


def _episode_step_features(reader: EpisodeReader, embeds: np.ndarray, valid: np.ndarray) -> pd.DataFrame:
    """Every step of one episode as a row of features (vectorised; no per-step Python)."""
    n = reader.n_frames
    buttons = reader.array(formats.BUTTONS)
    camera_idx = reader.array(formats.CAMERA)
    cam = reader.array(formats.ENV_CAMERA).astype(np.float64).reshape(n, 2)
    cols: dict[str, Any] = {
        "episode_id": np.full(n, reader.episode_id, dtype=object),
        "step": np.arange(n),
        "recorder_version": np.full(n, str(reader.attrs.get(formats.A_RECORDER_VERSION, "unknown")), dtype=object),
        "camera_deg": np.hypot(cam[:, 0], cam[:, 1]),
        "camera_null": (camera_idx == CAMERA_NULL_IDX).astype(np.int8),
        "gui_open": reader.array(formats.GUI_OPEN).astype(np.int8),
        "agent_null": ((buttons == NULL_BUTTONS_IDX) & (camera_idx == CAMERA_NULL_IDX)).astype(np.int8),
    }
    for key in sorted(reader.env_action_keys()):
        if key != CAMERA_KEY:
            cols[PRESS_PREFIX + key] = (reader.array(f"{formats.ENV_ACTIONS}/{key}") > 0).astype(np.int8)
    e = np.where(valid[:, None], embeds, np.nan)
    cols["embed_norm"] = np.linalg.norm(e, axis=1)
    cols["embed_mean"] = e.mean(axis=1)
    return pd.DataFrame(cols)


def load_split(dirs: Mapping[str, tuple[Path, Path]], episode_ids: Sequence[str],
               max_steps: int, seed: int) -> SplitTables:
    """Read a split's episodes and embeddings; keep at most ``max_steps`` uniformly drawn steps.

    Episode rows use every step; the per-step table and embeddings are the seeded draw, so the
    report's size and run time do not grow with the dataset. ``dirs`` maps each sampling set to
    its (episodes, embeds) folders (:func:`steve1.data.sampling.set_dirs`).
    """
    if not episode_ids:
        return SplitTables(pd.DataFrame(columns=list(ID_COLUMNS)), pd.DataFrame(columns=["episode_id", "n_frames"]),
                           np.zeros((0, 0), np.float32))
    lengths = []
    for eid in episode_ids:
        path, _ = episode_files(eid, dirs)
        if not path.is_file():
            raise DriftInputError(f"{path}: episode '{eid}' listed in the sampling has no episode file")
        with EpisodeReader(path) as r:
            lengths.append(r.n_frames)
    total = int(sum(lengths))
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(total, size=max_steps, replace=False)) if total > max_steps else np.arange(total)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    step_parts, episode_rows, embed_parts = [], [], []
    for i, eid in enumerate(episode_ids):
        path, emb_path = episode_files(eid, dirs)
        if not emb_path.is_file():
            raise DriftInputError(f"{emb_path}: episode '{eid}' has no embeds file (run the embed stage)")
        embeds, valid, _ = read_embeds(emb_path)
        with EpisodeReader(path) as r:
            if len(embeds) != r.n_frames:
                raise DriftInputError(f"{emb_path}: {len(embeds)} embeddings but episode '{eid}' has {r.n_frames} frames")
            steps = _episode_step_features(r, embeds, valid)
        episode_rows.append(_episode_row(steps, int(valid.sum())))
        local = keep[(keep >= offsets[i]) & (keep < offsets[i + 1])] - offsets[i]
        step_parts.append(steps.iloc[local])
        embed_parts.append(np.where(valid[local, None], embeds[local], np.nan).astype(np.float32))

    steps = pd.concat(step_parts, ignore_index=True)
    press = [c for c in steps.columns if c.startswith(PRESS_PREFIX)]
    steps[press] = steps[press].fillna(0).astype(np.int8)   # a key absent from one recording = never pressed
    episodes = pd.DataFrame(episode_rows)
    episodes[[c for c in episodes.columns if c.startswith(PRESS_PREFIX)]] = (
        episodes[[c for c in episodes.columns if c.startswith(PRESS_PREFIX)]].fillna(0.0))
    dims = {e.shape[1] for e in embed_parts}
    if len(dims) > 1:
        raise DriftInputError(f"embeddings of this split have different widths {sorted(dims)} "
                              f"(episodes {list(episode_ids)[:5]}...): embed every set with the same MineCLIP")
    return SplitTables(steps, episodes, np.concatenate(embed_parts))


def _episode_row(steps: pd.DataFrame, n_valid: int) -> dict[str, Any]:
    """One episode's summary from all its steps: rates, means, length, recorder version."""
    row: dict[str, Any] = {
        "episode_id": steps["episode_id"].iat[0] if len(steps) else "",
        "n_frames": len(steps),
        "recorder_version": steps["recorder_version"].iat[0] if len(steps) else "unknown",
        "camera_deg_mean": steps["camera_deg"].mean(),
        "camera_null_share": steps["camera_null"].mean(),
        "gui_open_share": steps["gui_open"].mean(),
        "agent_null_share": steps["agent_null"].mean(),
        "n_valid_embeds": n_valid,
        "embed_norm_mean": steps["embed_norm"].mean(),
        "embed_mean_mean": steps["embed_mean"].mean(),
    }
    row.update({c: steps[c].mean() for c in steps.columns if c.startswith(PRESS_PREFIX)})
    return row


# ---------------------------------------------------------------- embedding projections


def fit_pca(embeds: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [D], components [k, D])`` of the valid (non-NaN) rows; signs fixed so reruns agree.

    ``k`` is ``n_components`` capped by the rows and width available; ``k = 0`` when there are none.
    """
    if embeds.ndim != 2 or not embeds.size:
        return np.zeros(0), np.zeros((0, 0))
    x = embeds[~np.isnan(embeds).any(axis=1)]
    k = min(n_components, len(x) - 1, x.shape[1])
    if k <= 0:
        return np.zeros(x.shape[1]), np.zeros((0, x.shape[1]))
    mean = x.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])   # largest loading positive
    return mean, comps * signs[:, None]


def add_projections(tables: SplitTables, mean: np.ndarray, components: np.ndarray) -> None:
    """Add ``pc_1..pc_k`` columns to the step table and their per-episode means to the episode table."""
    if not len(tables.steps):
        return
    proj = (tables.embeds.astype(np.float64) - mean) @ components.T if len(components) else np.zeros((len(tables.steps), 0))
    names = [f"{PC_PREFIX}{i + 1}" for i in range(proj.shape[1])]
    for j, name in enumerate(names):
        tables.steps[name] = proj[:, j]
    if names:
        means = tables.steps.groupby("episode_id", sort=False)[names].mean().add_suffix("_mean")
        tables.episodes = tables.episodes.merge(means, left_on="episode_id", right_index=True, how="left")


def feature_columns(steps: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(continuous, categorical)`` drift columns of a step table, in a stable order."""
    pcs = sorted((c for c in steps.columns if c.startswith(PC_PREFIX)), key=lambda c: int(c[len(PC_PREFIX):]))
    cont = [c for c in CONTINUOUS if c in steps.columns] + pcs
    press = sorted(c for c in steps.columns if c.startswith(PRESS_PREFIX))
    cat = [c for c in FLAGS + CATEGORIES if c in steps.columns] + press
    return cont, cat


# ---------------------------------------------------------------- drift


@dataclass
class DriftResult:
    """One comparison: which columns drifted, their share, and the Evidently snapshot behind it."""

    reference: str
    current: str
    n_reference: int
    n_current: int
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> {method, score, drifted}
    n_drifted: int = 0
    share: float = 0.0
    skipped: Optional[str] = None
    snapshot: Any = None

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def summary(self, drift_share_threshold: float) -> dict[str, Any]:
        out = {"reference": self.reference, "current": self.current, "n_reference_steps": self.n_reference,
               "n_current_steps": self.n_current, "skipped": self.skipped}
        if self.skipped is None:
            out.update(n_columns=self.n_columns, n_drifted_columns=self.n_drifted, drift_share=round(self.share, 6),
                       drift_detected=self.share > drift_share_threshold,
                       drifted_columns=sorted(c for c, v in self.columns.items() if v["drifted"]))
        else:
            out.update(drift_detected=False)
        return out


@contextlib.contextmanager
def _quiet_evidently():
    """Silence the deprecation noise Evidently 0.7 raises under pandas 3 / numpy 2 (hundreds per run)."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, getattr(pd.errors, "Pandas4Warning", FutureWarning)):
            warnings.simplefilter("ignore", category)
        yield


def _evidently():
    """Import Evidently lazily (it is slow to import and only this stage needs it)."""
    with _quiet_evidently():
        import evidently
        from evidently.presets import DataDriftPreset

    return evidently, DataDriftPreset


def compute_drift(reference: pd.DataFrame, current: pd.DataFrame, column_threshold: float,
                  reference_name: str = "train", current_name: str = "val") -> DriftResult:
    """Evidently column drift of ``current`` against ``reference`` over the shared feature columns."""
    result = DriftResult(reference_name, current_name, len(reference), len(current))
    empty = [name for name, df in ((reference_name, reference), (current_name, current)) if not len(df)]
    if empty:
        result.skipped = f"no steps in {' and '.join(empty)}: nothing to compare"
        return result
    cont_r, cat_r = feature_columns(reference)
    cont_c, cat_c = feature_columns(current)
    cont = [c for c in cont_r if c in cont_c]
    cat = [c for c in cat_r if c in cat_c]
    # a column that is all NaN on one side (no valid embeddings) cannot be compared
    cont = [c for c in cont if reference[c].notna().any() and current[c].notna().any()]
    evidently, DataDriftPreset = _evidently()
    definition = evidently.DataDefinition(numerical_columns=cont, categorical_columns=cat)

    def dataset(df: pd.DataFrame):
        frame = df[cont + cat].copy()
        frame[cat] = frame[cat].astype(str)
        return evidently.Dataset.from_pandas(frame, data_definition=definition)

    preset = DataDriftPreset(columns=cont + cat, num_method=NUM_METHOD, cat_method=CAT_METHOD, threshold=column_threshold)
    with _quiet_evidently():
        snapshot = evidently.Report([preset]).run(dataset(current), dataset(reference))
        metrics = snapshot.dict()["metrics"]
    methods = {**{c: NUM_METHOD for c in cont}, **{c: CAT_METHOD for c in cat}}
    for metric in metrics:
        config = metric["config"]
        if config.get("type", "").endswith(":ValueDrift"):
            score = float(metric["value"])
            result.columns[config["column"]] = {"method": methods[config["column"]], "score": round(score, 6),
                                                "drifted": bool(score >= column_threshold)}
        elif config.get("type", "").endswith(":DriftedColumnsCount"):
            result.n_drifted, result.share = int(metric["value"]["count"]), float(metric["value"]["share"])
    result.snapshot = snapshot
    return result


# ---------------------------------------------------------------- summaries and files


def dataset_summary(tables: SplitTables) -> dict[str, Any]:
    """Headline numbers of one split, computed over all its steps (not the drift sample)."""
    ep = tables.episodes
    if not len(ep):
        return {"n_episodes": 0, "n_steps": 0}
    w = ep["n_frames"].to_numpy(dtype=np.float64)

    def weighted(col: str) -> Optional[float]:
        v = ep[col].to_numpy(dtype=np.float64)
        ok = ~np.isnan(v) & (w > 0)
        return round(float(np.average(v[ok], weights=w[ok])), 6) if ok.any() else None

    press = sorted(c for c in ep.columns if c.startswith(PRESS_PREFIX))
    return {
        "n_episodes": int(len(ep)),
        "n_steps": int(w.sum()),
        "n_steps_sampled": int(len(tables.steps)),
        "episode_length_mean": round(float(w.mean()), 3),
        "episode_length_min": int(w.min()),
        "episode_length_max": int(w.max()),
        "recorder_versions": {str(k): int(v) for k, v in ep["recorder_version"].value_counts().sort_index().items()},
        "camera_deg_mean": weighted("camera_deg_mean"),
        "camera_null_share": weighted("camera_null_share"),
        "gui_open_share": weighted("gui_open_share"),
        "agent_null_share": weighted("agent_null_share"),
        "embed_valid_share": round(float(ep["n_valid_embeds"].sum() / w.sum()), 6) if w.sum() else None,
        "press_rates": {c[len(PRESS_PREFIX):]: weighted(c) for c in press},
    }


def write_tables(out_dir: Path, name: str, tables: SplitTables) -> None:
    """``episodes_<name>.csv`` (one row per episode) and ``steps_<name>.csv`` (the drift sample)."""
    for kind, df in (("episodes", tables.episodes), ("steps", tables.steps)):
        with atomic_path(out_dir / f"{kind}_{name}.csv", suffix=".csv") as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")


def write_drift(out_dir: Path, stem: str, result: DriftResult, drift_share_threshold: float) -> None:
    """``<stem>.html`` (Evidently's page) and ``<stem>.json`` (our verdict + Evidently's snapshot)."""
    doc: dict[str, Any] = {"summary": result.summary(drift_share_threshold), "columns": result.columns}
    if result.snapshot is not None:
        with _quiet_evidently(), atomic_path(out_dir / f"{stem}.html", suffix=".html") as tmp:
            doc["evidently"] = json.loads(result.snapshot.json())
            result.snapshot.save_html(str(tmp))       # Evidently wants a str path
    else:
        write_text_atomic(out_dir / f"{stem}.html",
                          "<!doctype html><html><head><meta charset='utf-8'><title>steve1 drift</title></head>"
                          f"<body><h1>Drift: {result.current} vs {result.reference}</h1>"
                          f"<p>Skipped: {result.skipped}</p></body></html>\n")
    write_json_atomic(out_dir / f"{stem}.json", doc)


def build_report(*, episodes_dir: str | Path, embeds_dir: str | Path, sampling_path: str | Path,
                 summary_path: str | Path, data_dir: str | Path,
                 reference_sampling: Optional[str | Path], drift_share_threshold: float, column_threshold: float,
                 max_steps_per_split: int, n_components: int, seed: int,
                 details_path: Optional[str | Path] = None, plot_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Write the tables and drift reports under ``data_dir`` (``Layout.report_data``), the full summary to
    ``details_path`` (``Layout.report_details``), the per-column drift scores to ``plot_path``
    (``Layout.report_plot``) and the headline figures (:func:`steve1.headline.report`) to
    ``summary_path`` (``Layout.report_summary``); return the full summary.

    Comparisons: train (reference) vs val, and, when ``reference_sampling`` is given, all episodes
    of that earlier sampling (reference) vs all of this one. A comparison with an empty side is
    skipped and says so in its HTML, JSON and the summary; a sampling with no episodes at all is an error.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(data_dir)
    for stale in (*data_dir.glob("drift_reference.*"), *data_dir.glob("*_reference.csv")):
        stale.unlink()              # from an earlier run with a reference sampling
    doc = Sampling.load(sampling_path)
    splits = {s: doc.episodes(s) for s in SPLITS}
    if not any(splits.values()):
        raise DriftInputError(f"{sampling_path}: both 'train' and 'val' are empty; nothing to report")
    dirs = doc.set_dirs(episodes_dir, embeds_dir)
    tables = {s: load_split(dirs, ids, max_steps_per_split, seed + i)
              for i, (s, ids) in enumerate(splits.items())}
    mean, comps = fit_pca(tables["train"].embeds, n_components)
    for t in tables.values():
        add_projections(t, mean, comps)
    for s, t in tables.items():
        write_tables(data_dir, s, t)
    results = {"train_vs_val": compute_drift(tables["train"].steps, tables["val"].steps, column_threshold)}
    write_drift(data_dir, "drift", results["train_vs_val"], drift_share_threshold)

    if reference_sampling is not None:
        ref_doc = Sampling.load(reference_sampling, hint="check report.reference_sampling")
        ref = load_split(ref_doc.set_dirs(episodes_dir, embeds_dir), ref_doc.train + ref_doc.val, max_steps_per_split,
                         seed + 10)
        cur = load_split(dirs, splits["train"] + splits["val"], max_steps_per_split, seed + 11)
        mean, comps = fit_pca(ref.embeds, n_components)
        for t in (ref, cur):
            add_projections(t, mean, comps)
        write_tables(data_dir, "reference", ref)
        results["reference_vs_current"] = compute_drift(ref.steps, cur.steps, column_threshold, "reference", "current")
        write_drift(data_dir, "drift_reference", results["reference_vs_current"], drift_share_threshold)

    for name, r in results.items():
        if r.skipped:
            log.warning("%s: drift comparison skipped: %s", name, r.skipped)
    summary = {
        "drift_share_threshold": drift_share_threshold,
        "column_threshold": column_threshold,
        "drift_detected": any(r.summary(drift_share_threshold)["drift_detected"] for r in results.values()),
        "comparisons": {name: r.summary(drift_share_threshold) for name, r in results.items()},
        "splits": {s: dataset_summary(t) for s, t in tables.items()},
        "n_components": int(len(comps)),
    }
    if details_path is not None:
        write_json_atomic(Path(details_path), summary)
    if plot_path is not None:
        write_json_atomic(Path(plot_path), drift_plot_rows(results))
    write_json_atomic(Path(summary_path), headline.report(summary))
    return summary


def drift_plot_rows(results: dict[str, DriftResult]) -> list[dict[str, Any]]:
    """One row per (comparison, column): its drift score and whether it drifted (a DVC bar plot)."""
    return [{"column": col, "comparison": name, "score": v["score"], "drifted": v["drifted"]}
            for name, r in results.items() for col, v in sorted(r.columns.items())]
