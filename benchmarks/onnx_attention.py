"""Fusing exported attention into ONNX Runtime's ``MultiHeadAttention`` (memory-efficient on CPU).

``torch.onnx.export`` (dynamo, opset 18) writes ``F.scaled_dot_product_attention`` as
``MatMul(Q * s, K^T * s) -> Softmax -> MatMul(., V)``. ONNX Runtime runs that literally and keeps
the ``(B, heads, Q, K)`` score tensor: at 512 px the 64 x 64 self-attention of SD 1.5 holds
8 x 4096 x 4096 fp32 values (512 MB) per image, which is why its peak memory grows past 15 GB at
batch 4. ORT's own U-Net optimizer (``onnxruntime.transformers``) matches the graphs of the older
TorchScript-based exporter, not these, and fuses nothing here. This pass rewrites each such
subgraph (including cross-attentions whose fixed-prompt ``K^T * s`` the exporter folded into a
constant) into one ``com.microsoft.MultiHeadAttention`` node, whose CPU kernel is a tiled (flash)
attention that never materialises the scores.

The match is strict (the exact chain above, constant scalar scales); anything else is left as it
is, and the benchmark checks the fused model's features against the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fuse_attention"]

_PASS_THROUGH = ("Reshape", "Transpose")


class _Graph:
    def __init__(self, graph) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                for attr in n.attribute:
                    if attr.name == "value":
                        self.constants[n.output[0]] = numpy_helper.to_array(attr.t)

    def op(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def scalar(self, name: str) -> float | None:
        value = self.constants.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _scaled(g: _Graph, name: str) -> tuple[str, float] | None:
    """``x * c`` with scalar constant ``c``: ``(x, c)``."""
    mul = g.op(name, "Mul")
    if mul is None:
        return None
    for a, b in ((0, 1), (1, 0)):
        c = g.scalar(mul.input[b])
        if c is not None:
            return mul.input[a], c
    return None


def _heads_layout(g: _Graph, name: str) -> tuple[str, int | None]:
    """For ``Transpose_0213(Reshape(x3d, [B, S, h, d]))``: ``(x3d, h)``; else ``(name, None)``."""
    transpose = g.op(name, "Transpose")
    if transpose is None or _perm(transpose) != [0, 2, 1, 3]:
        return name, None
    reshape = g.op(transpose.input[0], "Reshape")
    shape = g.constants.get(reshape.input[1]) if reshape is not None else None
    if shape is None or shape.size != 4 or shape[2] <= 0:
        return name, None
    return reshape.input[0], int(shape[2])


def _chain_top(g: _Graph, name: str) -> str:
    """Walks up Reshape / Transpose nodes; returns the tensor entering the chain."""
    node = g.producer.get(name)
    while node is not None and node.op_type in _PASS_THROUGH:
        name = node.input[0]
        node = g.producer.get(name)
    return name


def _match(g: _Graph, softmax) -> dict[str, Any] | None:
    scores = g.op(softmax.input[0], "MatMul")
    pv = g.only_consumer(softmax.output[0], "MatMul")
    if scores is None or pv is None or pv.input[0] != softmax.output[0]:
        return None
    q_scaled, k_scaled = _scaled(g, scores.input[0]), _scaled(g, scores.input[1])
    if q_scaled is None:
        return None
    query, heads = _heads_layout(g, q_scaled[0])
    if heads is None:
        return None
    new_key = None
    if k_scaled is not None:
        key, scale = _chain_top(g, k_scaled[0]), q_scaled[1] * k_scaled[1]
    else:
        # A fixed prompt's K^T * s was folded into one (B, h, d, L) constant by the exporter.
        folded = g.constants.get(scores.input[1])
        if folded is None or folded.ndim != 4:
            return None
        key, scale = scores.input[1] + "__bhld", q_scaled[1]
        new_key = np.ascontiguousarray(folded.transpose(0, 1, 3, 2))  # (B, h, L, d)
    value, _ = _heads_layout(g, pv.input[1])
    out_t = g.only_consumer(pv.output[0], "Transpose")
    out_r = g.only_consumer(out_t.output[0], "Reshape") if out_t is not None else None
    if out_t is None or _perm(out_t) != [0, 2, 1, 3] or out_r is None:
        return None
    return {"query": query, "key": key, "value": value, "heads": heads, "scale": scale,
            "output": out_r.output[0], "new_key": new_key}


def _remove_dead(graph) -> None:
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {i for n in graph.node for i in n.input}
    kept_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)


def fuse_attention(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Rewrites matched attention subgraphs of ``src`` into ``MultiHeadAttention``; saves ``dst``.

    Returns:
        ``{"fused": number of attentions fused, "softmax": number of Softmax nodes seen}``.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = _Graph(model.graph)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    fused = 0
    for i, softmax in enumerate(softmaxes):
        match = _match(g, softmax)
        if match is None:
            continue
        if match["new_key"] is not None:
            model.graph.initializer.append(numpy_helper.from_array(match["new_key"], match["key"]))
        node = helper.make_node(
            "MultiHeadAttention", [match["query"], match["key"], match["value"]],
            [match["output"]], name=f"fused_mha_{i}", domain="com.microsoft",
            num_heads=match["heads"], scale=match["scale"])
        producer = g.producer[match["output"]]
        producer.output[0] = match["output"] + "__unfused"  # the old Reshape now feeds nothing
        position = list(model.graph.node).index(producer)
        model.graph.node.insert(position + 1, node)
        fused += 1
    _remove_dead(model.graph)
    if fused and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + ".data", size_threshold=1024)
    return {"fused": fused, "softmax": len(softmaxes)}
