"""ONNX logits against transformers on real onnxruntime (CPU): both factor sets, the switch, n_hat,
the three rotary lowerings, KV-cache decoding across the threshold, and the wrong factor set failing."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_cases import ORIGINAL, onnx_cases, onnx_root, token_ids, tolerance

from validation.onnx_runtime import OnnxCausalLM

pytest.importorskip("onnxruntime")

FIXTURES = (onnx_cases, onnx_root)  # session fixtures shared with the other ONNX test module


def _error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max())


@pytest.mark.parametrize("name", ["llama", "phi3", "mistral", "mistral-window", "phi3-partial", "qwen2"])
@pytest.mark.parametrize("length", [64, 300])
def test_logits_match_transformers(onnx_cases, onnx_root, name: str, length: int) -> None:
    case = onnx_cases[name]
    ids = token_ids(length)
    want = case.reference(ids)
    got = OnnxCausalLM(case.export(onnx_root)).logits(ids)
    assert got.shape == want.shape
    assert _error(got, want) <= tolerance(want), (name, length, _error(got, want), tolerance(want))


@pytest.mark.parametrize("length", [ORIGINAL, ORIGINAL + 1])
def test_switch_boundary_matches_transformers(onnx_cases, onnx_root, length: int) -> None:
    """256 positions run the short factors, 257 the long ones: the same call-wide rule as transformers."""
    case = onnx_cases["phi3"]
    ids = token_ids(length)
    want = case.reference(ids)
    assert _error(OnnxCausalLM(case.export(onnx_root)).logits(ids), want) <= tolerance(want)


@pytest.mark.parametrize("name", ["llama", "phi3", "phi3-partial", "mistral"])
@pytest.mark.parametrize("rotary", ["opset23", "contrib"])
def test_rotary_lowerings_agree(onnx_cases, onnx_root, name: str, rotary: str) -> None:
    case = onnx_cases[name]
    function = OnnxCausalLM(case.export(onnx_root))
    lowered = OnnxCausalLM(case.export(onnx_root, rotary=rotary))
    for length in (64, 300):
        ids = token_ids(length)
        want = case.reference(ids)
        base = function.logits(ids)
        got = lowered.logits(ids)
        assert _error(got, base) <= tolerance(base), (rotary, length, _error(got, base))
        assert _error(got, want) <= tolerance(want), (rotary, length, _error(got, want))


@pytest.mark.parametrize("wrong", ["swapped", "reversed"])
def test_wrong_factor_set_fails(onnx_cases, onnx_root, wrong: str) -> None:
    """The same comparison fails by far when the export carries the wrong factors."""
    case = onnx_cases["llama"]
    spec = case.spec
    if wrong == "swapped":
        bad = spec.replace(long_factors=spec.short_factors, short_factors=spec.long_factors)
    else:
        bad = spec.replace(long_factors=tuple(row[::-1] for row in spec.long_factors),
                           short_factors=tuple(row[::-1] for row in spec.short_factors))
    model = OnnxCausalLM(case.export(onnx_root, spec=bad, label=f"wrong-{wrong}"))
    for length in (64, 300):
        ids = token_ids(length)
        want = case.reference(ids)
        assert _error(model.logits(ids), want) > 100 * tolerance(want), (wrong, length)


@pytest.mark.parametrize("name", ["llama", "phi3", "mistral"])
def test_kv_cache_decode_across_threshold(onnx_cases, onnx_root, name: str) -> None:
    """Prefill 240 tokens, decode to 300 one token at a time: with kv_policy recompute every row
    matches transformers' full forward of its prefix (short up to 256 positions, long beyond)."""
    case = onnx_cases[name]
    ids = token_ids(300)
    short_rows = case.reference(ids[:ORIGINAL])
    long_rows = case.reference(ids)
    want = np.concatenate([short_rows, long_rows[ORIGINAL:]]) if case.spec.policy == "switch" else long_rows
    model = OnnxCausalLM(case.export(onnx_root))
    result = model.decode(ids, prompt_len=240)
    assert result.logits.shape == want.shape
    assert _error(result.logits, want) <= tolerance(want), (name, _error(result.logits, want))
    assert result.recomputed_at == ([ORIGINAL + 1] if case.spec.policy == "switch" else [])


def test_kv_cache_keep_policy_keeps_short_keys(onnx_cases, onnx_root) -> None:
    """kv_policy keep (what transformers' Llama generate and onnxruntime-genai outside 4097 do):
    rows up to the threshold are exact, rows past it see short-rotated keys and differ."""
    case = onnx_cases["llama"]
    ids = token_ids(300)
    want = np.concatenate([case.reference(ids[:ORIGINAL]), case.reference(ids)[ORIGINAL:]])
    result = OnnxCausalLM(case.export(onnx_root)).decode(ids, prompt_len=240, kv_policy="keep")
    assert result.recomputed_at == []
    assert _error(result.logits[:ORIGINAL], want[:ORIGINAL]) <= tolerance(want)
    assert _error(result.logits[ORIGINAL:], want[ORIGINAL:]) > 100 * tolerance(want)


def test_far_positions_use_fp32_angles(onnx_cases, onnx_root) -> None:
    """A 2,097,152-target export run at positions near 2.1M matches transformers given the same position ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from longrope_export.hf_loader import patch_rotary

    case = onnx_cases["llama"]
    spec = case.spec.replace(max_position_embeddings=2_097_152)
    model = OnnxCausalLM(case.export(onnx_root, spec=spec, label="2M"))
    ids = token_ids(16)
    positions = np.arange(2_097_136, 2_097_152, dtype=np.int64)
    got, _ = model.forward(ids[None], position_ids=positions[None])
    reference = patch_rotary(AutoModelForCausalLM.from_pretrained(str(case.baked), dtype=torch.float32), spec).eval()
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids)[None],
                         position_ids=torch.from_numpy(positions)[None]).logits[0].numpy()
    assert _error(got[0], want) <= tolerance(want), _error(got[0], want)


@pytest.mark.parametrize("rotary", ["function", "opset23", "contrib"])
def test_fp16_export_tracks_fp32(onnx_cases, onnx_root, rotary: str) -> None:
    """fp16 weights and activations, fp32 positions/angles: top-1 tokens and logits stay close."""
    case = onnx_cases["phi3"]
    model = OnnxCausalLM(case.export(onnx_root, rotary=rotary, label=f"fp16-{rotary}", dtype="fp16"))
    ids = token_ids(300)
    want = case.reference(ids)
    got = model.logits(ids)
    assert got.dtype == np.float32
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95
    assert _error(got, want) < 0.05 * float(np.abs(want).max())


@pytest.mark.parametrize("rotary", ["function", "opset23", "contrib"])
def test_left_padding_batch_matches_transformers(onnx_cases, onnx_root, rotary: str) -> None:
    """Batch of a 300-token row and a left-padded 200-token row: the switch is decided by the
    batch's largest position id (300 > 256: long factors for both rows, as in transformers)."""
    import torch

    case = onnx_cases["llama"]
    ids = np.stack([token_ids(300), np.concatenate([np.zeros(100, np.int64), token_ids(200)])])
    mask = np.ones_like(ids)
    mask[1, :100] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    positions[mask == 0] = 1  # what transformers' generate puts at padded positions
    model = OnnxCausalLM(case.export(onnx_root, rotary=rotary))
    got, _ = model.forward(ids, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        want = case.reference_model()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                      position_ids=torch.from_numpy(positions)).logits.numpy()
    real = mask.astype(bool)
    assert _error(got[real], want[real]) <= tolerance(want[real]), _error(got[real], want[real])
    alone = case.reference(token_ids(200))  # the same row unpadded runs the short factors
    assert _error(got[1, 100:], alone) > 100 * tolerance(alone)
