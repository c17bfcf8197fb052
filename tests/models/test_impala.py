"""The image branch: shapes, channel-major flatten and the VPT fan-in init (reference/vpt README §7)."""

from __future__ import annotations

import torch

from steve1.models.impala import ImgObsProcess, fan_in_init_


def test_image_branch_shapes_and_keys():
    proc = ImgObsProcess((128, 128, 3), [8, 16, 16], hidsize=32)
    assert proc.cnn.dense.norm.normalized_shape == (16 * 16 * 16,)
    assert proc.cnn.stacks[0].firstconv.norm is None and proc.cnn.stacks[0].firstconv.layer.bias is not None
    assert proc.cnn.stacks[1].firstconv.layer.bias is None
    out = proc(torch.randint(0, 256, (2, 3, 128, 128, 3), dtype=torch.uint8))
    assert out.shape == (2, 3, 32) and (out >= 0).all()


def test_stack_checkpointing_is_exact():
    torch.manual_seed(0)
    proc = ImgObsProcess((64, 64, 3), [4, 8, 8], hidsize=16)
    img = torch.randint(0, 256, (1, 2, 64, 64, 3), dtype=torch.uint8)
    grads = []
    for enabled in (False, True):
        proc.cnn.set_gradient_checkpointing(enabled)
        proc.zero_grad()
        proc(img).square().sum().backward()
        grads.append(proc.cnn.stacks[0].firstconv.layer.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_fan_in_init_sets_unit_norms():
    layer = torch.nn.Conv2d(3, 5, 3)
    fan_in_init_(layer, 1.4)
    norms = layer.weight.reshape(5, -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((5,), 1.4))
    assert (layer.bias == 0).all()


def test_one_env_step_gives_the_same_bits_on_one_and_two_threads():
    """A rollout's single frame: channels-last GroupNorm would split its statistics across threads."""
    torch.manual_seed(0)
    proc = ImgObsProcess((128, 128, 3), [8, 16, 16], hidsize=32).eval()
    img = torch.randint(0, 256, (1, 1, 128, 128, 3), dtype=torch.uint8)
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                out.append(proc(img))
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert torch.equal(out[0], out[1])
