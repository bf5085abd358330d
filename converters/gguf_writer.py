"""``convert --to gguf``: a baked Hugging Face checkpoint (llama, mistral, phi3) into one GGUF file
that llama.cpp runs with exactly the checkpoint's LongRoPE.

Plan first (config, spec, vocabulary, every tensor's GGUF name, type and size, every problem listed
at once), then stream: header, key/values and tensor infos are written, then the tensor payloads
one at a time, so peak memory stays near the largest single tensor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_export.errors import InputError
from longrope_export.registry import Architecture, architecture_for
from longrope_export.sources import read_json, spec_from_config
from longrope_export.spec import LongRoPESpec

from .gguf_longrope import add_longrope_keys, factor_arrays, model_arch, require_gguf, selection_notes
from .gguf_vocab import GGUFVocab, add_vocab, check_phi3_name, read_vocab

if TYPE_CHECKING:
    import gguf
    import numpy as np

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: where it comes from and how it is stored."""

    gguf_name: str
    source: str | None  # HF tensor name; None for the factor tensors
    shard: Path | None
    shape: tuple[int, ...]  # numpy order, before quantization
    qtype: Any  # gguf.GGMLQuantizationType
    permute_heads: int | None = None  # llama q/k: heads to un-permute with

    def stored(self) -> tuple[tuple[int, ...], Any, int]:
        """(numpy shape as written, numpy dtype, bytes) for ``add_tensor_info``."""
        import gguf
        import numpy as np

        if self.qtype == gguf.GGMLQuantizationType.F32:
            return self.shape, np.dtype(np.float32), 4 * math.prod(self.shape)
        if self.qtype == gguf.GGMLQuantizationType.F16:
            return self.shape, np.dtype(np.float16), 2 * math.prod(self.shape)
        byte_shape = tuple(gguf.quants.quant_shape_to_byte_shape(self.shape, self.qtype))
        return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)


@dataclass
class GGUFPlan:
    """Everything decided before the output file is opened."""

    model_dir: Path
    arch: Architecture
    config: dict[str, Any]
    spec: LongRoPESpec
    outtype: str
    name: str
    vocab: GGUFVocab
    tensors: list[PlannedTensor]
    notes: list[str] = field(default_factory=list)


def _qtype_for(gguf_name: str, n_dims: int, outtype: str, shape: tuple[int, ...]) -> Any:
    """llama.cpp's rules: 1-D tensors and norms stay F32; q8_0 needs rows divisible by its block."""
    import gguf

    qt = gguf.GGMLQuantizationType
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return qt.F32
    wanted = {"f32": qt.F32, "f16": qt.F16, "bf16": qt.BF16, "q8_0": qt.Q8_0}[outtype]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else qt.F16


def _hf_tensors(model_dir: Path) -> list[tuple[str, Path, tuple[int, ...]]]:
    from safetensors import safe_open

    from longrope_export.checkpoint import check_safetensors

    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise InputError("no *.safetensors weights", path=model_dir, fix="give a checkpoint saved with save_pretrained")
    found: list[tuple[str, Path, tuple[int, ...]]] = []
    for shard in shards:
        check_safetensors(shard)
        with safe_open(str(shard), framework="pt") as handle:
            names = list(handle.keys())  # safe_open is not a dict: keys() is its API
            found.extend((name, shard, tuple(handle.get_slice(name).get_shape())) for name in names)
    return found


def _plan_tensors(model_dir: Path, arch: Architecture, config: dict[str, Any], spec: LongRoPESpec,
                  outtype: str) -> list[PlannedTensor]:
    import gguf

    blocks = int(config["num_hidden_layers"])
    name_map = gguf.TensorNameMap(model_arch(str(arch.gguf_arch)), blocks)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    planned, unmapped = [], []
    for name, shard, shape in _hf_tensors(model_dir):
        if name.endswith(".rotary_emb.inv_freq"):
            continue
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            unmapped.append(name)
            continue
        permute = None
        if arch.gguf_permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = heads
        elif arch.gguf_permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = kv_heads
        planned.append(PlannedTensor(new_name, name, shard, shape, _qtype_for(new_name, len(shape), outtype, shape),
                                     permute))
    if unmapped:
        raise InputError(f"{len(unmapped)} tensor(s) have no GGUF name for arch {arch.gguf_arch}: "
                         f"{', '.join(unmapped[:8])}", path=model_dir,
                         fix="give a plain llama/mistral/phi3 decoder checkpoint")
    for gguf_name, array in factor_arrays(spec).items():
        planned.append(PlannedTensor(gguf_name, None, None, array.shape, gguf.GGMLQuantizationType.F32))
    return planned


def _geometry_checks(config: dict[str, Any], spec: LongRoPESpec, where: Path) -> None:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    if spec.rotary_dim != head_dim and config.get("model_type") != "phi3":
        raise InputError(f"partial rotary (rotary dim {spec.rotary_dim} of head_dim {head_dim}) is not supported "
                         "for GGUF arch llama", path=where, fix="convert a model that rotates the whole head")


def plan_gguf(model_dir: Path, outtype: str = "f32", name: str | None = None) -> GGUFPlan:
    """Check every input and decide every tensor before writing anything."""
    from longrope_export.hf_loader import checkpoint_spec

    model_dir = Path(model_dir)
    require_gguf()
    if outtype not in OUTTYPES:
        raise InputError(f"outtype {outtype!r} is not supported", fix=f"use one of {', '.join(OUTTYPES)}")
    config = read_json(model_dir / "config.json")
    arch = architecture_for(config, str(model_dir / "config.json"))
    if arch.gguf_arch is None:
        raise InputError(f"model_type {arch.model_type} has no GGUF export here", path=model_dir,
                         fix="supported for GGUF: llama, mistral, phi3")
    if not (model_dir / "longrope.json").exists() and spec_from_config(config, str(model_dir / "config.json")) is None:
        raise InputError("checkpoint has no LongRoPE", path=model_dir,
                         fix="pass --factors FILE (with --max-position-embeddings N) to bake on the fly, "
                             "or bake it first with longrope-export bake")
    spec = checkpoint_spec(model_dir)
    _geometry_checks(config, spec, model_dir)
    factor_arrays(spec)  # refuses differing per-layer rows before anything else
    vocab = read_vocab(model_dir, int(config["vocab_size"]))
    name = name or model_dir.resolve().name
    check_phi3_name(vocab, name, model_dir)
    tensors = _plan_tensors(model_dir, arch, config, spec, outtype)
    notes = list(vocab.notes) + selection_notes(spec) + _arch_notes(arch, config)
    return GGUFPlan(model_dir, arch, config, spec, outtype, name, vocab, tensors, notes)


def _arch_notes(arch: Architecture, config: dict[str, Any]) -> list[str]:
    if not arch.has_sliding_window:
        return []
    window = config.get("sliding_window")
    if window is None:
        return [(f"{arch.model_type}: no sliding window in the config; llama.cpp (arch llama) also attends over the "
                 "whole context, so the two agree at every length")]
    return [(f"{arch.model_type}: sliding_window {window} is not written: llama.cpp's arch llama has no sliding "
             f"window and attends over the whole context, so it diverges from transformers beyond {window} tokens "
             "(bake with --sliding-window drop to make transformers match)")]


def _add_model_keys(writer: gguf.GGUFWriter, plan: GGUFPlan) -> None:
    import gguf

    config, spec = plan.config, plan.spec
    heads = int(config["num_attention_heads"])
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(plan.name)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(spec.rotary_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    head_dim = config.get("head_dim")
    if head_dim and int(head_dim) != int(config["hidden_size"]) // heads:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    if plan.arch.gguf_arch == "phi3":
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
    else:
        writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(file_types[plan.outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_longrope_keys(writer, spec, str(plan.arch.gguf_arch))
    add_vocab(writer, plan.vocab)


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split q/k rows to llama.cpp's interleaved pairs (as llama.cpp's LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _payload(tensor: PlannedTensor, factors: dict[str, np.ndarray], handles: dict[Path, Any]) -> np.ndarray:
    import gguf
    import torch

    if tensor.source is None:
        return factors[tensor.gguf_name]
    assert tensor.shard is not None
    data = handles[tensor.shard].get_tensor(tensor.source).to(torch.float32).numpy()
    if tensor.permute_heads is not None:
        data = _permute(data, tensor.permute_heads)
    return gguf.quants.quantize(data, tensor.qtype)


def write_gguf(plan: GGUFPlan, output: Path, force: bool = False,
               on_bytes: Callable[[int], None] | None = None) -> Path:
    """Stream ``plan`` into ``output`` (temporary file, renamed at the end); ``on_bytes`` gets each
    tensor's stored size as it is written (for a progress bar)."""
    from contextlib import ExitStack

    from safetensors import safe_open

    from .gguf_io import atomic_gguf

    factors = factor_arrays(plan.spec)
    with atomic_gguf(Path(output), str(plan.arch.gguf_arch), force, sources=()) as writer, ExitStack() as stack:
        _add_model_keys(writer, plan)
        for tensor in plan.tensors:
            shape, dtype, nbytes = tensor.stored()
            writer.add_tensor_info(tensor.gguf_name, shape, dtype, nbytes, raw_dtype=tensor.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        handles = {shard: stack.enter_context(safe_open(str(shard), framework="pt"))
                   for shard in {t.shard for t in plan.tensors if t.shard is not None}}
        for tensor in plan.tensors:
            writer.write_tensor_data(_payload(tensor, factors, handles))
            if on_bytes is not None:
                on_bytes(tensor.stored()[2])
    return Path(output)


def total_bytes(plan: GGUFPlan) -> int:
    """Bytes of tensor data the plan writes."""
    return sum(tensor.stored()[2] for tensor in plan.tensors)


@contextlib.contextmanager
def prepared_plan(model_dir: Path, output: Path, outtype: str = "f32", bake_options: Any = None,
                  force: bool = False) -> Iterator[GGUFPlan]:
    """The plan for converting ``model_dir``; with ``bake_options`` (a :class:`~longrope_export.bake.BakeOptions`)
    the checkpoint is baked first into a temporary folder beside the output (weights hard-linked where
    possible), which lives as long as the context."""
    import dataclasses
    import shutil
    import tempfile

    from .gguf_io import check_output

    model_dir, output = Path(model_dir), Path(output)
    check_output(output, force)
    if bake_options is None:
        yield plan_gguf(model_dir, outtype)
        return
    from longrope_export.bake import bake

    parent = output.parent if str(output.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.bake-", dir=parent))
    try:
        options = dataclasses.replace(bake_options, link=True, force=False)
        baked = bake(model_dir, work / "baked", options)
        plan = plan_gguf(work / "baked", outtype, name=model_dir.resolve().name)
        plan.notes[:0] = baked.notes
        yield plan
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert_to_gguf(model_dir: Path, output: Path, outtype: str = "f32", bake_options: Any = None,
                    force: bool = False, on_bytes: Callable[[int], None] | None = None) -> GGUFPlan:
    """Convert a baked checkpoint (or, with ``bake_options``, bake it on the fly first) into ``output``.

    Example:
        >>> convert_to_gguf(Path("phi3-longrope"), Path("phi3.gguf"), "q8_0")  # doctest: +SKIP
    """
    with prepared_plan(model_dir, output, outtype, bake_options, force) as plan:
        write_gguf(plan, output, force, on_bytes)
        return plan
