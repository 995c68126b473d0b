"""Decoder-only transformers for causal language modelling, after nanoGPT's GPT-2 (pre-norm).

Each block is two residual branches, ``x + attn(ln1(x))`` and ``x + mlp(ln2(x))``: DNAT finds
each as an edge (``none``: the branch removed, ``identity``: x in its place) beside the skip of
its join. Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with
``is_causal=True``; the head shares its weight with the token embedding (Press & Wolf 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import EntryPoint, register_model

_REFERENCE = "https://github.com/karpathy/nanoGPT"

# name → (blocks, width, heads): heads of 32 channels; sizes that train on a CPU (nanoGPT's
# character-level Shakespeare model, 6 blocks of width 384, is 17× gpt-mini's parameters)
GPT_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt-micro": (2, 64, 2),  # tests and smoke runs
    "gpt-mini": (4, 128, 4),  # the quick recipe's network: minutes on a 2-core CPU
    "gpt-small": (6, 192, 6),
}
MLP_RATIO = 4  # GPT-2's hidden width of the MLP, a multiple of the model's width
DEFAULT_VOCAB = 256  # byte-level tokens (fxdnat/text.py)
DEFAULT_CONTEXT = 128

_CELL_MODE = (
    "every block has the same structure: its attention branch, its MLP branch and their skips "
    "each share one θ row across the blocks"
)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t reads positions ≤ t only."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no size is read: the traced graph holds no shape arithmetic, only what computes
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # (B, T, C) → (B, heads, T, C / heads)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # (B, heads, T, C / heads) → (B, T, C)
        return self.proj(y.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    """Linear C → 4C, GELU, Linear 4C → C."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width)
        self.proj = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: two residual branches."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) int64, T ≤ ``context`` → next-token logits (B, T, ``vocab_size``)."""

    def __init__(self, blocks: int, width: int, heads: int, vocab_size: int, context: int) -> None:
        super().__init__()
        for what, value in (("vocab_size", vocab_size), ("context", context)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self.context = context
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(blocks)))
        self.ln_f = nn.LayerNorm(width)
        self.apply(_init)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2: residual writes scaled by depth
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * blocks))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        # the position table's first t rows, (T, C), broadcast over the batch
        x = self.tok(idx) + self.pos.weight[:t]
        x = self.ln_f(self.blocks(x))
        return F.linear(x, self.tok.weight)  # the head: tied to the token embedding


def _init(module: nn.Module) -> None:
    # GPT-2 / nanoGPT: normal(0, 0.02) weights, zero biases; LayerNorm keeps (1, 0)
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def gpt_params(
    blocks: int, width: int, vocab: int = DEFAULT_VOCAB, context: int = DEFAULT_CONTEXT
) -> int:
    """Parameters as nanoGPT counts them with biases and the tied head counted once: the
    embeddings, 12·C² + 13·C per block (qkv, proj, fc, proj and two LayerNorms), a final
    LayerNorm."""
    return (vocab + context) * width + blocks * (12 * width * width + 13 * width) + 2 * width


def _register(name: str) -> Callable[[EntryPoint], EntryPoint]:
    blocks, width, heads = GPT_SIZES[name]
    return register_model(
        name=name,
        family="gpt",
        description=(
            f"decoder-only pre-norm transformer: {blocks} blocks, width {width}, {heads} "
            f"head{'s' if heads > 1 else ''} (causal LM)"
        ),
        reference=_REFERENCE,
        params=gpt_params(blocks, width),
        cell_mode=_CELL_MODE,
        default_recipe="quick",
        task="causal-lm",
    )


@_register("gpt-micro")
def gpt_micro(vocab_size: int = DEFAULT_VOCAB, context: int = DEFAULT_CONTEXT) -> nn.Module:
    return GPT(*GPT_SIZES["gpt-micro"], vocab_size, context)


@_register("gpt-mini")
def gpt_mini(vocab_size: int = DEFAULT_VOCAB, context: int = DEFAULT_CONTEXT) -> nn.Module:
    return GPT(*GPT_SIZES["gpt-mini"], vocab_size, context)


@_register("gpt-small")
def gpt_small(vocab_size: int = DEFAULT_VOCAB, context: int = DEFAULT_CONTEXT) -> nn.Module:
    return GPT(*GPT_SIZES["gpt-small"], vocab_size, context)
