"""The VPT image encoder: Impala CNN, its dense layer and the projection to the trunk width.

Module and parameter names follow the official state_dict (`net.img_process.cnn.stacks.0...`), so
official weights load with ``strict=True``. Facts: reference/vpt/README.md §7 (ImpalaCNN,
FanInInitReLULayer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CNN_OUTSIZE = 256  # hard-coded in the official ImgObsProcess


def fan_in_init_(layer: nn.Conv2d | nn.Linear, init_scale: float) -> None:
    """Rescale each output unit's weight vector to L2 norm ``init_scale`` and zero the bias (VPT init)."""
    with torch.no_grad():
        w = layer.weight
        norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
        w.mul_(init_scale / norm)
        if layer.bias is not None:
            layer.bias.zero_()


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with the same bits for any thread count.

    With fewer frames x groups than threads, torch's channels-last GroupNorm splits each group's
    statistics across threads (the sum's order, so its last bits, then depend on the thread count);
    with at least as many it gives each group to one thread. Few frames (one env step of a rollout)
    are therefore normalised on one thread: the bits every thread count gives with many frames.
    """
    threads = torch.get_num_threads()
    if x.shape[0] * norm.num_groups >= threads:
        return norm(x)
    torch.set_num_threads(1)
    try:
        return norm(x)
    finally:
        torch.set_num_threads(threads)


class FanInConv(nn.Module):
    """Optional GroupNorm(1) on the input -> 3x3 conv (bias only without norm) -> ReLU."""

    def __init__(self, inchan: int, outchan: int, norm: bool, init_scale: float = 1.0):
        super().__init__()
        self.norm = nn.GroupNorm(1, inchan) if norm else None
        self.layer = nn.Conv2d(inchan, outchan, kernel_size=3, padding=1, bias=not norm)
        fan_in_init_(self.layer, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = group_norm(self.norm, x)
        return F.relu(self.layer(x))


class FanInLinear(nn.Module):
    """Optional LayerNorm on the input -> Linear (bias only without norm) -> optional ReLU."""

    def __init__(self, insize: int, outsize: int, norm: bool = True, init_scale: float = 1.0,
                 activation: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(insize) if norm else None
        self.layer = nn.Linear(insize, outsize, bias=not norm)
        self.activation = activation
        fan_in_init_(self.layer, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = self.layer(x)
        return F.relu(x) if self.activation else x


class ResidualBlock(nn.Module):
    def __init__(self, chans: int, init_scale: float):
        super().__init__()
        s = init_scale ** 0.5  # the two convs share the block's scale
        self.conv0 = FanInConv(chans, chans, norm=True, init_scale=s)
        self.conv1 = FanInConv(chans, chans, norm=True, init_scale=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv0(x))


class ImpalaStack(nn.Module):
    """firstconv -> maxpool(3, stride 2) -> GroupNorm(1) -> residual blocks; halves H and W.

    With ``gradient_checkpointing`` the head (firstconv, pool, norm) and each residual block are
    recomputed in backward one at a time: a whole stack recomputed at once would hold stack 0's
    full-resolution activations, most of the CNN's memory.
    """

    def __init__(self, inchan: int, outchan: int, nblock: int, first_norm: bool):
        super().__init__()
        self.firstconv = FanInConv(inchan, outchan, norm=first_norm)
        self.n = nn.GroupNorm(1, outchan)  # post_pool_groups = 1
        self.blocks = nn.ModuleList(ResidualBlock(outchan, init_scale=nblock ** -0.5) for _ in range(nblock))
        self.gradient_checkpointing = False

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.firstconv(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # [N,C,H,W] -> [N,C,ceil(H/2),ceil(W/2)]
        return group_norm(self.n, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        x = checkpoint(self._head, x, use_reentrant=False) if ckpt else self._head(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        return x


class ImpalaCNN(nn.Module):
    """3 Impala stacks then LayerNorm -> Linear(C*H*W -> 256) -> ReLU."""

    def __init__(self, img_shape: tuple[int, int, int], chans: list[int], outsize: int, nblock: int = 2):
        super().__init__()
        h, w, c = img_shape
        self.stacks = nn.ModuleList()
        for i, outchan in enumerate(chans):
            # the first stack's conv has no input norm (and therefore a bias)
            self.stacks.append(ImpalaStack(c, outchan, nblock, first_norm=i > 0))
            c, h, w = outchan, (h + 1) // 2, (w + 1) // 2
        self.dense = FanInLinear(c * h * w, outsize, norm=True, init_scale=1.4)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for stack in self.stacks:
            stack.gradient_checkpointing = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stack in self.stacks:
            x = stack(x)  # [N,C,H,W] -> [N,C',H/2,W/2]
        x = x.flatten(1)  # [N,C,16,16] -> [N,C*256], channel-major
        return self.dense(x)  # [N,256]


class ImgObsProcess(nn.Module):
    """uint8 frames -> trunk features: /255, Impala CNN, then LayerNorm -> Linear -> ReLU to hidsize."""

    def __init__(self, img_shape: tuple[int, int, int], chans: list[int], hidsize: int):
        super().__init__()
        self.cnn = ImpalaCNN(img_shape, chans, CNN_OUTSIZE)
        self.linear = FanInLinear(CNN_OUTSIZE, hidsize, norm=True)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, t = img.shape[:2]
        x = img.to(self.linear.layer.weight.dtype) / 255.0  # [B,T,H,W,3] uint8 -> float in [0,1]
        x = x.reshape(b * t, *x.shape[2:]).permute(0, 3, 1, 2)  # -> [B*T,3,H,W]
        x = self.cnn(x)  # -> [B*T,256]
        x = self.linear(x)  # -> [B*T,hidsize]
        return x.reshape(b, t, -1)  # -> [B,T,hidsize]
