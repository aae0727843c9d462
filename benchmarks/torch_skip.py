"""A PyTorch reference of the original's `skip` generator and fitting step, for the benchmark.

Written for the benchmark (the original code is not vendored): the same
modules, in the same registration order, as the original `models/skip.py`, so
its `state_dict()` converts with `dip_jax.convert.from_torch_state_dict` and
loads the golden fixtures' state dicts by position. Covers what the default
net needs (bilinear/nearest upsampling, stride downsampling, reflection or
zero padding, LeakyReLU); `benchmark.py --check` proves it computes what the
golden fixture and dip_jax compute.

Contract: `build_skip(config)` takes a `dip_jax.nets.SkipConfig` and returns
an `nn.Module` mapping NCHW float32 to NCHW float32. `TorchFit` runs the
original notebook's step (input noise, forward, MSE, backward, Adam, output
averaging, PSNR of the fit) on one image; everything stays on one device.
Needs `torch` (the `[torch]` extra).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn


class Concat(nn.Module):
    """The original `Concat(dim, *modules)`: run each, centre-crop to the smallest, concatenate."""

    def __init__(self, dim: int, *modules: nn.Module):
        super().__init__()
        self.dim = dim
        for idx, module in enumerate(modules):
            self.add_module(str(idx), module)

    def forward(self, x):
        outs = [m(x) for m in self._modules.values()]
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        cropped = []
        for o in outs:
            dh = (o.shape[2] - h) // 2
            dw = (o.shape[3] - w) // 2
            cropped.append(o[:, :, dh : dh + h, dw : dw + w])
        return torch.cat(cropped, dim=self.dim)


def _act(name: str) -> nn.Module:
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.2, inplace=True)
    if name == "ELU":
        return nn.ELU()
    if name == "ReLU":
        return nn.ReLU()
    if name == "none":
        return nn.Sequential()
    raise ValueError(f"the torch reference has no activation {name!r}; use LeakyReLU, ELU, ReLU or none")


def _conv(in_f: int, out_f: int, k: int, stride: int = 1, bias: bool = True, pad: str = "zero") -> nn.Module:
    """The original `conv(...)` for stride downsampling: [ReflectionPad2d], Conv2d."""
    to_pad = (k - 1) // 2
    layers = []
    if pad == "reflection" and to_pad:
        layers.append(nn.ReflectionPad2d(to_pad))
        to_pad = 0
    layers.append(nn.Conv2d(in_f, out_f, k, stride, padding=to_pad, bias=bias))
    return nn.Sequential(*layers)


def build_skip(cfg) -> nn.Module:
    """The original `skip(...)` for a `SkipConfig` (stride downsampling only)."""
    if any(m != "stride" for m in cfg.downsample_modes):
        raise ValueError("the torch reference implements downsample_mode='stride' only; use the default net")
    n = cfg.num_scales
    down, up, skip = cfg.num_channels_down, cfg.num_channels_up, cfg.num_channels_skip
    k_down, k_up, up_modes = cfg.filter_sizes_down, cfg.filter_sizes_up, cfg.upsample_modes
    bias, pad, act = cfg.need_bias, cfg.pad, cfg.act_fun

    model = nn.Sequential()
    model_tmp = model
    input_depth = cfg.num_input_channels
    for i in range(n):
        deeper = nn.Sequential()
        skip_branch = nn.Sequential()
        if skip[i] != 0:
            model_tmp.append(Concat(1, skip_branch, deeper))
        else:
            model_tmp.append(deeper)
        model_tmp.append(nn.BatchNorm2d(skip[i] + (up[i + 1] if i < n - 1 else down[i])))
        if skip[i] != 0:
            skip_branch.append(_conv(input_depth, skip[i], cfg.filter_skip_size, bias=bias, pad=pad))
            skip_branch.append(nn.BatchNorm2d(skip[i]))
            skip_branch.append(_act(act))
        deeper.append(_conv(input_depth, down[i], k_down[i], 2, bias=bias, pad=pad))
        deeper.append(nn.BatchNorm2d(down[i]))
        deeper.append(_act(act))
        deeper.append(_conv(down[i], down[i], k_down[i], bias=bias, pad=pad))
        deeper.append(nn.BatchNorm2d(down[i]))
        deeper.append(_act(act))
        deeper_main = nn.Sequential()
        if i == n - 1:
            k = down[i]
        else:
            deeper.append(deeper_main)
            k = up[i + 1]
        upsample_kw = {"align_corners": False} if up_modes[i] == "bilinear" else {}
        deeper.append(nn.Upsample(scale_factor=2, mode=up_modes[i], **upsample_kw))
        model_tmp.append(_conv(skip[i] + k, up[i], k_up[i], 1, bias=bias, pad=pad))
        model_tmp.append(nn.BatchNorm2d(up[i]))
        model_tmp.append(_act(act))
        if cfg.need1x1_up:
            model_tmp.append(_conv(up[i], up[i], 1, bias=bias, pad=pad))
            model_tmp.append(nn.BatchNorm2d(up[i]))
            model_tmp.append(_act(act))
        input_depth = down[i]
        model_tmp = deeper_main
    model.append(_conv(up[0], cfg.num_output_channels, 1, bias=bias, pad=pad))
    if cfg.need_sigmoid:
        model.append(nn.Sigmoid())
    return model


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def load_by_position(net: nn.Module, state_dict: "OrderedDict[str, np.ndarray]") -> None:
    """Load an original state dict (e.g. a golden fixture's) by position, not by name."""
    own = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    if len(own) != len(theirs):
        raise ValueError(f"the state dict has {len(theirs)} entries but the net has {len(own)}")
    mapped = {}
    for mine, other in zip(own, theirs):
        value = torch.from_numpy(np.ascontiguousarray(state_dict[other]))
        if tuple(net.state_dict()[mine].shape) != tuple(value.shape):
            raise ValueError(f"{mine}: shape {tuple(value.shape)} does not fit {tuple(net.state_dict()[mine].shape)}")
        mapped[mine] = value
    net.load_state_dict(mapped, strict=False)


def state_dict_numpy(net: nn.Module) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in net.state_dict().items())


class TorchFit:
    """The original denoising notebook's `closure()` + `optimizer.step()`, on one image.

    Per step: `z_t = z + reg_noise_std * N(0, 1)`, `out = net(z_t)`, MSE to the
    target, backward, Adam (PyTorch defaults), `out_avg = 0.99 * out_avg +
    0.01 * out`, PSNR of the output against the target. The PSNR stays a
    device tensor (the original's `.cpu().numpy()` per step would add a sync
    that dip_jax does not pay), so both sides do the same work.
    """

    def __init__(self, net: nn.Module, z: torch.Tensor, target: torch.Tensor, *, lr: float = 0.01,
                 reg_noise_std: float = 1.0 / 30.0, ema_decay: float = 0.99):
        self.net = net
        self.z = z
        self.target = target
        self.reg_noise_std = reg_noise_std
        self.ema_decay = ema_decay
        self.noise = torch.empty_like(z)
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.out_avg = None
        self.last_psnr = None

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        z = self.z + self.noise.normal_() * self.reg_noise_std if self.reg_noise_std > 0 else self.z
        out = self.net(z)
        loss = torch.mean((out - self.target) ** 2)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            o = out.detach()
            d = self.ema_decay
            self.out_avg = o.clone() if self.out_avg is None else self.out_avg.mul_(d).add_(o, alpha=1 - d)
            mse = torch.mean((o - self.target) ** 2)
            self.last_psnr = -10.0 * torch.log10(mse)


def default_init_seeded(net: nn.Module, seed: int) -> None:
    """Re-draw PyTorch's default init from a seed (so the benchmark is reproducible)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            bound = 1.0 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=g)
