"""FLOP counting that sees attention on every device.

`torch.utils.flop_counter.FlopCounterMode` has formulas for the CUDA kernels of scaled-dot-product attention (flash,
memory-efficient, cuDNN) but not for the CPU one (`aten._scaled_dot_product_flash_attention_for_cpu`), so on CPU it
counted 0 FLOPs for every attention layer — 21 % of an SD UNet training step went missing (issue 17). `flop_counter()`
registers the same formulas (torch's `sdpa_flop_count`, `sdpa_backward_flop_count`: 4·B·H·L·S·D forward, 2.5× that
backward — the fused backward computes the score matrix again, so that is hardware FLOPs; the model's own backward is
2×) for the CPU kernels. `tests/test_flops.py` checks the count against attention written as plain matmuls.
"""

from __future__ import annotations

from typing import Any


def _cpu_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                       **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter(display: bool = False) -> Any:
    """A `FlopCounterMode` that also counts the CPU attention kernels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward)):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = formula
    return FlopCounterMode(display=display, custom_mapping=mapping)
