"""steve1.train.augment: seeded, per-sequence colour jitter and grayscale of uint8 frame batches."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from steve1.params import AugmentParams
from steve1.train.augment import _shift_hue, augment_frames, augment_generator, sample_params

ON = AugmentParams(enabled=True)
ZERO = AugmentParams(enabled=True, brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)


def batch(b=4, t=3, h=8, w=10, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, h, w, 3), generator=g, dtype=torch.uint8)


def test_disabled_is_identity():
    x = batch()
    out = augment_frames(x, AugmentParams(), seed=0, step=0)
    assert out is x


def test_zero_ranges_leave_frames_unchanged():
    x = batch()
    torch.testing.assert_close(augment_frames(x, ZERO, seed=3, step=7), x, rtol=0, atol=0)


def test_output_dtype_shape_and_input_untouched():
    x = batch()
    before = x.clone()
    out = augment_frames(x, ON, seed=0, step=1)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    assert torch.equal(x, before)


def test_same_seed_and_step_reproduce_other_steps_differ():
    x = batch()
    a = augment_frames(x, ON, seed=1, step=10)
    assert torch.equal(a, augment_frames(x, ON, seed=1, step=10))       # a resumed run gets the same
    assert not torch.equal(a, augment_frames(x, ON, seed=1, step=11))
    assert not torch.equal(a, augment_frames(x, ON, seed=2, step=10))


def test_same_parameters_for_every_frame_of_a_sequence_different_across_batch():
    frame = batch(b=1, t=1, seed=5)
    x = frame.expand(6, 4, -1, -1, -1).contiguous()                     # 6 sequences of 4 equal frames
    out = augment_frames(x, AugmentParams(enabled=True, grayscale_p=0), seed=0, step=0)
    assert torch.equal(out, out[:, :1].expand_as(out))                    # constant along T
    assert len({out[i].numpy().tobytes() for i in range(6)}) == 6        # distinct per sequence


def test_grayscale_gives_equal_channels():
    out = augment_frames(batch(), AugmentParams(enabled=True, grayscale_p=1.0), seed=0, step=0)
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2])


def test_brightness_only_matches_its_formula():
    cfg = AugmentParams(enabled=True, brightness=0.5, contrast=0, saturation=0, hue=0, grayscale_p=0)
    x = batch()
    factor = sample_params(len(x), cfg, augment_generator(4, 2))["brightness"].view(-1, 1, 1, 1, 1)
    want = (x.float() / 255 * factor).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert torch.equal(augment_frames(x, cfg, seed=4, step=2), want)
    assert ((factor >= 0.5) & (factor <= 1.5)).all()


def test_hue_shift_matches_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.random((1, 1, 5, 7, 3)).astype(np.float32)
    shift = 0.13
    got = _shift_hue(torch.from_numpy(rgb.copy()), torch.full((1, 1, 1, 1, 1), shift)).numpy()
    want = np.empty_like(rgb)
    for idx in np.ndindex(rgb.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*rgb[idx])
        want[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    np.testing.assert_allclose(got, want, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 1, 3)
    np.testing.assert_allclose(_shift_hue(red, torch.full((1, 1, 1, 1, 1), 1 / 3)).flatten().numpy(),
                               [0, 1, 0], atol=1e-6)


def test_rejects_bad_config_and_bad_frames():
    with pytest.raises(ValueError, match=r"hue[\s\S]*less than or equal to 0.5"):
        AugmentParams(hue=0.7)
    with pytest.raises(ValueError, match="expects uint8"):
        augment_frames(batch().float(), ON, seed=0, step=0)
