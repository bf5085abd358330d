"""The spec and its loaders: every real factor file, every config dialect, every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import PHI35_CONFIG

from longrope_export.errors import InputError
from longrope_export.inspection import inspect_path
from longrope_export.sources import read_factor_csv, read_factor_source, spec_from_config
from longrope_export.spec import LongRoPESpec, build_spec

ONES = (tuple([1.0] * 4),)


def small_spec(**changes: object) -> LongRoPESpec:
    base = dict(rotary_dim=8, rope_theta=10000.0, original=16, target=128,
                long_factors=((1.0, 2.0, 4.0, 8.0),))
    base.update(changes)
    return build_spec(**base)  # type: ignore[arg-type]


def test_every_published_file_loads(factors_dir: Path) -> None:
    files = sorted(factors_dir.glob("*.csv"))
    assert len(files) == 31
    for path in files:
        rows = read_factor_csv(path)
        assert len(rows) == 1 and len(rows[0]) == 64, path.name  # 32 identical rows collapse


def test_inspect_reports_monotonicity_and_scale(factors_dir: Path) -> None:
    for path in sorted(factors_dir.glob("*_mis_*.csv")):
        report = inspect_path(path)
        assert report["n_factors"] == 64
        eval_len = path.name.split("_")[0]
        non_monotone = any("not monotone" in w for w in report["warnings"])
        if eval_len in ("4k", "8k"):
            assert not non_monotone, path.name
        else:
            assert non_monotone, path.name
    report = inspect_path(factors_dir / "2048k_la2_256k.csv")
    assert report["contexts"] == {"original": 4096, "target": 2097152, "scale": 512.0,
                                  "from": "file name (microsoft/LongRoPE naming)"}
    report = inspect_path(factors_dir / "init_yarn_8x_one_per_line.csv", original=4096, target=32768)
    assert report["n_factors"] == 64 and report["contexts"]["scale"] == 8.0


def test_phi35_config_shows_48_and_48() -> None:
    report = inspect_path(PHI35_CONFIG)
    spec = report["longrope"]
    assert len(spec["long_factors"][0]) == 48 and len(spec["short_factors"][0]) == 48
    assert spec["policy"] == "switch"
    assert spec["original_max_position_embeddings"] == 4096 and spec["max_position_embeddings"] == 131072
    assert spec["effective_attention_factor"] == pytest.approx(1.1902380714238083, abs=1e-15)


def test_per_layer_rows_are_kept_when_they_differ(tmp_path: Path) -> None:
    path = tmp_path / "layers.csv"
    path.write_text("1.0,2.0\n1.0,3.0\n")
    assert read_factor_csv(path) == ((1.0, 2.0), (1.0, 3.0))
    spec = build_spec(rotary_dim=4, rope_theta=1e4, original=4, target=16, long_factors=read_factor_csv(path))
    assert spec.per_layer
    with pytest.raises(InputError, match="differ between layers"):
        spec.factors("long")


@pytest.mark.parametrize("text, message", [
    ("1.0\nnan\n", "is nan"),
    ("1.0\ninf\n", "is inf"),
    ("1.0\n-2.0\n", "must be > 0"),
    ("1.0\n0\n", "must be > 0"),
    ("1.0,2.0\n1.0\n", "row 1 has 1 values"),
    ("factor\n1.0\n", "'factor' is not a number"),
    ("", "no factors"),
])
def test_bad_factor_files_name_file_and_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        read_factor_csv(path)
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_wrong_length_names_rotary_dim() -> None:
    with pytest.raises(InputError, match="has 3 values but the model's rotary dim 8 needs 4"):
        small_spec(long_factors=((1.0, 2.0, 3.0),))


@pytest.mark.parametrize("changes, message", [
    (dict(start_token=-1), "n_hat=-1"),
    (dict(start_token=16), "n_hat=16"),
    (dict(original=128), "original context 128 >= target"),
    (dict(attention_factor=float("nan")), "attention factor"),
    (dict(policy="switch"), "policy switch needs short factors"),
    (dict(policy="long-only", short_factors=ONES), "short factors given with policy long-only"),
])
def test_bad_spec_values(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        small_spec(**changes)


def test_policy_defaults() -> None:
    assert small_spec().policy == "long-only"
    spec = small_spec(short_factors=ONES)
    assert spec.policy == "switch" and spec.factors("short") == ONES[0]
    assert small_spec().short_factors == small_spec().long_factors


def test_warnings_not_errors() -> None:
    spec = small_spec(long_factors=((1.0, 3.0, 2.0, 11.0),))
    notes = spec.warnings()
    assert any("not monotone" in n for n in notes) and any("exceed 1.25*s" in n for n in notes)


def test_json_round_trip(tmp_path: Path) -> None:
    spec = small_spec(short_factors=ONES, start_token=4, attention_factor=1.5)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    source = read_factor_source(path)
    assert source.kind == "spec" and source.spec == spec
    with pytest.raises(InputError, match="version 99"):
        LongRoPESpec.from_dict(dict(spec.to_dict(), version=99))


def _config(**extra: object) -> dict:
    return dict(model_type="llama", hidden_size=64, num_attention_heads=2, max_position_embeddings=1024, **extra)


def test_config_dialects_agree() -> None:
    long, short = [1.0 + i for i in range(16)], [1.0] * 16
    portable = _config(original_max_position_embeddings=256, rope_theta=500000.0,
                       rope_scaling={"rope_type": "longrope", "long_factor": long, "short_factor": short,
                                     "original_max_position_embeddings": 256, "factor": 4.0})
    v5 = _config(rope_parameters={"rope_type": "longrope", "rope_theta": 500000.0, "long_factor": long,
                                  "short_factor": short, "original_max_position_embeddings": 256, "factor": 4.0})
    su = _config(original_max_position_embeddings=256, rope_theta=500000.0,
                 rope_scaling={"type": "su", "long_factor": long, "short_factor": short})
    specs = [spec_from_config(c) for c in (portable, v5, su)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0] is not None and specs[0].rotary_dim == 32 and specs[0].rope_theta == 500000.0
    assert spec_from_config(_config()) is None


def test_config_factor_drives_attention_like_transformers5() -> None:
    # 5.x computes the attention factor from `factor` when present, not from max / original
    config = _config(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "long_factor": [2.0] * 16,
                                      "short_factor": [2.0] * 16, "original_max_position_embeddings": 256,
                                      "factor": 16.0})
    spec = spec_from_config(config)
    assert spec is not None
    assert spec.attention_factor == pytest.approx(math.sqrt(1 + math.log(16) / math.log(256)))


def test_silent_drop_config_is_reported() -> None:
    config = _config(rope_scaling={"rope_type": "longrope", "factor": 4.0})
    with pytest.raises(InputError, match="silent-drop"):
        spec_from_config(config)
