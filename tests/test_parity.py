"""validate parity: passes a correct export, fails on a 1% factor change (spec gate) and on a
perturbed weight (logits gate), names the worst length, writes JUnit that parses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from onnx_cases import onnx_cases, onnx_root  # noqa: F401  (session fixtures)
from safetensors.torch import load_file, save_file

from converters.onnx_export import OnnxOptions, export_onnx
from validation.parity import run_parity

CLI = [sys.executable, "-m", "longrope_export.cli"]


def parity(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "validate", "parity", *map(str, args)], capture_output=True, text=True)


def test_correct_onnx_export_passes(onnx_cases, onnx_root, tmp_path: Path) -> None:  # noqa: F811
    case = onnx_cases["phi3"]
    result = parity(case.baked, case.export(onnx_root), "--json", "--junit", tmp_path / "j.xml",
                    "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert [r["length"] for r in data["lengths"]] == [64, 300]
    assert [r["factor_set_reference"] for r in data["lengths"]] == ["short", "long"]
    assert data["spec_passed"] and data["logits_passed"] and data["worst"]["ratio"] < 1
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and int(suite.get("tests") or 0) == 3
    assert json.loads((tmp_path / "r.json").read_text())["passed"]


def test_one_factor_off_by_one_percent_fails_the_spec_gate(onnx_cases, onnx_root, tmp_path: Path) -> None:  # noqa: F811
    case = onnx_cases["phi3"]
    long = list(case.spec.factors("long"))
    long[10] *= 1.01
    bent = case.spec.replace(long_factors=(tuple(long),))
    export_onnx(case.baked, tmp_path / "bent", bent, OnnxOptions())
    result = parity(case.baked, tmp_path / "bent" / "model.onnx", "--json", "--junit", tmp_path / "j.xml")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    failed = [c["check"] for c in data["spec_checks"] if not c["passed"]]
    assert failed == ["long factors (fp32, bitwise)"]
    assert "[10]" in next(c["candidate"] for c in data["spec_checks"] if not c["passed"])
    spec_case = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase[@name='spec']")
    assert spec_case is not None and spec_case.find("failure") is not None


def test_perturbed_weight_fails_the_logits_gate(onnx_cases, tmp_path: Path) -> None:  # noqa: F811
    case = onnx_cases["llama"]
    broken = tmp_path / "broken"
    shutil.copytree(case.baked, broken)
    tensors = load_file(broken / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name] + 0.01 * torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(1))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    export_onnx(broken, tmp_path / "onnx", case.spec, OnnxOptions())
    result = parity(case.baked, tmp_path / "onnx", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["spec_passed"] and not data["logits_passed"]
    worst = data["worst"]
    assert worst["ratio"] > 1 and worst["length"] in (64, 300)
    assert "worst:" in parity(case.baked, tmp_path / "onnx").stdout


def test_transformers_candidate_is_bitwise(onnx_cases) -> None:  # noqa: F811
    case = onnx_cases["llama"]  # n_hat = 4, switch policy: honoured on both sides
    report = run_parity(case.baked, case.baked)
    assert report.passed and all(r.max_abs == 0.0 for r in report.lengths)
    assert not report.lossy


def test_missing_candidate_is_bad_input(onnx_cases, tmp_path: Path) -> None:  # noqa: F811
    result = parity(onnx_cases["llama"].baked, tmp_path / "nope.gguf")
    assert result.returncode == 2 and "candidate not found" in result.stderr
