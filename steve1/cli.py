"""The ``steve1`` command line: one subcommand per DVC stage (same code as ``python -m stages.<name>``)
plus tools for single files (``decode-one``, ``embed-text``, ...)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

import typer

from steve1.errors import UserError
from steve1.params import DecodeParams, EmbedParams, RolloutParams

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# stage name -> (module, one-line help). Each module has ``main(argv) -> int``.
STAGES: dict[str, tuple[str, str]] = {
    "make-source": ("stages.make_source", "Generate the embedded default recordings and their index (offline)."),
    "weights": ("stages.weights", "Fetch and verify the official checkpoint files (weights.files) into weights.dir."),
    "download": ("stages.download", "Fetch mp4 + jsonl recordings listed in an index; resumable and verified."),
    "decode": ("stages.decode", "Convert recordings to HDF5 episodes: 128x128 frames, VPT actions."),
    "embed": ("stages.embed", "MineCLIP embedding of every frame's 16-frame window."),
    "import-set": ("stages.import_set", "Import the recordings of custom set NAME (custom.NAME.source) as episodes."),
    "embed-set": ("stages.embed_set", "MineCLIP embeddings of custom set NAME's episodes (the embed stage's code)."),
    "generate": ("stages.generate", "Episodes of two VPT agents taking turns (STEVE-1's second data source), with a manifest."),
    "embed-generated": ("stages.embed_generated", "MineCLIP embeddings of the generated episodes (the embed stage's code)."),
    "sample": ("stages.sample", "Train/val split by frame budgets and chunk indices."),
    "report": ("stages.report", "Dataset summaries and Evidently drift reports between splits."),
    "prior": ("stages.prior", "Train the text-to-goal CVAE prior (toy prompts when no annotations are given)."),
    "train": ("stages.train", "Train the STEVE-1 policy by behavioural cloning (Accelerate + DeepSpeed, resumable)."),
    "evaluate": ("stages.evaluate", "Offline metrics on the val chunks: action NLL/accuracy, goal sensitivity, cond_scale sweep, baseline deltas."),
}
# ``rollout`` is a stage too, with its own command below (it takes overrides); same code as the stage.

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="path to params.yaml")


def _default(section: type, key: str):
    """The schema's default of ``section.key``: single-file commands default like the stages."""
    return section.model_fields[key].default


SET_STAGES = {"import-set", "embed-set"}   # one stage per custom set: the command takes the set's name


def _stage_command(module: str):
    def command(params: Path = PARAMS_OPTION) -> None:
        code = importlib.import_module(module).main(["--params", str(params)])
        raise typer.Exit(code)

    return command


def _set_stage_command(module: str):
    def command(name: str = typer.Argument(..., help="the custom set (a key of custom in params.yaml)"),
                params: Path = PARAMS_OPTION) -> None:
        code = importlib.import_module(module).main([name, "--params", str(params)])
        raise typer.Exit(code)

    return command


for _name, (_module, _help) in STAGES.items():
    app.command(name=_name, help=_help)((_set_stage_command if _name in SET_STAGES else _stage_command)(_module))


@app.command("decode-one")
def decode_one(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="recording .mp4 (640x360, 20 fps)"),
    actions: Path = typer.Argument(..., exists=True, dir_okay=False, help="its contractor .jsonl"),
    out: Path = typer.Argument(..., help="episode .h5 to write"),
    camera_int_truncation: bool = typer.Option(_default(DecodeParams, "camera_int_truncation"), "--camera-int-truncation",
                                               help="the official int64 camera truncation"),
    codec: str = typer.Option(_default(DecodeParams, "frame_codec"), "--codec",
                              help="frame codec: none, lzf, gzip, blosc-lz4, blosc-zstd, jpeg (decode.frame_codec)"),
    quality: int = typer.Option(_default(DecodeParams, "frame_quality"), "--quality", min=1, max=100,
                                help="JPEG quality of the jpeg codec (decode.frame_quality)"),
    cursor_png: Optional[Path] = typer.Option(None, "--cursor-png", help="official mouse_cursor_white_16x16.png"),
) -> None:
    """Decode one mp4 + jsonl pair to an HDF5 episode (same code as the decode stage)."""
    from steve1.data.decode import decode_recording, conversion_settings
    from steve1.io import sha256_file
    from steve1.data.episodes import FrameStorage, write_episode
    from steve1.data import formats

    if codec not in formats.CODECS:
        typer.echo(f"error: --codec {codec!r} is not a frame codec; expected one of {', '.join(formats.CODECS)}", err=True)
        raise typer.Exit(2)
    try:
        settings = DecodeParams(camera_int_truncation=camera_int_truncation, frame_codec=codec, frame_quality=quality,
                                cursor_png=str(cursor_png) if cursor_png else None)
        attrs = {formats.A_VIDEO_SHA256: sha256_file(video), formats.A_JSONL_SHA256: sha256_file(actions),
                 formats.A_CONVERSION: json.dumps(conversion_settings(settings), sort_keys=True)}
        ep = decode_recording(video, actions, out.stem, settings, attrs)
    except UserError as exc:   # DecodeSkip: the recording's problem, one line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    write_episode(out, ep, FrameStorage.from_params(settings))
    typer.echo(f"{out}: {ep.n_frames} frames")


@app.command("import-recordings")
def import_recordings(
    src_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="one folder per episode"),
    out_dir: Path = typer.Argument(..., help="episodes folder of its own: <OUT_DIR>/<id>.h5 + manifest.json"),
    fmt: str = typer.Option("auto", "--format", help="auto, frames (frames/*.png + actions.jsonl), minerl (MineRL v0.4) or steve1 (a STEVE-1 dataset)"),
    codec: str = typer.Option(_default(DecodeParams, "frame_codec"), "--codec",
                              help="frame codec: none, lzf, gzip, blosc-lz4, blosc-zstd, jpeg (decode.frame_codec)"),
    quality: int = typer.Option(_default(DecodeParams, "frame_quality"), "--quality", min=1, max=100,
                                help="JPEG quality of the jpeg codec (decode.frame_quality)"),
    video_dir: Optional[Path] = typer.Option(None, "--video-dir", help="companion videos for the embed stage (default <OUT_DIR>/raw)"),
    fps: float = typer.Option(20.0, "--fps", help="frame rate of PNG-frame recordings"),
    camera_int_truncation: bool = typer.Option(_default(DecodeParams, "camera_int_truncation"), "--camera-int-truncation",
                                               help="contractor lines: the official int64 camera truncation"),
    min_kept_steps: int = typer.Option(_default(DecodeParams, "min_kept_steps"), "--min-kept-steps", min=1,
                                       help="skip episodes with fewer non-null steps"),
) -> None:
    """Import custom recordings (PNG frames + actions.jsonl, MineRL v0.4 trajectories, STEVE-1 datasets) as HDF5 episodes;
    bad episodes are skipped with a reason in the manifest, a rerun keeps finished ones."""
    from steve1.data import formats
    from steve1.data.custom import FORMATS, import_all
    from steve1.params import params_errors

    if fmt not in FORMATS or codec not in formats.CODECS:
        typer.echo(f"error: --format {fmt!r} / --codec {codec!r}: expected --format in {', '.join(FORMATS)} "
                   f"and --codec in {', '.join(formats.CODECS)}", err=True)
        raise typer.Exit(2)
    try:
        with params_errors("import-recordings options"):
            settings = DecodeParams(frame_codec=codec, frame_quality=quality,
                                    camera_int_truncation=camera_int_truncation, min_kept_steps=min_kept_steps)
        report = import_all(src_dir, out_dir, settings, fmt, video_dir, fps)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    for eid, reason in sorted(report.skipped.items()):
        typer.echo(f"skipped {eid}: {reason}", err=True)
    typer.echo(report.summary())
    raise typer.Exit(0 if report.n_ok else 1)


@app.command("embed-text")
def embed_text(
    text: str = typer.Argument(..., help="the instruction, e.g. \"chop a tree\""),
    weights: Optional[Path] = typer.Option(None, "--weights", exists=True, dir_okay=False,
                                           help="official MineCLIP attn.pth; without it a seeded random MineCLIP"),
    preset: str = typer.Option(_default(EmbedParams, "preset"), "--preset",
                               help="random MineCLIP architecture without --weights: tiny or full"),
    seed: int = typer.Option(_default(EmbedParams, "seed"), "--seed", help="seed of the random MineCLIP"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the float32 [512] embedding as .npy"),
) -> None:
    """MineCLIP text embedding of one instruction (printed, or saved with --out)."""
    from steve1.eval.prompt import mineclip_text_encoder

    try:
        encoder, weights_id = mineclip_text_encoder(str(weights) if weights else None, preset, seed)
        emb = encoder([text])[0].numpy()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    _emit_vector(emb, out, text, "text embedding", weights_id)


def _emit_vector(vec, out: Optional[Path], text: str, what: str, label: str) -> None:
    """Save a float32 vector as .npy (atomically) or print its size, norm and first values."""
    import numpy as np

    from steve1.io import atomic_path

    if out is not None:
        with atomic_path(out, suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, vec)
        typer.echo(f"{out}: {vec.shape[0]}-d {what} ({label})")
    else:
        head = ", ".join(f"{v:+.4f}" for v in vec[:6])
        typer.echo(f"{text!r} [{label}] dim={vec.shape[0]} norm={np.linalg.norm(vec):.4f} [{head}, ...]")


@app.command("prompt")
def prompt(
    text: str = typer.Argument(..., help="the instruction, e.g. \"chop a tree\""),
    prior: Optional[Path] = typer.Option(None, "--prior", help="prior weights (ours or the official steve1_prior.pt); "
                                                               "default: the prior stage's output for --params"),
    params: Path = PARAMS_OPTION,
    mineclip_weights: Optional[Path] = typer.Option(None, "--mineclip-weights", exists=True, dir_okay=False,
                                                    help="official MineCLIP attn.pth; without it the seeded random MineCLIP"),
    preset: str = typer.Option(_default(EmbedParams, "preset"), "--preset",
                               help="random MineCLIP architecture without --mineclip-weights"),
    mineclip_seed: int = typer.Option(_default(EmbedParams, "seed"), "--mineclip-seed", help="seed of the random MineCLIP"),
    seed: int = typer.Option(_default(RolloutParams, "prior_seed"), "--seed", help="seed of the prior sample"),
    deterministic: bool = typer.Option(_default(RolloutParams, "prior_deterministic"), "--deterministic",
                                       help="decode the prior mean instead of sampling"),
    out: Optional[Path] = typer.Option(None, "--out", help="save the float32 [512] goal embedding as .npy"),
) -> None:
    """Goal embedding of a text prompt: MineCLIP text embedding, then the prior (seeded sample or mean)."""
    from steve1.eval.prompt import mineclip_text_encoder, prompt_to_goal
    from steve1.layout import Layout
    from steve1.models.prior import load_prior
    from steve1.params import Params, ParamsError, load_params

    try:
        if prior is None:
            prior = Layout.from_params(load_params(params) if params.is_file() else Params()).prior
    except ParamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    try:
        encoder, weights_id = mineclip_text_encoder(str(mineclip_weights) if mineclip_weights else None, preset, mineclip_seed)
        goal = prompt_to_goal([text], encoder, load_prior(prior), seed=seed, deterministic=deterministic)[0]
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    how = "prior mean" if deterministic else f"prior sample seed={seed}"
    _emit_vector(goal, out, text, "goal embedding", f"{weights_id}, {how}")


@app.command("rollout")
def rollout(
    params: Path = PARAMS_OPTION,
    episodes: Optional[int] = typer.Option(None, "--episodes", min=1, help="override rollout.n_episodes"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="override rollout.steps"),
    env: Optional[str] = typer.Option(None, "--env", help="override rollout.env: standin or minerl"),
    out: Optional[Path] = typer.Option(None, "--out", help="results folder (default: the rollout layout of --params)"),
    device: Optional[str] = typer.Option(None, "--device", help="override rollout.device: auto, cpu or cuda"),
) -> None:
    """Rollouts with programmatic metrics and videos (the rollout stage's code). rollout.env: minerl needs
    MineRL 1.0.2, JDK 8 and a display (docs/rollouts.md "Rollouts in MineRL"; headless: xvfb-run -a steve1 rollout)."""
    from steve1.params import ParamsError, load_params, params_errors
    from steve1.play.rollout import check_targets, rollout_stage

    try:
        p = load_params(params)
        with params_errors("steve1 rollout options"):
            for key, value in (("n_episodes", episodes), ("steps", steps), ("env", env), ("device", device)):
                if value is not None:
                    setattr(p.rollout, key, value)
        check_targets(p)
    except ParamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    try:
        rollout_stage(p, out)
    except UserError as exc:            # a sentence naming the file or key: no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


@app.command("profile")
def profile(
    name: str = typer.Argument(..., help="profile name in configs/profiles (paper, finetune) or a YAML path"),
    params: Path = PARAMS_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="only list the keys that would change"),
) -> None:
    """Merge a params profile into params.yaml (validated; comments kept; `git checkout params.yaml` undoes it)."""
    from steve1.params import ParamsError
    from steve1.profiles import apply_profile

    try:
        changed = apply_profile(name, params, dry_run=dry_run)
    except ParamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    verb = "would change" if dry_run else "changed"
    typer.echo(f"{params}: {verb} {len(changed)} key(s): {', '.join(changed) or 'none'}")


@app.command("fit-t")
def fit_t(
    params: Path = PARAMS_OPTION,
    dry_run: bool = typer.Option(False, "--dry-run", help="only print the T and what each set keeps"),
) -> None:
    """Set sample.T to the largest multiple of train.trunc_t (<= sample.T) at which every sampling set keeps
    the usable episodes its splits need (run after import-set/embed-set; validated, comments kept)."""
    from steve1.data.fit_t import FitError, fit_T, scan_sets
    from steve1.layout import Layout
    from steve1.params import ParamsError, load_params
    from steve1.profiles import merge_into_params

    try:
        p = load_params(params)
        layout = Layout.from_params(p)
        dirs = {"main": (layout.episodes, layout.embeds), **layout.mix_dirs(m.name for m in p.sample.mix)}
        sets = scan_sets(p, dirs)
        fit = fit_T(sets, p.sample.T, p.train.trunc_t, p.sample.min_btwn_goals)
        overlay = {"sample": {"T": fit.T}}
        changed = merge_into_params(overlay, params, f"sample.T: {fit.T} (fit-t)", dry_run=dry_run)
    except (ParamsError, FitError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    for line in fit.describe(sets):
        typer.echo(line)
    verb = "would set" if dry_run else "set"
    what = f"{verb} sample.T: {fit.T}" if changed else f"sample.T: {fit.T} already fits; nothing to change"
    typer.echo(f"{params}: {what} (episodes need >= {fit.min_frames(p.sample.min_btwn_goals)} frames)")


@app.command("compare")
def compare(
    sort: Optional[str] = typer.Option(None, "--sort", help="order the experiments by this metric (e.g. val_loss, main_val_loss, nll)"),
    descending: bool = typer.Option(False, "--descending", help="largest first (rollout targets)"),
    as_json: bool = typer.Option(False, "--json", help="every row with its differing params and headline metrics as JSON"),
    as_csv: bool = typer.Option(False, "--csv", help="the same as CSV"),
    all_commits: bool = typer.Option(False, "--all-commits", "-A", help="experiments of every commit, not only HEAD's"),
    width: int = typer.Option(120, "--width", min=40, help="the table's width in characters"),
) -> None:
    """The experiments (dvc exp show: workspace, queued, running, done, failed) as one narrow table: only the
    params that differ, and the headline metrics (val losses, NLL deltas, rollout targets); baseline first."""
    from steve1 import experiments as X

    try:
        rows = X.sort_rows(X.experiments(X.exp_show(".", all_commits=all_commits)), sort, descending)
    except X.ExperimentsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(X.to_json(rows) if as_json else X.to_csv(rows).rstrip("\n") if as_csv else X.table(rows, width))


@app.command("tune")
def tune(
    params: Path = PARAMS_OPTION,
    report: bool = typer.Option(False, "--report", help="only print the study so far (trials, best as a params diff)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """An Optuna study whose trials are DVC experiments (params.yaml's tune section): queued with -S overrides,
    run by dvc queue workers, pruned from their validation curves; resumes a killed search; prints the best trial as a
    params diff and its experiment name (dvc exp apply NAME)."""
    from dataclasses import asdict

    from steve1.params import ParamsError
    from steve1.tune import (DvcCommandError, DvcQueueRunner, TuneError, distributions, load_tune, open_study,
                             run_study, summarize)

    try:
        cfg, p, raw = load_tune(params)
        runner = DvcQueueRunner(".")
        if report:
            dists = distributions(cfg, raw)
            summary = summarize(open_study(cfg, dists), dists, runner, cfg)
        else:
            summary = run_study(cfg, p, raw, runner, echo=lambda line: typer.echo(line, err=as_json))
    except (ParamsError, TuneError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    except DvcCommandError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(asdict(summary), indent=2) if as_json else "\n".join(summary.lines()))


if __name__ == "__main__":
    app()
