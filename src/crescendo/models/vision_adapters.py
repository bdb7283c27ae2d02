"""Adapters of crescendo's vision classifiers (`resnet-mini`, `vit-mini`): stem -> blocks -> head.

The engine walks `model.blocks` like a decoder stack: calibration batches are images (B, C, H, W)
run through `model(images)`, the first block's inputs are captured, each block's layers are
compressed in turn. What differs from a language model lives here: how a batch runs, how the last
block's output becomes logits (`model.head`), how many output positions each layer computes per
image (a conv's H_out x W_out, a ViT's tokens) for BOP accounting, and which convolutions a batch
norm follows (for the `foldbn` stage).

Example:
    >>> from crescendo.models.vision import ResNetMiniConfig, build_vision_model
    >>> model = build_vision_model(ResNetMiniConfig(image_size=8, widths=(8,), depths=(1,), strides=(1,)))
    >>> vision_adapter(model).family
    'resnet-mini'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .adapter_base import Adapter, _get_optional
from .vision import VisionClassifier, ViTMiniConfig

# (conv, the batch norm that follows it), relative to the stem and to each block
_RESNET_BN_PAIRS = (("conv", "bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("shortcut.0", "shortcut.1"))


@dataclass(frozen=True)
class VisionAdapter(Adapter):
    """A crescendo vision classifier: `stem`, an nn.ModuleList `blocks`, `head`."""

    batchnorm_pairs_in: tuple[tuple[str, str], ...] = ()  # (conv, batch norm) suffixes in the stem and blocks

    def run(self, model: nn.Module, batch: torch.Tensor):
        return model(batch)

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return model.head(hidden)

    def head_dim(self, model: nn.Module) -> int:
        config = model.config
        if not isinstance(config, ViTMiniConfig):
            raise ModelError(f"{self.family} has no attention heads")
        return config.dim // config.heads

    def check_kv_supported(self, targets: Iterable[str]) -> None:
        if self.kv_suffixes is None:
            raise ConfigError(f"KV quantization needs key/value projections; {self.family} has none")
        super().check_kv_supported(targets)

    def set_layer_count_(self, model: nn.Module, count: int, kept: list[int]) -> None:
        raise ModelError(f"{self.family}: block removal is not supported (its config is fixed)")

    def check_block_removal(self) -> None:
        raise ConfigError(f"block removal (sleb) scores candidates by the causal-LM loss; {self.family} is a "
                          f"classifier")

    @torch.no_grad()
    def positions(self, model: nn.Module) -> dict[str, int]:
        """H_out x W_out of every block conv and the token count of every block linear, per image,
        measured by one forward pass of a blank image."""
        layers = self.all_block_linears(model)
        out: dict[str, int] = {}

        def hook_for(name: str):
            def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                out[name] = int(output[0].numel() // (output.shape[1] if isinstance(module, nn.Conv2d)
                                                       else output.shape[-1]))
            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
        try:
            config = model.config
            param = next(model.parameters())
            was_training = model.training
            model.eval()
            try:
                model(torch.zeros(1, config.in_channels, config.image_size, config.image_size,
                                  dtype=param.dtype, device=param.device))
            finally:
                model.train(was_training)
        finally:
            for h in handles:
                h.remove()
        return out

    def batchnorm_pairs(self, model: nn.Module) -> list[tuple[str, str]]:
        """(conv name, batch-norm name) of every BatchNorm2d that directly follows a conv (unfolded ones)."""
        prefixes = ["stem"] + [f"{self.blocks_path}.{i}" for i in range(len(self.blocks(model)))]
        pairs = []
        for prefix in prefixes:
            for conv, bn in self.batchnorm_pairs_in:
                c, b = _get_optional(model, f"{prefix}.{conv}"), _get_optional(model, f"{prefix}.{bn}")
                if isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((f"{prefix}.{conv}", f"{prefix}.{bn}"))
        return pairs


_VISION_ADAPTERS = {
    "resnet-mini": VisionAdapter("resnet-mini", "blocks", "", "", None, modality="image",
                                 batchnorm_pairs_in=_RESNET_BN_PAIRS),
    "vit-mini": VisionAdapter("vit-mini", "blocks", "head.norm", "", ("k_proj", "v_proj"), modality="image"),
}


def vision_adapter(model: nn.Module) -> VisionAdapter | None:
    """The adapter of a crescendo vision classifier; None for any other model."""
    if not isinstance(model, VisionClassifier):
        return None
    arch = model.config.arch
    if arch not in _VISION_ADAPTERS:
        raise ModelError(f"no architecture adapter for vision architecture {arch!r} "
                         f"(supported: {', '.join(sorted(_VISION_ADAPTERS))})")
    return _VISION_ADAPTERS[arch]
