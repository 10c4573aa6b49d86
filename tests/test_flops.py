"""FLOP counting sees attention on CPU (issue 17: the stock counter gave it 0 FLOPs)."""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from livo.flops import flop_counter


def _inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    shapes = ((2, 4, 64, 16), (2, 4, 32, 16), (2, 4, 32, 16))  # B, H, L|S, D: cross-attention, 64 queries, 32 keys
    return tuple(torch.randn(*s, generator=generator, requires_grad=True) for s in shapes)


def _fused(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _matmuls(q, k, v):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def _count(counter, attention) -> tuple[int, int]:
    q, k, v = _inputs()
    with counter:
        out = attention(q, k, v)
    forward = counter.get_total_flops()
    with counter:
        out.sum().backward()
    return forward, counter.get_total_flops()


def test_the_stock_counter_misses_cpu_attention_and_ours_counts_it():
    assert _count(FlopCounterMode(display=False), _fused) == (0, 0)
    forward, backward = _count(flop_counter(), _fused)
    assert forward == 4 * 2 * 4 * 64 * 32 * 16  # 4·B·H·L·S·D: the two matmuls of attention
    # the same forward FLOPs as attention written as plain matmuls (which the stock counter does see)
    matmul_forward, matmul_backward = _count(FlopCounterMode(display=False), _matmuls)
    assert forward == matmul_forward
    # backward: torch's formula for the fused kernels (used for CUDA too) counts the score matrix the kernel computes
    # again, 2.5x the forward; the matmul version's backward is the 2x of the model's own FLOPs
    assert backward == int(2.5 * forward) and matmul_backward == 2 * forward
