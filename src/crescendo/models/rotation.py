"""QuaRot-style randomized Hadamard rotation of LLaMA-family models (LLaMA, Mistral, Qwen2).

QuaRot (Ashkboos et al., 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", Section 4)
makes a model's activations easy to quantize without changing what it computes:

1. fold each RMSNorm's scale into the linears that read its output (its weight becomes 1), so that the
   norm is a pure x / rms(x), which commutes with any orthogonal Q;
2. rotate the residual stream by a randomized Hadamard Q: the embedding and every writer to the
   stream (o_proj, down_proj) produce x Q, every reader (q/k/v, gate/up, lm_head) absorbs Q^T;
3. rotate the MLP's intermediate activations with an *online* Hadamard before down_proj: its weight
   absorbs H offline (W H) and its input is multiplied by H at run time (W x = (W H)(H^T x));
4. optionally rotate each attention head's values by a Hadamard of order head_dim, absorbed entirely
   offline into v_proj and o_proj (attention mixes tokens, not channels, so the rotation passes through).

Every weight is transformed in float64 and cast back to its dtype. The function changes the model in
place and records a `RotationInfo` in the model's compression state (`crescendo.state`); the
online transforms are non-persistent, so `state_dict()` keys stay the same,
and loaders re-attach them from the saved state with `restore_rotation_`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..errors import ModelError
from ..kernels.hadamard import apply_hadamard, hadamard_matrix, random_hadamard_matrix
from ..state import RotationInfo, state_of
from ..transforms import add_input_transform_

logger = logging.getLogger(__name__)

class OnlineHadamard(nn.Module):
    """x -> x @ H on the last dimension, for a linear whose weight already absorbed H (W <- W H).

    The matrix is stored as sqrt(n) * H, whose entries are exactly ±1 for a true Hadamard matrix, so
    casting the model to half precision does not round the rotation; 1/sqrt(n) is applied in float32.
    The buffer is non-persistent: it is rebuilt from the config, never saved with the weights.
    """

    def __init__(self, H: torch.Tensor) -> None:
        super().__init__()
        n = H.shape[-1]
        self.n = n
        self.scale = 1.0 / math.sqrt(n)
        self.register_buffer("unscaled_H", (H.double() * math.sqrt(n)).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_hadamard(x, self.unscaled_H, self.scale)

    def extra_repr(self) -> str:
        return f"n={self.n}"


def _supported_classes() -> tuple[type, ...]:
    from transformers import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)


def _check_model(model: nn.Module) -> None:
    """Refuse anything that is not a (pre-norm, RMSNorm, gated-MLP) LLaMA-family causal LM."""
    name = type(model).__name__
    if not isinstance(model, _supported_classes()):
        raise ModelError(
            f"rotation supports LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM, not {name}"
        )
    if state_of(model).rotation is not None:
        raise ModelError(f"{name} is already rotated")
    inner = model.model
    norms = [inner.norm]
    for layer in inner.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    for norm in norms:
        # A LayerNorm (bias, mean subtraction) or a Gemma-style (1 + w) norm would not fold this way.
        if getattr(norm, "bias", None) is not None or not hasattr(norm, "variance_epsilon"):
            raise ModelError(f"{name} has a norm of type {type(norm).__name__}, expected an RMSNorm")


@torch.no_grad()
def _set_(param: torch.Tensor, value: torch.Tensor) -> None:
    """Write a float64 result into an existing parameter, keeping its dtype, device and identity."""
    param.copy_(value.to(param.dtype))


@torch.no_grad()
def _fuse_norm_(norm: nn.Module, linears: list[nn.Linear]) -> None:
    """W <- W diag(g) for every reader of the norm, then g <- 1 (QuaRot's fuse_ln_linear)."""
    g = norm.weight.double()
    for linear in linears:
        _set_(linear.weight, linear.weight.double() * g)
    norm.weight.fill_(1.0)


@torch.no_grad()
def _rotate_input_(linear: nn.Module, Q: torch.Tensor) -> None:
    """A reader of a rotated tensor: W <- W Q, so (x Q)(W Q)^T = x W^T. The bias is unaffected."""
    _set_(linear.weight, linear.weight.double() @ Q)


@torch.no_grad()
def _rotate_output_(linear: nn.Linear, Q: torch.Tensor) -> None:
    """A writer of a rotated tensor: W <- Q^T W and b <- Q^T b, so the output becomes y Q."""
    _set_(linear.weight, Q.T @ linear.weight.double())
    if linear.bias is not None:
        _set_(linear.bias, linear.bias.double() @ Q)


@torch.no_grad()
def _rotate_values_(attn: nn.Module, H: torch.Tensor, num_heads: int, num_kv_heads: int) -> None:
    """Per-head Hadamard on the values: v_h <- v_h H in v_proj, undone by o_proj's input columns.

    Attention output per head is a token mixture of that head's values, so o_h becomes o_h H too and
    W_o[:, h] <- W_o[:, h] H restores the sum. No online transform is needed (QuaRot's rotate_ov_proj).
    """
    head_dim = H.shape[0]
    v_proj, o_proj = attn.v_proj, attn.o_proj
    w_v = v_proj.weight.double().view(num_kv_heads, head_dim, -1)  # (kv, hd, hidden)
    _set_(v_proj.weight, torch.einsum("ji,kjc->kic", H, w_v).reshape(v_proj.weight.shape))
    if v_proj.bias is not None:
        b_v = v_proj.bias.double().view(num_kv_heads, head_dim)  # (kv, hd)
        _set_(v_proj.bias, (b_v @ H).reshape(-1))
    w_o = o_proj.weight.double().view(-1, num_heads, head_dim)  # (hidden, heads, hd)
    _set_(o_proj.weight, (w_o @ H).reshape(o_proj.weight.shape))


def _untie_head_(model: nn.Module) -> None:
    """Give lm_head its own Parameter and make the config say the weights are no longer tied."""
    head = model.lm_head
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    # transformers >= 5 keeps a precomputed {target: source} map that tie_weights() would reapply.
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        tied.pop("lm_head.weight", None)
    logger.warning(
        "rotation: lm_head was tied to embed_tokens; the final norm folds into lm_head only, so the two "
        "now differ: lm_head got its own weight and config.tie_word_embeddings was set to False"
    )


@torch.no_grad()
def rotate_llama_(model: nn.Module, seed: int = 0, value_hadamard: bool = True) -> RotationInfo:
    """Rotate a LLaMA / Mistral / Qwen2 causal LM with QuaRot's randomized Hadamard, in place.

    The rotated model computes the same function (up to float rounding) with incoherent weights and
    activations: the residual stream is rotated by Q = diag(s) H (hidden size, random signs from
    `seed`), an online Hadamard is attached to every `mlp.down_proj` input, and, with
    `value_hadamard`, each head's values are rotated offline. RMSNorm scales are folded first.
    A tied lm_head is untied (with a warning) unless the final norm's scale is exactly 1.

    Args:
        model: a transformers LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM.
        seed: seed of the random signs of Q.
        value_hadamard: also rotate attention values per head (exact, offline, no run-time cost).

    Returns:
        RotationInfo, also kept in the model's compression state (`state_of(model).rotation`).

    Raises:
        ModelError: unsupported architecture, non-RMSNorm norms, or a model that is already rotated.

    Example:
            info = rotate_llama_(model, seed=0)
            info.hidden_size, info.untied  # -> (576, True)
    """
    _check_model(model)
    config, inner = model.config, model.model
    hidden = config.hidden_size
    intermediate = config.intermediate_size
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or hidden // num_heads
    embed, head = inner.embed_tokens, model.lm_head
    device = embed.weight.device

    tied = head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr()
    untie = tied and not bool(torch.all(inner.norm.weight == 1))
    if untie:
        _untie_head_(model)

    Q = random_hadamard_matrix(hidden, seed).to(device)  # (hidden, hidden) float64
    H_int = hadamard_matrix(intermediate).to(device)  # (inter, inter)
    H_head = hadamard_matrix(head_dim).to(device) if value_hadamard else None

    _set_(embed.weight, embed.weight.double() @ Q)  # each token's vector e -> e Q
    if not tied or untie:
        # A head still tied to the embedding (unit final norm) got W_E Q with the line above.
        _fuse_norm_(inner.norm, [head])
        _rotate_input_(head, Q)
    else:
        inner.norm.weight.fill_(1.0)

    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fuse_norm_(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        _fuse_norm_(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _rotate_input_(reader, Q)
        _rotate_output_(attn.o_proj, Q)
        _rotate_output_(mlp.down_proj, Q)
        if H_head is not None:
            _rotate_values_(attn, H_head, num_heads, num_kv_heads)
        # W x = (W H)(H^T x): the weight absorbs H now, the input gets x @ H at run time. `first`
        # because an activation quantizer attached earlier must see the rotated input.
        _rotate_input_(mlp.down_proj, H_int)
        add_input_transform_(mlp.down_proj, OnlineHadamard(H_int.to(mlp.down_proj.weight.device)), first=True)

    info = RotationInfo(hidden, intermediate, seed, untie, value_hadamard)
    state_of(model).rotation = info
    logger.info(
        "rotation: %s rotated (hidden %d, online Hadamard %d on %d down_proj, seed %d)",
        type(model).__name__, hidden, intermediate, len(inner.layers), seed,
    )
    return info


def restore_rotation_(model: nn.Module, info: RotationInfo) -> None:
    """Re-attach the online Hadamards of a rotated model loaded from disk (weights already rotated)
    and record the rotation in its state. Needed by every loader of a rotated checkpoint."""
    H_int = hadamard_matrix(int(info.intermediate_size))
    for layer in model.model.layers:
        down = layer.mlp.down_proj
        add_input_transform_(down, OnlineHadamard(H_int.to(down.weight.device)), first=True)
    state_of(model).rotation = info
