"""Rebuild a shipped ONNX classifier as a PyTorch module, for attacks that need gradients.

The export folds each BatchNorm into the convolution before it, so the ONNX file holds fused
conv weights and biases. We build the architecture named in the model card, walk its convolutions
in execution order beside the ONNX graph's Conv nodes, load the fused weights, and turn each
BatchNorm into "add the fused bias". :func:`load_classifier` then checks the logits against ONNX
Runtime on random inputs (``atol`` 1e-3) and fails loudly otherwise. No .pt files need shipping.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _execution_order(model: nn.Module, shape: tuple[int, ...]) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return order


def load_classifier(path: Path | str, check: bool = True) -> nn.Module:
    """The classifier in ``path`` (ONNX + model card JSON) as an eval-mode torch module taking the
    same normalised (N, 1, 224, 224) input and returning the same logits."""
    import onnx
    from onnx import numpy_helper

    from .train import build

    path = Path(path)
    card = json.loads(path.with_suffix(".json").read_text())
    model = build("classifier", card["architecture"], int(card["input"].get("internal_resolution", 224))).eval()
    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # the exporter dedups equal tensors (Identity of one initializer) or emits Constants
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            init[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in init:
            init[node.output[0]] = init[node.input[0]]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemms = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    order = _execution_order(model, (1, 1, 224, 224))
    torch_convs = [m for m in order if isinstance(m, nn.Conv2d)]
    if len(torch_convs) != len(convs):
        raise ValueError(f"{path}: {len(convs)} ONNX convolutions but {card['architecture']} has {len(torch_convs)}")
    with torch.no_grad():
        for k, (m, node) in enumerate(zip(torch_convs, convs)):
            w = init[node.input[1]]
            if tuple(w.shape) != tuple(m.weight.shape):
                raise ValueError(f"{path}: conv {k} weight {w.shape} != {tuple(m.weight.shape)}")
            m.weight.copy_(torch.from_numpy(np.array(w)))
            bias = torch.from_numpy(np.array(init[node.input[2]])) if len(node.input) > 2 else torch.zeros(w.shape[0])
            nxt = order[order.index(m) + 1] if order.index(m) + 1 < len(order) else None
            if isinstance(nxt, nn.BatchNorm2d):  # folded: BN(x) = x + fused bias
                nxt.weight.fill_(1.0)
                nxt.running_mean.zero_()
                nxt.running_var.fill_(1.0 - nxt.eps)
                nxt.bias.copy_(bias)
            elif m.bias is not None:
                m.bias.copy_(bias)
            elif bias.abs().max() > 0:
                raise ValueError(f"{path}: conv {k} has a bias but no BatchNorm follows it in {card['architecture']}")
        # linear layers (the head; CBAM's channel MLPs, each called twice) keep their torch names,
        # except a lone head the exporter renamed: then the one Gemm's inputs
        linears = [(name, m, f"{name}.weight", f"{name}.bias") for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) == 1 and len(gemms) == 1 and linears[0][2] not in init:
            linears = [(linears[0][0], linears[0][1], gemms[0].input[1], gemms[0].input[2])]
        for name, m, wname, bname in linears:
            if wname not in init or bname not in init:
                raise ValueError(f"{path}: no weights for linear layer {name} of {card['architecture']}")
            w = init[wname]
            m.weight.copy_(torch.from_numpy(np.array(w if w.shape == tuple(m.weight.shape) else w.T)))
            m.bias.copy_(torch.from_numpy(np.array(init[bname])))
    for p in model.parameters():
        p.requires_grad_(False)
    if check:
        _check_parity(model, path)
    return model


def _check_parity(model: nn.Module, path: Path, atol: float = 1e-3) -> None:
    from medrae.toolkit.ort import session

    x = np.random.default_rng(0).normal(0, 1, (4, 1, 224, 224)).astype(np.float32)
    want = session(path, "cpu").run(None, {"image": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(want - got).max())
    if err > atol * max(1.0, float(np.abs(want).max())):
        raise ValueError(f"{path}: torch rebuild differs from ONNX Runtime by {err:.2e}")
