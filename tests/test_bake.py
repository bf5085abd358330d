"""bake end to end: stock transformers loads the result and computes exactly the spec."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PHI35_CONFIG, tree_digest
from reference_rope import reference_cos_sin
from transformers import AutoModelForCausalLM

from longrope_export import load_model
from longrope_export.hf_loader import checkpoint_spec
from longrope_export.sources import read_factor_csv, read_json
from validation.rope_check import probe_positions, stock_rotary

CLI = [sys.executable, "-m", "longrope_export.cli"]


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def baked_llama(llama_dir: Path, factors_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = tree_digest(llama_dir)
    out = tmp_path_factory.mktemp("baked") / "llama-2m"
    result = run_cli("bake", llama_dir, "--factors", factors_dir / "2048k_la2_256k.csv",
                     "--original-max-position-embeddings", 4096, "--max-position-embeddings", 2097152, "-o", out)
    assert result.returncode == 0, result.stderr
    assert tree_digest(llama_dir) == before, "bake modified its input"
    return out


@pytest.fixture(scope="module")
def baked_phi3(phi3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = tree_digest(phi3_dir)
    out = tmp_path_factory.mktemp("baked") / "phi3-128k"
    result = run_cli("bake", phi3_dir, "--factors", PHI35_CONFIG, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["policy"] == "switch"
    assert tree_digest(phi3_dir) == before
    return out


def test_weights_are_byte_identical(baked_llama: Path, llama_dir: Path) -> None:
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (baked_llama / name).read_bytes() == (llama_dir / name).read_bytes(), name
    record = read_json(baked_llama / "longrope.json")
    hashes = {f["name"]: f["sha256"] for f in record["provenance"]["files"]}
    assert hashes["model.safetensors"] == hashlib.sha256((llama_dir / "model.safetensors").read_bytes()).hexdigest()
    assert record["provenance"]["factors"]["path"].endswith("2048k_la2_256k.csv")


def _expected(spec_dir: Path, factors: list[float], positions: list[int], n_hat: int = 0):
    config = read_json(spec_dir / "config.json")
    return reference_cos_sin(positions, factors, 128 if config["model_type"] != "phi3" else 96, 10000.0,
                             config["original_max_position_embeddings"], config["max_position_embeddings"], n_hat)


def test_llama_cos_sin_equal_independent_reference(baked_llama: Path, factors_dir: Path) -> None:
    factors = list(read_factor_csv(factors_dir / "2048k_la2_256k.csv")[0])
    rotary = stock_rotary(baked_llama)
    positions = [0, 4095, 4096, 4097, 2097151]
    for call in ([0, 4095], positions):  # short regime call, long regime call (long-only: same factors)
        cos, sin = rotary(torch.zeros(1), torch.tensor([call]))
        ref_cos, ref_sin = _expected(baked_llama, factors, call)
        assert torch.equal(cos[0], ref_cos) and torch.equal(sin[0], ref_sin)


def test_phi3_cos_sin_both_regimes(baked_phi3: Path) -> None:
    scaling = read_json(baked_phi3 / "config.json")["rope_scaling"]
    rotary = stock_rotary(baked_phi3)
    short_call, long_call = [0, 4095], [0, 4095, 4096, 4097, 131071]
    cos, _ = rotary(torch.zeros(1), torch.tensor([short_call]))
    assert torch.equal(cos[0], _expected(baked_phi3, scaling["short_factor"], short_call)[0])
    cos, _ = rotary(torch.zeros(1), torch.tensor([long_call]))
    assert torch.equal(cos[0], _expected(baked_phi3, scaling["long_factor"], long_call)[0])


@pytest.mark.parametrize("fixture", ["baked_llama", "baked_phi3"])
def test_forward_in_each_regime_and_rope_matters(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    base = AutoModelForCausalLM.from_pretrained(read_json(path / "longrope.json")["provenance"]["base_model"]).eval()
    vocab = model.config.vocab_size
    for length in (64, 4100):  # below and above the original context 4096
        ids = (torch.arange(length) * 7919 % vocab)[None]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            plain = base(input_ids=ids).logits
        assert torch.isfinite(logits).all()
        gap = float((logits - plain).abs().max())
        # init std 0.1: LongRoPE vs plain RoPE moves the logits visibly (REFERENCE s.6)
        assert gap > 0.05 * float(plain.abs().max()), (length, gap)


def test_start_token_through_project_loader(phi3_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "phi3-nhat"
    result = run_cli("bake", phi3_dir, "--factors", PHI35_CONFIG, "--start-token", 4, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "ignores it" in result.stderr and "load_model" in result.stderr
    assert read_json(out / "config.json")["longrope_export"]["start_token"] == 4
    ours = load_model(out).eval()
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    positions = [0, 1, 3, 4, 4095]
    cos, _ = ours.model.rotary_emb(torch.zeros(1), torch.tensor([positions]))
    short = read_json(out / "config.json")["rope_scaling"]["short_factor"]
    assert torch.equal(cos[0], _expected(out, short, positions, n_hat=4)[0])
    ids = (torch.arange(64) * 31 % 256)[None]
    with torch.no_grad():
        diff = (ours(input_ids=ids).logits - stock(input_ids=ids).logits).abs()
    assert float(diff[0, :4].max()) > 1e-3  # the first n_hat positions really differ ...
    # ... and n_hat leaves later positions' rotations alone (their logits still move through attention)
    cos_stock, _ = stock.model.rotary_emb(torch.zeros(1), torch.tensor([positions]))
    assert torch.equal(cos[0, 3:], cos_stock[0, 3:])


def test_mistral_needs_original_and_drops_sliding_window(mistral_dir: Path, factors_dir: Path,
                                                        tmp_path: Path) -> None:
    factors = factors_dir / "ft_mis_128k.csv"
    result = run_cli("bake", mistral_dir, "--factors", factors, "--max-position-embeddings", 131072,
                     "-o", tmp_path / "a")
    assert result.returncode == 2 and "--original-max-position-embeddings" in result.stderr
    assert not (tmp_path / "a").exists()
    result = run_cli("bake", mistral_dir, "--factors", factors, "--original-max-position-embeddings", 4096,
                     "--max-position-embeddings", 131072, "-o", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    config = read_json(tmp_path / "b" / "config.json")
    assert config["sliding_window"] is None and "not monotone" in result.stderr
    assert config["rope_scaling"]["factor"] == 32.0 and config["max_position_embeddings"] == 131072


def test_explicit_attention_factor_is_not_portable_for_phi3(phi3_dir: Path, tmp_path: Path) -> None:
    result = run_cli("bake", phi3_dir, "--factors", PHI35_CONFIG, "--attention-factor", 1.3, "-o", tmp_path / "a")
    assert result.returncode == 2 and "--transformers5-only" in result.stderr
    assert not (tmp_path / "a").exists()
    result = run_cli("bake", phi3_dir, "--factors", PHI35_CONFIG, "--attention-factor", 1.3,
                     "--transformers5-only", "-o", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    rotary = stock_rotary(tmp_path / "b")
    assert rotary.attention_scaling == 1.3


def test_validate_rope_passes_then_catches_a_one_percent_edit(baked_phi3: Path, tmp_path: Path) -> None:
    result = run_cli("validate", "rope", baked_phi3, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and all(c["bitwise_equal"] for c in report["comparisons"])
    assert report["comparisons"][2]["positions"] == probe_positions(checkpoint_spec(baked_phi3))
    edited = tmp_path / "edited"
    shutil.copytree(baked_phi3, edited)
    config = read_json(edited / "config.json")
    config["rope_scaling"]["long_factor"][20] *= 1.01
    (edited / "config.json").write_text(json.dumps(config))
    result = run_cli("validate", "rope", edited, "--report", tmp_path / "r.json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = read_json(tmp_path / "r.json")
    failed = [c["name"] for c in report["comparisons"] if not c["bitwise_equal"]]
    assert failed == ["transformers-long"]
