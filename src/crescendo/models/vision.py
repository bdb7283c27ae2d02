"""Small image classifiers trained here as reference models: `resnet-mini` and `vit-mini`.

Every model has the same outline, so that one layer-by-layer engine can walk it like a decoder stack:

    logits = model.head(blocks(model.stem(x)))   with blocks applied one after another

- `stem`: everything before the first block (ResNet: conv + batch norm + ReLU; ViT: patch embedding,
  class token, position embeddings). It checks the input shape against the config.
- `blocks`: an nn.ModuleList; each block maps one tensor to one tensor (ResNet: (B, C, H, W) feature
  maps; ViT: (B, T, D) token sequences).
- `head`: the last block's output -> (B, num_classes) logits.

Each architecture has a frozen config dataclass validated in `__post_init__`: sizes are bounded and the
parameter count is estimated before any tensor is allocated, so a crafted config.json cannot ask for
gigabytes.

Example:
    >>> model = build_vision_model(ResNetMiniConfig(image_size=8, widths=(8, 16), depths=(1, 1), strides=(1, 2)))
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

MAX_PARAMETERS = 50_000_000  # reference models are ~0.1-1M parameters; refuse anything absurd before allocating
VISION_ARCHS = ("resnet-mini", "vit-mini")


def _check_int(arch: str, name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelError(f"{arch} config: {name} must be an integer in [{low}, {high}], got {value!r}")


def _check_common(cfg) -> None:
    _check_int(cfg.arch, "image_size", cfg.image_size, 4, 512)
    _check_int(cfg.arch, "in_channels", cfg.in_channels, 1, 16)
    _check_int(cfg.arch, "num_classes", cfg.num_classes, 2, 10_000)


def _check_parameters(cfg, count: int) -> None:
    if count > MAX_PARAMETERS:
        raise ModelError(f"{cfg.arch} config asks for about {count:,} parameters; the limit is {MAX_PARAMETERS:,}")


@dataclass(frozen=True)
class ResNetMiniConfig:
    """A small ResNet: stem conv, stages of BasicBlocks (a stage's first block strides), GAP, linear head."""

    arch: ClassVar[str] = "resnet-mini"
    image_size: int = 28  # square inputs of this side
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)  # channels of each stage (the stem outputs widths[0])
    depths: tuple[int, ...] = (1, 1, 1)  # BasicBlocks per stage
    strides: tuple[int, ...] = (1, 2, 2)  # stride of each stage's first block (2 halves the resolution)

    def __post_init__(self) -> None:
        _check_common(self)
        for name in ("widths", "depths", "strides"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not 1 <= len(value) <= 6:
                raise ModelError(f"{self.arch} config: {name} must be a tuple of 1 to 6 integers, got {value!r}")
        if not len(self.widths) == len(self.depths) == len(self.strides):
            raise ModelError(f"{self.arch} config: {len(self.widths)} widths, {len(self.depths)} depths and "
                             f"{len(self.strides)} strides; one of each per stage")
        for i, (w, d, s) in enumerate(zip(self.widths, self.depths, self.strides)):
            _check_int(self.arch, f"widths[{i}]", w, 1, 2048)
            _check_int(self.arch, f"depths[{i}]", d, 1, 16)
            _check_int(self.arch, f"strides[{i}]", s, 1, 2)
        if self.image_size >> sum(s == 2 for s in self.strides) < 1:
            raise ModelError(f"{self.arch} config: strides {self.strides} shrink a {self.image_size}-pixel image "
                             f"below one pixel")
        _check_parameters(self, self.parameter_estimate())

    def parameter_estimate(self) -> int:
        """Weights of every conv and linear layer (batch-norm vectors are negligible)."""
        count, c_in = 9 * self.in_channels * self.widths[0], self.widths[0]
        for w, d in zip(self.widths, self.depths):
            count += 9 * c_in * w + 9 * w * w * (2 * d - 1) + c_in * w  # the last term: a projection shortcut
            c_in = w
        return count + c_in * self.num_classes


@dataclass(frozen=True)
class ViTMiniConfig:
    """A small pre-norm ViT: patch embedding, learned positions, transformer blocks, LayerNorm, linear head."""

    arch: ClassVar[str] = "vit-mini"
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    patch_size: int = 7  # 28/7 -> 4x4 = 16 tokens (patch 4's 49 tokens cost 2x the CPU time per epoch)
    dim: int = 96  # token width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads; dim must divide evenly
    mlp_dim: int = 192  # hidden width of each block's MLP (fc1 -> GELU -> fc2)
    pool: str = "mean"  # "mean" over tokens, or "cls" (a learned class token read by the head)

    def __post_init__(self) -> None:
        _check_common(self)
        _check_int(self.arch, "patch_size", self.patch_size, 1, self.image_size)
        _check_int(self.arch, "dim", self.dim, 8, 2048)
        _check_int(self.arch, "depth", self.depth, 1, 32)
        _check_int(self.arch, "heads", self.heads, 1, 64)
        _check_int(self.arch, "mlp_dim", self.mlp_dim, 1, 8192)
        if self.image_size % self.patch_size:
            raise ModelError(f"{self.arch} config: patch_size {self.patch_size} does not divide image_size "
                             f"{self.image_size}")
        if self.num_patches > 4096:
            raise ModelError(f"{self.arch} config: {self.num_patches} patches; at most 4096")
        if self.dim % self.heads:
            raise ModelError(f"{self.arch} config: dim {self.dim} is not a multiple of heads {self.heads}")
        if self.pool not in ("mean", "cls"):
            raise ModelError(f"{self.arch} config: pool must be 'mean' or 'cls', got {self.pool!r}")
        _check_parameters(self, self.parameter_estimate())

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + (self.pool == "cls")

    def parameter_estimate(self) -> int:
        d = self.dim
        return (self.in_channels * self.patch_size ** 2 * d + self.num_tokens * d
                + self.depth * (4 * d * d + 2 * d * self.mlp_dim) + d * self.num_classes)


VisionConfig = ResNetMiniConfig | ViTMiniConfig
CONFIGS: dict[str, type] = {"resnet-mini": ResNetMiniConfig, "vit-mini": ViTMiniConfig}


def config_to_dict(config: VisionConfig) -> dict:
    """{"arch": ..., field: value, ...} with tuples as lists (JSON)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {"arch": config.arch, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def config_from_dict(data: dict) -> VisionConfig:
    """Inverse of `config_to_dict`; unknown arch or fields raise ModelError, values are validated."""
    if not isinstance(data, dict):
        raise ModelError(f"a vision config must be a JSON object, got {type(data).__name__}")
    arch = data.get("arch")
    if arch not in CONFIGS:
        raise ModelError(f"unknown vision architecture {arch!r}; known: {', '.join(VISION_ARCHS)}")
    cls = CONFIGS[arch]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"arch"})
    if unknown:
        raise ModelError(f"{arch} config: unknown fields {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "arch"}
    return cls(**values)


class _InputCheck(nn.Module):
    """Base of the stems: refuses inputs whose shape is not (B, C, H, W) of the config."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.expected = (config.in_channels, config.image_size, config.image_size)
        self.arch = config.arch

    def check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.expected:
            c, h, w = self.expected
            raise ModelError(f"{self.arch} takes images of shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")


# -- ResNet --------------------------------------------------------------------------------------
class ResNetStem(_InputCheck):
    def __init__(self, config: ResNetMiniConfig) -> None:
        super().__init__(config)
        self.conv = nn.Conv2d(config.in_channels, config.widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(config.widths[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus a shortcut (1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PoolHead(nn.Module):
    """Global average pool over H, W, then a linear classifier."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.fc(x.mean(dim=(2, 3)))


class VisionClassifier(nn.Module):
    """stem -> blocks -> head; the common outline of both architectures."""

    def __init__(self, config: VisionConfig, stem: nn.Module, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _resnet(config: ResNetMiniConfig) -> VisionClassifier:
    blocks, c_in = [], config.widths[0]
    for width, depth, stride in zip(config.widths, config.depths, config.strides):
        for i in range(depth):
            blocks.append(BasicBlock(c_in, width, stride=stride if i == 0 else 1))
            c_in = width
    model = VisionClassifier(config, ResNetStem(config), blocks, PoolHead(c_in, config.num_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# -- ViT -----------------------------------------------------------------------------------------
class PatchEmbedding(_InputCheck):
    """Non-overlapping patches -> tokens (a conv with kernel = stride = patch), class token, positions."""

    def __init__(self, config: ViTMiniConfig) -> None:
        super().__init__(config)
        self.proj = nn.Conv2d(config.in_channels, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim)) if config.pool == "cls" else None
        # positions start at about the scale of the patch embeddings (std 0.5, not ViT's 0.02): with mean
        # pooling and a few epochs of small data, faint positions leave the model blind to where a patch is
        self.pos_embedding = nn.Parameter(torch.randn(1, config.num_tokens, config.dim) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, T, D)
        self.check(x)
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return tokens + self.pos_embedding


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (each an nn.Linear a method can target)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, nh, T, hs)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then + fc2(GELU(fc1(norm2(x))))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TokenHead(nn.Module):
    """Final LayerNorm, pooling (class token or mean over tokens), linear classifier."""

    def __init__(self, dim: int, num_classes: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, classes)
        x = self.norm(x)
        return self.fc(x[:, 0] if self.pool == "cls" else x.mean(dim=1))


def _vit(config: ViTMiniConfig) -> VisionClassifier:
    blocks = [TransformerBlock(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth)]
    # torch's default (Kaiming-uniform) Linear init, not ViT's trunc_normal(0.02): trained from scratch for
    # minutes it learns far faster. Digits, 15 epochs, test accuracy: both 0.02 inits 40%, default Linear init
    # alone 59%, std-0.5 positions alone 63%, both changes 84%.
    return VisionClassifier(config, PatchEmbedding(config), blocks, TokenHead(config.dim, config.num_classes, config.pool))


def build_vision_model(config: VisionConfig) -> VisionClassifier:
    """A freshly initialised model of `config` (weights drawn from torch's global generator)."""
    if isinstance(config, ResNetMiniConfig):
        return _resnet(config)
    if isinstance(config, ViTMiniConfig):
        return _vit(config)
    raise ModelError(f"not a vision config: {type(config).__name__}; known archs: {', '.join(VISION_ARCHS)}")
