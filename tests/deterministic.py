"""Deterministic weights and inputs for comparing our networks with reference implementations.

A reference network is filled with :func:`deterministic_state` once, its outputs are stored
under ``tests/data``, and the tests refill our network the same way and compare. The rules
depend only on each tensor's key, shape and dtype, so the same fill applies to any network
whose state dict has the same keys; each test states the rules that apply to its network in
a ``FILL_DESCRIPTION`` that is stored beside the expected outputs.
"""

from __future__ import annotations

import math

import torch


def deterministic_state(reference: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Fills a state dict deterministically.

    One ``torch.Generator`` (CPU) seeded with ``seed`` draws once per floating tensor, keys
    visited in ``sorted()`` order:

    * weights (keys ending ``weight``) with two or more dimensions: ``randn * sqrt(2 / fan_in)``,
      ``fan_in`` being the product of all dimensions but the first;
    * one-dimensional weights (normalisation gains): ``1 + 0.1 * randn``;
    * keys ending ``running_var``: ``1 + 0.5 * rand``;
    * keys ending ``relative_position_bias_table``: ``randn``;
    * every other floating tensor (biases, running means): ``0.05 * randn``.

    Integer tensors (``num_batches_tracked``, relative position indices) are copied from
    ``reference`` without a draw.

    Args:
        reference: A state dict giving the keys, shapes and dtypes to fill.
        seed: Seed of the generator.

    Returns:
        A new state dict with the same keys, shapes and dtypes.
    """
    gen = torch.Generator().manual_seed(seed)
    filled = {}
    for key in sorted(reference):
        like = reference[key]
        shape, dtype = tuple(like.shape), like.dtype
        if not dtype.is_floating_point:
            filled[key] = like.detach().clone()
        elif key.endswith("weight") and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            filled[key] = torch.randn(shape, generator=gen, dtype=dtype) * math.sqrt(2 / fan_in)
        elif key.endswith("weight"):
            filled[key] = 1 + 0.1 * torch.randn(shape, generator=gen, dtype=dtype)
        elif key.endswith("running_var"):
            filled[key] = 1 + 0.5 * torch.rand(shape, generator=gen, dtype=dtype)
        elif key.endswith("relative_position_bias_table"):
            filled[key] = torch.randn(shape, generator=gen, dtype=dtype)
        else:
            filled[key] = 0.05 * torch.randn(shape, generator=gen, dtype=dtype)
    return filled
