"""``convert --to onnx``: a baked checkpoint -> ``OUT_DIR/model.onnx`` running LongRoPE on stock onnxruntime.

The graph is built directly from the safetensors weights (``onnx_graph``) with one
``longrope::LongRoPE`` node per rotary use (``onnx_rotary``). What the model does at the factor
switch, and what a runtime must do with its KV cache there, is recorded in ``metadata_props``
(see ``docs/onnx.md``):

- ``longrope.spec``: the spec JSON (``LongRoPESpec.to_dict``); ``longrope.switch_policy``,
  ``longrope.start_token``, ``longrope.switch_rule``;
- ``longrope.kv_policy``: ``recompute`` (default: when a call first reaches more than the original
  context, drop the cache and run the whole sequence again, as transformers' Phi-3 ``generate``
  does) or ``keep`` (keys already cached stay short-rotated, as transformers' Llama/Mistral keep them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from longrope_export import __version__, rope
from longrope_export.bake import BakeOptions
from longrope_export.checkpoint import atomic_output_dir, check_no_overlap
from longrope_export.errors import CheckFailed, InputError, OutputExistsError
from longrope_export.registry import architecture_for
from longrope_export.sources import model_geometry, read_json
from longrope_export.spec import LongRoPESpec

from .onnx_graph import DecoderBuilder, DecoderShape, SafetensorsWeights, WeightSink
from .onnx_rotary import CONTRIB_DOMAIN, DOMAIN, MIN_OPSET, OP_TYPE, ROTARY_MODES, build_function

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
#: Protobuf caps a message at 2 GiB; keep a margin for the graph itself.
INLINE_LIMIT = 2**31 - 2**27
#: ORT 1.20 reads IR 10 (onnx 1.16/1.17); make_model would stamp a newer IR than it accepts.
IR_VERSION = 10
DEFAULT_OPSET: dict[str, int] = {"function": 21, "opset23": 23, "contrib": 21}
KV_POLICIES = ("recompute", "keep")
SWITCH_RULE = "long factors iff max(position_ids)+1 > original_max_position_embeddings, per call"
META_PREFIX = "longrope."


@dataclass(frozen=True)
class OnnxOptions:
    """What ``convert --to onnx`` was asked for."""

    dtype: Literal["fp32", "fp16"] = "fp32"
    rotary: str = "function"
    opset: int | None = None
    kv_policy: str = "recompute"
    external_data: bool | None = None  # None: only when the weights exceed what one protobuf holds
    force: bool = False
    check: bool = True


@dataclass
class OnnxExportResult:
    """What the export wrote."""

    output: Path
    model_path: Path
    spec: LongRoPESpec
    opset: int
    rotary: str
    external_data: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def _check_options(options: OnnxOptions) -> int:
    if options.rotary not in ROTARY_MODES:
        raise InputError(f"--rotary {options.rotary!r} is not one of {', '.join(ROTARY_MODES)}",
                         fix="use --rotary function, opset23 or contrib")
    if options.dtype not in ("fp32", "fp16"):
        raise InputError(f"--dtype {options.dtype!r} is not fp32 or fp16", fix="use --dtype fp32 or fp16")
    if options.kv_policy not in KV_POLICIES:
        raise InputError(f"--kv-policy {options.kv_policy!r} is not one of {', '.join(KV_POLICIES)}",
                         fix="use --kv-policy recompute or keep")
    opset = options.opset if options.opset is not None else DEFAULT_OPSET[options.rotary]
    need = MIN_OPSET[options.rotary]
    if opset < need:
        why = "the standard RotaryEmbedding op exists from opset 23" if options.rotary == "opset23" else \
            "ReduceMean axes inputs and Split num_outputs need opset 18"
        raise InputError(f"--opset {opset} is too low for --rotary {options.rotary} ({why})",
                         fix=f"pass --opset {need} or higher, or another --rotary mode")
    if opset > 23:
        raise InputError(f"--opset {opset} is newer than this exporter targets (<= 23)", fix="pass --opset 23 or lower")
    return opset


def metadata(spec: LongRoPESpec, options: OnnxOptions, arch: str, shape: DecoderShape) -> dict[str, str]:
    """``metadata_props``: the spec, the switch and KV-cache policies, what produced the file."""
    return {
        "longrope.spec": json.dumps(spec.to_dict(), sort_keys=True),
        "longrope.switch_policy": spec.policy,
        "longrope.switch_rule": SWITCH_RULE if spec.policy == "switch" else "none: long factors at every length",
        "longrope.start_token": str(spec.start_token),
        "longrope.attention_factor": repr(rope.attention_factor(spec)),
        "longrope.kv_policy": options.kv_policy if spec.policy == "switch" else "none-needed",
        # recompute: the first call whose sequence reaches this length runs the whole sequence again
        "longrope.kv_recompute_at_length": str(spec.original_max_position_embeddings + 1)
        if spec.policy == "switch" and options.kv_policy == "recompute" else "none",
        "longrope.rotary": options.rotary,
        "longrope.dtype": options.dtype,
        "longrope.architecture": arch,
        "longrope.num_layers": str(shape.num_layers),
        "longrope.num_kv_heads": str(shape.num_kv_heads),
        "longrope.head_dim": str(shape.head_dim),
        "longrope.tool": f"longrope-export {__version__}",
    }


def _io(shape: DecoderShape, dtype: str) -> tuple[list[Any], list[Any]]:
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", shape.vocab_size])]
    for layer in range(shape.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{layer}.{kind}", elem,
                ["batch_size", shape.num_kv_heads, "past_sequence_length", shape.head_dim]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{layer}.{kind}", elem,
                ["batch_size", shape.num_kv_heads, "total_sequence_length", shape.head_dim]))
    return inputs, outputs


def _weight_bytes(model_dir: Path, dtype: str) -> int:
    """Output weight size from the safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= int(dim)
                total += count * (2 if dtype == "fp16" else 4)
    return total


def plan_shape(model_dir: Path, spec: LongRoPESpec) -> tuple[DecoderShape, str]:
    """Check the checkpoint can be exported; return its shape and architecture name."""
    config_path = model_dir / "config.json"
    config = read_json(config_path)
    arch = architecture_for(config, str(config_path))
    geometry = model_geometry(config, str(config_path))
    if geometry.rotary_dim != spec.rotary_dim:
        raise InputError(f"spec rotary dim {spec.rotary_dim} != model rotary dim {geometry.rotary_dim}",
                         path=config_path, fix="bake factors made for this model")
    shape = DecoderShape.from_config(config, str(config_path))
    if len(spec.long_factors) > 1 and len(spec.long_factors) != shape.num_layers:
        raise InputError(f"{len(spec.long_factors)} per-layer factor rows for {shape.num_layers} layers",
                         path=spec.source, fix="give one row per decoder layer, or one vector")
    return shape, arch.model_type


def build_model(model_dir: Path, spec: LongRoPESpec, options: OnnxOptions, folder: Path,
                external: bool) -> Any:
    """The ``ModelProto`` (weights inline, or already streamed into ``folder/model.onnx.data``)."""
    from onnx import helper

    opset = _check_options(options)
    shape, arch = plan_shape(model_dir, spec)
    weights = SafetensorsWeights(model_dir, options.dtype)
    sink = WeightSink(folder / DATA_FILE if external else None, DATA_FILE)
    try:
        builder = DecoderBuilder(shape, spec, weights, sink, options.dtype)
        builder.build()
    finally:
        sink.close()
    inputs, outputs = _io(shape, options.dtype)
    graph = helper.make_graph(builder.nodes, "longrope_causal_lm", inputs, outputs, sink.initializers,
                              value_info=builder.value_info)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)]
    if options.rotary == "contrib":
        opsets.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    function = build_function(options.rotary, opset, spec.rotary_dim, shape.head_dim)  # type: ignore[arg-type]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function], producer_name="longrope-export",
                              producer_version=__version__, ir_version=IR_VERSION,
                              doc_string="Causal LM with LongRoPE rotary (longrope::LongRoPE); see docs/onnx.md")
    helper.set_model_props(model, metadata(spec, options, arch, shape))
    return model


def export_onnx(model_dir: Path, output: Path, spec: LongRoPESpec,
                options: OnnxOptions = OnnxOptions()) -> OnnxExportResult:
    """Export the baked checkpoint ``model_dir`` (whose LongRoPE is ``spec``) to ``output/model.onnx``.

    Example:
        >>> from longrope_export.hf_loader import checkpoint_spec
        >>> export_onnx(Path("llama-longrope"), Path("llama-onnx"),
        ...             checkpoint_spec(Path("llama-longrope")))  # doctest: +SKIP
    """
    import onnx

    model_dir, output = Path(model_dir), Path(output)
    opset = _check_options(options)
    plan_shape(model_dir, spec)
    external = options.external_data
    if external is None:
        external = _weight_bytes(model_dir, options.dtype) > INLINE_LIMIT
    with atomic_output_dir(output, options.force, sources=(model_dir,)) as tmp:
        model = build_model(model_dir, spec, options, tmp, external)
        onnx.save_model(model, str(tmp / MODEL_FILE))
        del model
        if options.check:
            try:
                onnx.checker.check_model(str(tmp / MODEL_FILE), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
                raise CheckFailed(f"exported graph fails onnx.checker: {' '.join(str(error).split())[:300]}",
                                  path=model_dir, fix="report this as a longrope-export bug") from error
    model_path = output / MODEL_FILE
    size = model_path.stat().st_size + ((output / DATA_FILE).stat().st_size if external else 0)
    notes = [f"rotary: {OP_TYPE} ({DOMAIN}) lowered as {options.rotary}, opset {opset}, IR {IR_VERSION}"]
    if spec.policy == "switch":
        notes.append(f"switch: {SWITCH_RULE}; KV cache policy at the switch: {options.kv_policy} (docs/onnx.md)")
    return OnnxExportResult(output, model_path, spec, opset, options.rotary, external, size, notes)


def convert_to_onnx(model_dir: Path, output: Path, options: OnnxOptions = OnnxOptions(),
                    bake_options: BakeOptions | None = None) -> OnnxExportResult:
    """``convert --to onnx``: export a baked checkpoint, or bake ``model_dir`` first (into a temporary
    folder, same options as ``bake``) when ``bake_options`` asks for any change.

    Every option and the output folder are checked before anything is baked or written.
    """
    import tempfile

    from longrope_export.bake import bake
    from longrope_export.hf_loader import checkpoint_spec

    model_dir, output = Path(model_dir), Path(output)
    _check_options(options)
    if output.exists() and not options.force:
        raise OutputExistsError("output already exists", path=output, fix="pass --force to replace it")
    if not (model_dir / "config.json").exists():
        raise InputError("model folder has no config.json", path=model_dir, fix="give a Hugging Face checkpoint folder")
    architecture_for(read_json(model_dir / "config.json"), str(model_dir / "config.json"))
    check_no_overlap(output, (model_dir,))
    if bake_options is None or not bake_options.changes_longrope():
        return export_onnx(model_dir, output, checkpoint_spec(model_dir), options)
    with tempfile.TemporaryDirectory(prefix="longrope-onnx-") as scratch:
        baked = Path(scratch) / "baked"
        result = bake(model_dir, baked, replace(bake_options, link=True, force=False))
        exported = export_onnx(baked, output, result.spec, options)
    exported.notes[:0] = result.notes
    return exported


def read_onnx_spec(path: Path) -> tuple[LongRoPESpec, dict[str, str]]:
    """The spec and ``longrope.*`` metadata of an exported model (external data is not loaded)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as error:
        raise InputError(f"not a readable ONNX model ({type(error).__name__})", path=path,
                         fix="give a model.onnx written by longrope-export convert --to onnx") from None
    props = {prop.key: prop.value for prop in model.metadata_props if prop.key.startswith(META_PREFIX)}
    if "longrope.spec" not in props:
        raise InputError("ONNX model has no longrope.spec metadata", path=path,
                         fix="give a model.onnx written by longrope-export convert --to onnx")
    spec = LongRoPESpec.from_dict(json.loads(props["longrope.spec"]), source=str(path))
    rotary_nodes = sum(1 for node in model.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE)
    props["rotary_nodes"] = str(rotary_nodes)
    props["has_function"] = str(any(f.domain == DOMAIN and f.name == OP_TYPE for f in model.functions))
    props["opset"] = str(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
    props["ir_version"] = str(model.ir_version)
    return spec, props
