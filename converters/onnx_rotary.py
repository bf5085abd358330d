"""The ``longrope::LongRoPE`` custom op: a model-local ONNX function built from ``rope.py``.

One node per use (the queries and the keys of every layer) of the custom-domain op
``LongRoPE`` (domain ``longrope``). Its body uses standard ops only, so every stock onnxruntime
(1.20 onwards) runs it by inlining; a kernel registered for ``longrope::LongRoPE`` would win over
the body (REFERENCE.md s.4).

Node attributes (all taken from ``rope.py``, never recomputed here):

- ``short_inv_freq`` / ``long_inv_freq``: ``rope.inv_freq(spec, "short"|"long", layer)`` (fp32,
  bitwise as transformers computes them); ``original_inv_freq``: ``rope.original_inv_freq``;
- ``original_max_position_embeddings``, ``start_token`` (n_hat) and ``attention_factor``
  (``rope.attention_factor``).

The body mirrors ``rope.cos_sin`` operation for operation in fp32: the factor set follows
``rope.uses_long_factors`` (long iff ``max(position_ids) + 1 > original``, for the whole call,
chosen by a ``Where`` on the inverse frequencies -- no ``If``, no cache copies), ``freqs = pos *
inv_freq``, ``emb = cat(freqs, freqs)``, ``cos = cos(emb) * attention_factor``; rows with
``position < n_hat`` take plain RoPE without the scale. Angles are computed from the position ids
in the graph: the file holds ``rotary_dim / 2`` floats per set whatever the target context.

Three lowerings of the rotation itself (``--rotary``):

- ``function``: ``x * cos + rotate_half(x) * sin`` with standard elementwise ops;
- ``opset23``: the standard ``RotaryEmbedding`` (opset 23) fed 3-D per-token caches ``(B, S, rot/2)``;
- ``contrib``: ``com.microsoft.RotaryEmbedding``, whose caches are 2-D: one row per token
  (``B*S`` rows) indexed by ``position_ids = arange(B*S)``, so it too needs no position table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from longrope_export import rope
from longrope_export.spec import LongRoPESpec

RotaryMode = Literal["function", "opset23", "contrib"]
ROTARY_MODES: tuple[str, ...] = ("function", "opset23", "contrib")
DOMAIN = "longrope"
OP_TYPE = "LongRoPE"
CONTRIB_DOMAIN = "com.microsoft"
#: Lowest default-domain opset each lowering needs (ReduceMean axes input, Split num_outputs: 18;
#: RotaryEmbedding: 23).
MIN_OPSET: dict[str, int] = {"function": 18, "opset23": 23, "contrib": 18}


def rotary_attributes(spec: LongRoPESpec, layer: int) -> dict[str, Any]:
    """The node attributes of layer ``layer``: inverse frequencies and scalars from ``rope.py``."""
    return {
        "short_inv_freq": [float(x) for x in rope.inv_freq(spec, "short", layer).tolist()],
        "long_inv_freq": [float(x) for x in rope.inv_freq(spec, "long", layer).tolist()],
        "original_inv_freq": [float(x) for x in rope.original_inv_freq(spec).tolist()],
        "original_max_position_embeddings": int(spec.original_max_position_embeddings),
        "start_token": int(spec.start_token),
        "attention_factor": float(rope.attention_factor(spec)),
    }


@dataclass
class _Body:
    """A tiny node list builder with unique value names."""

    nodes: list[Any]
    count: int = 0

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attrs: Any) -> str:
        return self.ops(op_type, inputs, 1, domain, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], n_out: int, domain: str = "", **attrs: Any) -> list[str]:
        """One node with ``n_out`` outputs. Nodes are named: onnxruntime 1.20's fusions reject a
        graph whose inlined, unnamed nodes end up with the same generated name."""
        from onnx import helper

        self.count += 1
        outs = [f"{op_type.lower()}_{self.count}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.count}", domain=domain,
                                           **attrs))
        return outs

    def ref(self, attr: str, ref_name: str, kind: Any) -> str:
        """A Constant whose value is the calling node's attribute ``ref_name``."""
        from onnx import helper

        self.count += 1
        out = f"{ref_name}_{self.count}"
        node = helper.make_node("Constant", [], [out], name=f"Constant_{self.count}")
        node.attribute.append(helper.make_attribute_ref(attr, kind))
        node.attribute[-1].ref_attr_name = ref_name  # set here: older onnx has no ref_attr_name argument
        self.nodes.append(node)
        return out

    def const(self, value: Any, dtype: str = "int64") -> str:
        import numpy as np
        from onnx import helper, numpy_helper

        self.count += 1
        out = f"const_{self.count}"
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=f"Constant_{self.count}", value=tensor))
        return out


def _half_angles(body: _Body) -> tuple[str, str]:
    """fp32 ``(cos, sin)`` of shape ``(B, S, rot/2)``, as ``rope.cos_sin`` computes them."""
    from onnx import AttributeProto, TensorProto

    long_inv = body.ref("value_floats", "long_inv_freq", AttributeProto.FLOATS)
    short_inv = body.ref("value_floats", "short_inv_freq", AttributeProto.FLOATS)
    plain_inv = body.ref("value_floats", "original_inv_freq", AttributeProto.FLOATS)
    original = body.ref("value_int", "original_max_position_embeddings", AttributeProto.INT)
    n_hat = body.ref("value_int", "start_token", AttributeProto.INT)
    scale = body.ref("value_float", "attention_factor", AttributeProto.FLOAT)
    # rope.uses_long_factors: max(position_ids) + 1 > original, once for the whole call.
    seq_len = body.op("Add", [body.op("ReduceMax", ["position_ids"], keepdims=0), body.const(1)])
    inv = body.op("Where", [body.op("Greater", [seq_len, original]), long_inv, short_inv])
    last = body.const([-1])
    pos = body.op("Unsqueeze", [body.op("Cast", ["position_ids"], to=TensorProto.FLOAT), last])
    freqs = body.op("Mul", [pos, inv])
    cos = body.op("Mul", [body.op("Cos", [freqs]), scale])
    sin = body.op("Mul", [body.op("Sin", [freqs]), scale])
    # Start-token threshold: rows with position < n_hat are plain RoPE, without the scale.
    plain = body.op("Mul", [pos, plain_inv])
    head = body.op("Less", [body.op("Unsqueeze", ["position_ids", last]), n_hat])
    cos = body.op("Where", [head, body.op("Cos", [plain]), cos])
    sin = body.op("Where", [head, body.op("Sin", [plain]), sin])
    return cos, sin


def _rotate_function(body: _Body, cos: str, sin: str, rotary_dim: int, head_dim: int) -> str:
    """``x * cos + rotate_half(x) * sin`` on the first ``rot`` channels (transformers' form)."""
    heads_axis = body.const([1])
    cos4 = body.op("Unsqueeze", [body.op("CastLike", [body.op("Concat", [cos, cos], axis=-1), "X"]), heads_axis])
    sin4 = body.op("Unsqueeze", [body.op("CastLike", [body.op("Concat", [sin, sin], axis=-1), "X"]), heads_axis])
    x_rot, x_pass = "X", None
    if rotary_dim < head_dim:
        x_rot, x_pass = body.ops("Split", ["X", body.const([rotary_dim, head_dim - rotary_dim])], 2, axis=-1)
    x1, x2 = body.ops("Split", [x_rot], 2, axis=-1, num_outputs=2)
    rotated = body.op("Concat", [body.op("Neg", [x2]), x1], axis=-1)
    y_rot = body.op("Add", [body.op("Mul", [x_rot, cos4]), body.op("Mul", [rotated, sin4])])
    return y_rot if x_pass is None else body.op("Concat", [y_rot, x_pass], axis=-1)


def _rotate_opset23(body: _Body, cos: str, sin: str, rotary_dim: int, partial: bool) -> str:
    """Standard ``RotaryEmbedding`` with 3-D per-token caches (no position_ids input)."""
    from onnx import AttributeProto, helper

    attrs: dict[str, Any] = {"interleaved": 0}
    if partial:
        attrs["rotary_embedding_dim"] = rotary_dim
    out = body.op("RotaryEmbedding", ["X", body.op("CastLike", [cos, "X"]), body.op("CastLike", [sin, "X"])],
                  **attrs)
    if partial:  # onnxruntime 1.23's kernel wants num_heads beside rotary_embedding_dim (1.32 does not)
        body.nodes[-1].attribute.append(helper.make_attribute_ref("num_heads", AttributeProto.INT))
    return out


def _rotate_contrib(body: _Body, cos: str, sin: str, rotary_dim: int, partial: bool) -> str:
    """``com.microsoft.RotaryEmbedding``: 2-D caches with one row per token, indexed by arange(B*S)."""
    from onnx import AttributeProto, helper

    rows = body.op("Reshape", [cos, body.const([-1, rotary_dim // 2])])
    sin_rows = body.op("Reshape", [sin, body.const([-1, rotary_dim // 2])])
    shape = body.op("Shape", ["position_ids"])
    tokens = body.op("ReduceProd", [shape], keepdims=0)
    ids = body.op("Reshape", [body.op("Range", [body.const(0), tokens, body.const(1)]), shape])
    attrs: dict[str, Any] = {"interleaved": 0}
    if partial:
        attrs["rotary_embedding_dim"] = rotary_dim
    out = body.op("RotaryEmbedding", ["X", ids, body.op("CastLike", [rows, "X"]), body.op("CastLike", [sin_rows, "X"])],
                  domain=CONTRIB_DOMAIN, **attrs)
    if partial:  # the contrib kernel wants num_heads beside rotary_embedding_dim: the caller's attribute
        body.nodes[-1].attribute.append(helper.make_attribute_ref("num_heads", AttributeProto.INT))
    return out


def build_function(mode: RotaryMode, opset: int, rotary_dim: int, head_dim: int) -> Any:
    """The ``FunctionProto`` of ``longrope::LongRoPE`` for one model (``X``: ``(B, heads, S, head_dim)``)."""
    from onnx import helper

    partial = rotary_dim < head_dim
    body = _Body([])
    cos, sin = _half_angles(body)
    if mode == "function":
        result = _rotate_function(body, cos, sin, rotary_dim, head_dim)
    elif mode == "opset23":
        result = _rotate_opset23(body, cos, sin, rotary_dim, partial)
    else:
        result = _rotate_contrib(body, cos, sin, rotary_dim, partial)
    body.nodes.append(helper.make_node("Identity", [result], ["Y"], name="Identity_Y"))
    opsets = [helper.make_opsetid("", opset)]
    if mode == "contrib":
        opsets.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    attributes = ["short_inv_freq", "long_inv_freq", "original_inv_freq", "original_max_position_embeddings",
                  "start_token", "attention_factor", "num_heads"]
    return helper.make_function(DOMAIN, OP_TYPE, ["X", "position_ids"], ["Y"], body.nodes, opsets,
                                attributes=attributes,
                                doc_string="LongRoPE rotary embedding (longrope-export); see converters/onnx_rotary.py")


def rotary_node(x: str, position_ids: str, out: str, spec: LongRoPESpec, layer: int, num_heads: int,
                name: str) -> Any:
    """One ``longrope::LongRoPE`` node rotating ``x`` (``(B, num_heads, S, head_dim)``)."""
    from onnx import helper

    return helper.make_node(OP_TYPE, [x, position_ids], [out], name=name, domain=DOMAIN,
                            num_heads=num_heads, **rotary_attributes(spec, layer))
