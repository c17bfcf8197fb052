"""The fine-tuning switches of train params: goal embedding width (shared train/eval builder,
checked against the data), augmentation wired in and exact across a resume, TensorBoard next to
dvclive, and the gradient-norm range flag as a metric."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import steve1.train.trainer as trainer
from steve1.eval.offline import build_eval_policy
from steve1.models.checkpoints import CheckpointMismatchError, load_policy_weights
from fixtures.policy import build_policy_from_preset
from steve1.params import TrainParams, load_params
from steve1.train.trainer import EmbedDimError, build_start_policy, check_goal_width, train
from toy_world import make_world

# 3 batches of 2 calls = 6 optimizer steps; checkpoints at 0, 4 and 6
RUN = {"n_frames": 96, "checkpoint_every_steps": 4, "log_every_steps": 2, "val_freq": 4, "val_freq_begin": 4,
       "augment": {"enabled": True}, "tensorboard": importlib.util.find_spec("tensorboard") is not None}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- goal embedding width

def test_train_and_eval_build_the_same_architecture_with_the_goal_width():
    tp = TrainParams(mineclip_embed_dim=768, gradient_checkpointing=True)
    start, evaluated = build_start_policy(tp), build_eval_policy(tp)
    assert start.net.mineclip_embed_linear.weight.shape == (64, 768)
    assert {k: v.shape for k, v in start.state_dict().items()} == {k: v.shape for k, v in evaluated.state_dict().items()}
    assert start.net.recurrent_layer.gradient_checkpointing and not evaluated.net.recurrent_layer.gradient_checkpointing


def test_vpt_weights_initialise_a_wider_goal_layer_steve1_weights_of_another_width_fail(tmp_path):
    torch.manual_seed(0)
    vpt = build_policy_from_preset("tiny", mineclip_embed_dim=None)
    torch.save(vpt.state_dict(), tmp_path / "vpt.weights")
    policy = build_start_policy(TrainParams(mineclip_embed_dim=768, in_weights=str(tmp_path / "vpt.weights")))
    assert policy.net.mineclip_embed_linear.weight.shape == (64, 768)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in vpt.state_dict().items())

    torch.save(build_policy_from_preset("tiny").state_dict(), tmp_path / "steve1.weights")  # 512-d goal layer
    with pytest.raises(CheckpointMismatchError,
                       match=r"mismatched net.mineclip_embed_linear.weight: file \(64, 512\) vs model \(64, 768\)"):
        build_start_policy(TrainParams(mineclip_embed_dim=768, in_weights=str(tmp_path / "steve1.weights")))
    with pytest.raises(CheckpointMismatchError, match="mineclip_embed_linear"):
        load_policy_weights(build_eval_policy(TrainParams(mineclip_embed_dim=768)), tmp_path / "steve1.weights",
                            allow_vpt=False)


def test_trainer_refuses_embeds_of_another_width_before_any_work(tmp_path):
    params = make_world(tmp_path, {"mineclip_embed_dim": 768})
    with pytest.raises(EmbedDimError, match=r"ep-.*\.h5: goal embeddings are 512-d \(attr embed_dim\) but "
                                            r"train.mineclip_embed_dim is 768"):
        train(load_params(params))
    assert not (tmp_path / "models" / "toy").exists()  # nothing written
    check_goal_width(torch.zeros(2, 4, 512), 512)
    with pytest.raises(EmbedDimError, match="512-d but train.mineclip_embed_dim is 768"):
        check_goal_width(torch.zeros(2, 4, 512), 768)


# ----------------------------------------------------------------------------- augmentation, TensorBoard, flag

@pytest.fixture(scope="module")
def augmented(tmp_path_factory, request):
    """One uninterrupted run with augmentation and TensorBoard on; its run folder and augment calls."""
    mp = pytest.MonkeyPatch()
    calls = _spy(mp)
    try:
        params = make_world(tmp_path_factory.mktemp("augmented"), RUN)
        train(load_params(params))
    finally:
        mp.undo()
    return params.parent / "models" / "toy", calls


def _spy(mp) -> list[tuple[int, int]]:
    calls, real = [], trainer.augment_frames

    def spy(frames, cfg, seed, step):
        calls.append((seed, step))
        out = real(frames, cfg, seed, step)
        assert cfg.enabled and not torch.equal(out, frames)  # the frames the model sees are augmented
        return out

    mp.setattr(trainer, "augment_frames", spy)
    return calls


class Stop(Exception):
    pass


@pytest.mark.slow      # a second run, killed and resumed: minutes
def test_augmented_run_interrupted_and_resumed_ends_bitwise_equal(augmented, tmp_path, monkeypatch):
    reference, ref_calls = augmented
    assert ref_calls == [(0, b) for b in range(3)]  # seeded by (train.seed, batch index)
    params = make_world(tmp_path, RUN)

    def stop(counters):
        if counters["step"] >= 4:  # right after the step-4 checkpoint: batch 2 runs after the resume
            raise Stop

    with pytest.raises(Stop):
        train(load_params(params), on_step=stop)
    calls = _spy(monkeypatch)
    train(load_params(params))
    assert calls == [(0, 2)]  # the resumed run draws the augmentation the uninterrupted run drew there
    run = tmp_path / "models" / "toy"
    for name in ("latest.weights", "best.weights"):
        ref, got = _weights(reference / name), _weights(run / name)
        assert all(torch.equal(ref[k], got[k]) for k in ref), name


def test_tensorboard_gets_the_dvclive_scalars(augmented):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reference, _ = augmented
    events = list((reference / "dvclive" / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(reference / "dvclive" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    metrics = json.loads((reference / "dvclive" / "metrics.json").read_text())
    assert {k for k in metrics if k != "step"} <= tags
    assert {"loss", "grad_norm", "val_loss", "lr", "grad_norm_out_of_range"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [2, 4, 6]
    assert acc.Scalars("loss")[-1].value == pytest.approx(metrics["loss"])


def test_grad_norm_out_of_range_is_a_dvclive_metric(augmented):
    reference, _ = augmented
    rows = (reference / "dvclive" / "plots" / "metrics" / "grad_norm_out_of_range.tsv").read_text().splitlines()[1:]
    norms = (reference / "dvclive" / "plots" / "metrics" / "grad_norm.tsv").read_text().splitlines()[1:]
    flags = [float(r.split("\t")[-1]) for r in rows]
    train_params = json.loads((reference / "config.json").read_text())["params"]["train"]
    low, high = TrainParams(**train_params).grad_norm_bounds   # scaled by trunc_t: the official summed loss
    assert (low, high) == (0.5 * train_params["trunc_t"], 5.0 * train_params["trunc_t"])
    expected = [float(not low <= float(r.split("\t")[-1]) <= high) for r in norms]
    assert flags == expected and set(flags) <= {0.0, 1.0}


def test_a_single_set_run_logs_no_per_set_val_losses(augmented):
    reference, _ = augmented   # validation of one set is the one val_loss, as before sample.mix existed
    assert not (reference / "dvclive" / "plots" / "metrics" / "val").exists()
    assert set(json.loads((reference / "best.json").read_text())) == {"val_loss", "step", "frames"}
