"""Build the decoder graph of a llama / mistral / qwen2 / phi3 causal LM with ``onnx.helper``.

Weights are read one tensor at a time from the safetensors shards (``safe_open``) and handed to a
:class:`WeightSink` (inline, or streamed into the external data file), so the whole model is never
held by transformers. Node and value names are fixed by the layer index: the same checkpoint gives
the same bytes every time.

Inputs and outputs follow optimum / onnxruntime-genai: ``input_ids``, ``attention_mask``
(``(B, past + S)``), ``position_ids``, ``past_key_values.{i}.key|value`` (``(B, kv_heads, past,
head_dim)``) -> ``logits`` (fp32), ``present.{i}.key|value``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longrope_export.errors import InputError
from longrope_export.spec import LongRoPESpec

from .onnx_rotary import rotary_node

#: Architectures whose q/k/v and gate/up projections are fused into one matrix (Phi-3).
FUSED_PROJECTIONS = {"phi3"}
SUPPORTED_ACTIVATIONS = {"silu"}


@dataclass(frozen=True)
class DecoderShape:
    """The numbers the graph needs, read from config.json."""

    model_type: str
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    sliding_window: int | None

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> DecoderShape:
        act = config.get("hidden_act", "silu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise InputError(f"hidden_act {act!r} is not supported by the ONNX exporter", path=source,
                             fix=f"supported: {', '.join(sorted(SUPPORTED_ACTIVATIONS))}")
        model_type = str(config["model_type"])
        if model_type == "qwen2" and config.get("use_sliding_window"):
            raise InputError("qwen2 with use_sliding_window is not supported by the ONNX exporter", path=source,
                             fix="set use_sliding_window to false (full attention)")
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                model_type=model_type, hidden_size=hidden, num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config["intermediate_size"]), num_layers=int(config["num_hidden_layers"]),
                vocab_size=int(config["vocab_size"]), rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                sliding_window=config.get("sliding_window") if model_type == "mistral" else None,
            )
        except KeyError as error:
            raise InputError(f"missing config key {error.args[0]}", path=source,
                             fix="give the config.json of a llama, mistral, qwen2 or phi3 model") from None


class SafetensorsWeights:
    """Tensors of a checkpoint, read one at a time (``safe_open``) and converted to ``dtype``."""

    def __init__(self, model_dir: Path, dtype: str) -> None:
        import json

        self.dtype = dtype
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.where = {name: model_dir / shard for name, shard in weight_map.items()}
        else:
            single = model_dir / "model.safetensors"
            if not single.exists():
                raise InputError("no model.safetensors (or index) in the model folder", path=model_dir,
                                 fix="save the checkpoint with save_pretrained(safe_serialization=True)")
            from safetensors import safe_open

            with safe_open(str(single), framework="pt") as handle:
                self.where = {name: single for name in handle.keys()}

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        import torch
        from safetensors import safe_open

        if name not in self.where:
            raise InputError(f"tensor {name} not found", path=self.where and next(iter(self.where.values())),
                             fix="give an unmodified save_pretrained checkpoint of a supported architecture")
        with safe_open(str(self.where[name]), framework="pt") as handle:
            tensor = handle.get_tensor(name)
        torch_dtype = torch.float16 if self.dtype == "fp16" else torch.float32
        return tensor.to(torch_dtype).numpy()


class WeightSink:
    """Turns arrays into initializers: inline, or appended to an external data file as they come."""

    def __init__(self, external_path: Path | None, location: str) -> None:
        self.initializers: list[Any] = []
        self.external_path = external_path
        self.location = location
        self.offset = 0
        self.nbytes = 0
        self._handle = open(external_path, "wb") if external_path else None

    def add(self, name: str, array: np.ndarray) -> str:
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array)
        self.nbytes += array.nbytes
        if self._handle is None:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        pad = (-self.offset) % 64  # aligned offsets let runtimes memory-map tensors
        self._handle.write(b"\0" * pad)
        self.offset += pad
        self._handle.write(array.tobytes())
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = TensorProto.EXTERNAL
        self.offset += array.nbytes
        self.initializers.append(tensor)
        return name

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class DecoderBuilder:
    """Emits the nodes of one decoder model into lists (graph assembled by ``onnx_export``)."""

    def __init__(self, shape: DecoderShape, spec: LongRoPESpec, weights: SafetensorsWeights, sink: WeightSink,
                 dtype: str) -> None:
        self.shape, self.spec, self.weights, self.sink, self.dtype = shape, spec, weights, sink, dtype
        self.nodes: list[Any] = []
        self.value_info: list[Any] = []
        self.count = 0

    # -- small helpers -----------------------------------------------------------------------
    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self.count += 1
        out = name or f"/{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}_{op_type}", **attrs))
        return out

    def const(self, name: str, value: Any, dtype: str = "int64") -> str:
        from onnx import numpy_helper

        self.sink.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def linear(self, x: str, weight: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """``x @ weight.T (+ bias)``: weights are stored transposed for MatMul."""
        out = self.op("MatMul", [x, self.sink.add(f"{name}.weight_t", weight.T)])
        if bias is not None:
            out = self.op("Add", [out, self.sink.add(f"{name}.bias", bias)])
        return out

    def optional(self, name: str) -> np.ndarray | None:
        return self.weights.get(name) if self.weights.has(name) else None

    def to_float(self, x: str) -> str:
        from onnx import TensorProto

        return x if self.dtype == "fp32" else self.op("Cast", [x], to=TensorProto.FLOAT)

    def to_model(self, x: str) -> str:
        from onnx import TensorProto

        return x if self.dtype == "fp32" else self.op("Cast", [x], to=TensorProto.FLOAT16)

    def rms_norm(self, x: str, weight_name: str) -> str:
        """transformers' RMSNorm in fp32: ``w * (x * rsqrt(mean(x^2) + eps))``."""
        x32 = self.to_float(x)
        mean = self.op("ReduceMean", [self.op("Mul", [x32, x32]), "const.axis_last"], keepdims=1)
        inv = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [mean, "const.eps"])])])
        normed = self.to_model(self.op("Mul", [x32, inv]))
        return self.op("Mul", [self.sink.add(weight_name, self.weights.get(weight_name)), normed])

    # -- the model ---------------------------------------------------------------------------
    def build(self) -> None:
        """All nodes: embeddings, decoder layers, final norm and lm_head."""
        shape = self.shape
        self.const("const.axis_last", [-1])
        self.const("const.eps", shape.rms_norm_eps, "float32")
        self.const("const.zero_f", 0.0, "float32")
        self.const("const.mask_min", np.finfo(np.float32).min, "float32")
        self.const("const.scale", 1.0 / np.sqrt(shape.head_dim), "float32" if self.dtype == "fp32" else "float16")
        mask = self.attention_bias()
        embed = self.weights.get("model.embed_tokens.weight")
        hidden = self.op("Gather", [self.sink.add("model.embed_tokens.weight", embed), "input_ids"])
        for layer in range(shape.num_layers):
            hidden = self.decoder_layer(layer, hidden, mask)
        hidden = self.rms_norm(hidden, "model.norm.weight")
        lm_head = self.optional("lm_head.weight")
        if lm_head is None:
            if not shape.tie_word_embeddings:
                raise InputError("lm_head.weight not found and tie_word_embeddings is false",
                                 fix="give a complete checkpoint")
            lm_head = embed
        del embed
        logits = self.op("MatMul", [hidden, self.sink.add("lm_head.weight_t", lm_head.T)])
        self.op("Identity", [self.to_float(logits)], name="logits")

    def attention_bias(self) -> str:
        """fp32 additive mask ``(B, 1, S, past + S)``: causal by index, padding from attention_mask."""
        from onnx import TensorProto

        total = self.op("Gather", [self.op("Shape", ["attention_mask"]), self.const("const.one", 1)], axis=0)
        seq = self.op("Gather", [self.op("Shape", ["input_ids"]), "const.one"], axis=0)
        past = self.op("Sub", [total, seq])
        query_index = self.op("Unsqueeze", [self.op("Range", [past, total, "const.one"]), "const.axis_last"])
        key_index = self.op("Range", [self.const("const.zero", 0), total, "const.one"])
        allowed = self.op("LessOrEqual", [key_index, query_index])  # (S, T)
        if self.shape.sliding_window is not None:  # mistral: a key is visible while q - k < window
            distance = self.op("Sub", [query_index, key_index])
            window = self.const("const.window", self.shape.sliding_window)
            allowed = self.op("And", [allowed, self.op("Less", [distance, window])])
        padding = self.op("Unsqueeze", [self.op("Cast", ["attention_mask"], to=TensorProto.BOOL),
                                        self.const("const.axes_12", [1, 2])])
        allowed = self.op("And", [allowed, padding])  # (B, 1, S, T)
        return self.op("Where", [allowed, "const.zero_f", "const.mask_min"], name="/attention_bias")

    def projections(self, layer: int, x: str) -> tuple[str, str, str]:
        shape, prefix = self.shape, f"model.layers.{layer}.self_attn"
        q_rows, kv_rows = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        if shape.model_type in FUSED_PROJECTIONS:
            qkv = self.weights.get(f"{prefix}.qkv_proj.weight")
            parts = qkv[:q_rows], qkv[q_rows:q_rows + kv_rows], qkv[q_rows + kv_rows:]
            del qkv
            return tuple(self.linear(x, w, f"{prefix}.{n}_proj") for w, n in zip(parts, "qkv", strict=True))  # type: ignore
        return tuple(self.linear(x, self.weights.get(f"{prefix}.{n}_proj.weight"), f"{prefix}.{n}_proj",  # type: ignore
                                 self.optional(f"{prefix}.{n}_proj.bias")) for n in "qkv")

    def heads(self, x: str, count: int, name: str) -> str:
        """``(B, S, count*D) -> (B, count, S, D)``."""
        shaped = self.op("Reshape", [x, self.const(f"const.heads_{name}", [0, 0, count, self.shape.head_dim])])
        return self.op("Transpose", [shaped], perm=[0, 2, 1, 3])

    def declare(self, name: str, heads: int) -> None:
        """Type the output of a rotary node: inference cannot see through com.microsoft ops in its body."""
        from onnx import TensorProto, helper

        elem = TensorProto.FLOAT16 if self.dtype == "fp16" else TensorProto.FLOAT
        self.value_info.append(helper.make_tensor_value_info(
            name, elem, ["batch_size", heads, "sequence_length", self.shape.head_dim]))

    def decoder_layer(self, layer: int, hidden: str, mask: str) -> str:
        shape, prefix = self.shape, f"model.layers.{layer}"
        normed = self.rms_norm(hidden, f"{prefix}.input_layernorm.weight")
        q, k, v = self.projections(layer, normed)
        q = self.heads(q, shape.num_heads, f"q{layer}")
        k = self.heads(k, shape.num_kv_heads, f"k{layer}")
        v = self.heads(v, shape.num_kv_heads, f"v{layer}")
        q_rot, k_rot = f"/layers.{layer}/q_rot", f"/layers.{layer}/k_rot"
        self.nodes.append(rotary_node(q, "position_ids", q_rot, self.spec, layer, shape.num_heads,
                                      f"layers.{layer}.rotary_q"))
        self.nodes.append(rotary_node(k, "position_ids", k_rot, self.spec, layer, shape.num_kv_heads,
                                      f"layers.{layer}.rotary_k"))
        self.declare(q_rot, shape.num_heads)
        self.declare(k_rot, shape.num_kv_heads)
        keys = self.op("Concat", [f"past_key_values.{layer}.key", k_rot], name=f"present.{layer}.key", axis=2)
        values = self.op("Concat", [f"past_key_values.{layer}.value", v], name=f"present.{layer}.value", axis=2)
        attended = self.attention(q_rot, keys, values, mask, layer)
        out = self.linear(attended, self.weights.get(f"{prefix}.self_attn.o_proj.weight"), f"{prefix}.self_attn.o_proj",
                          self.optional(f"{prefix}.self_attn.o_proj.bias"))
        hidden = self.op("Add", [hidden, out])
        normed = self.rms_norm(hidden, f"{prefix}.post_attention_layernorm.weight")
        return self.op("Add", [hidden, self.mlp(layer, normed)])

    def attention(self, q: str, keys: str, values: str, mask: str, layer: int) -> str:
        """GQA without copying keys: queries grouped per kv head, ``(B, kv, rep*S, D) @ (B, kv, D, T)``."""
        shape = self.shape
        grouped = self.const(f"const.grouped_{layer}", [0, shape.num_kv_heads, -1, shape.head_dim])
        per_head = self.const(f"const.per_head_{layer}", [0, shape.num_heads, -1, 0])
        scores = self.op("MatMul", [self.op("Reshape", [q, grouped]), self.op("Transpose", [keys], perm=[0, 1, 3, 2])])
        scores = self.op("Mul", [self.op("Reshape", [scores, per_head]), "const.scale"])
        probs = self.to_model(self.op("Softmax", [self.op("Add", [self.to_float(scores), mask])], axis=-1))
        kv_grouped = self.const(f"const.kv_grouped_{layer}", [0, shape.num_kv_heads, -1, 0])
        context = self.op("MatMul", [self.op("Reshape", [probs, kv_grouped]), values])
        context = self.op("Reshape", [context, self.const(f"const.heads_back_{layer}",
                                                          [0, shape.num_heads, -1, shape.head_dim])])
        context = self.op("Transpose", [context], perm=[0, 2, 1, 3])
        merged = self.const(f"const.merge_{layer}", [0, 0, shape.num_heads * shape.head_dim])
        return self.op("Reshape", [context, merged])

    def mlp(self, layer: int, x: str) -> str:
        """``down(silu(gate(x)) * up(x))``; Phi-3's fused gate_up_proj holds gate rows first."""
        prefix = f"model.layers.{layer}.mlp"
        if self.shape.model_type in FUSED_PROJECTIONS:
            fused = self.weights.get(f"{prefix}.gate_up_proj.weight")
            half = fused.shape[0] // 2
            gate_w, up_w = fused[:half], fused[half:]
            del fused
        else:
            gate_w, up_w = self.weights.get(f"{prefix}.gate_proj.weight"), self.weights.get(f"{prefix}.up_proj.weight")
        gate = self.linear(x, gate_w, f"{prefix}.gate_proj", self.optional(f"{prefix}.gate_proj.bias"))
        up = self.linear(x, up_w, f"{prefix}.up_proj", self.optional(f"{prefix}.up_proj.bias"))
        act = self.op("Mul", [gate, self.op("Sigmoid", [gate])])
        return self.linear(self.op("Mul", [act, up]), self.weights.get(f"{prefix}.down_proj.weight"),
                           f"{prefix}.down_proj", self.optional(f"{prefix}.down_proj.bias"))
