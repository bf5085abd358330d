"""Perplexity and passkey machinery on a tiny checkpoint: windows, chunked loss, standard error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from longrope_export.bake import BakeOptions, bake
from longrope_export.baselines import baseline_spec
from validation import torch_runtime
from validation.perplexity import perplexity, windows
from validation.torch_runtime import TorchRuntime


def test_windows_non_overlapping_and_sliding() -> None:
    assert windows(10, 4, None, None) == [(0, 0), (4, 0)]
    assert windows(10, 4, 2, None) == [(0, 0), (2, 2), (4, 2)]
    assert windows(100, 4, None, 8) == [(0, 0), (4, 0)]


@pytest.fixture(scope="module")
def baked(llama_dir: Path, factors_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppl") / "llama"
    return bake(llama_dir, out, BakeOptions(factors=factors_dir / "ft_la2_128k.csv",
                                            max_position_embeddings=131072)).output


def test_chunked_nll_equals_full_logits(baked: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = TorchRuntime.load(baked)
    ids = (torch.arange(300) * 7919 % 256).long()
    monkeypatch.setattr(torch_runtime, "HEAD_CHUNK", 64)  # several chunks
    nll = runtime.token_nll(ids)
    with torch.no_grad():
        loss = runtime.model(input_ids=ids[None], labels=ids[None]).loss
    assert nll.shape == (299,)
    assert float(nll.mean()) == pytest.approx(float(loss), rel=1e-5)
    assert torch.allclose(runtime.token_nll(ids, score_from=100), nll[100:], atol=1e-5)


def test_perplexity_report_and_spec_sensitivity(baked: Path) -> None:
    ids = torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0))
    runtime = TorchRuntime.load(baked)
    point = perplexity(runtime, ids, 256, "longrope")
    assert point.windows == 7 and point.tokens == 7 * 256 and point.factor_set == "long"
    assert math.isfinite(point.stderr) and point.stderr > 0
    assert point.perplexity == pytest.approx(math.exp(point.mean_nll))
    pi = baseline_spec("pi", rotary_dim=128, rope_theta=1e4, original=4096, target=131072)
    other = perplexity(TorchRuntime.load(baked, spec=pi), ids, 256, "pi")
    assert abs(other.mean_nll - point.mean_nll) > 1e-3  # the rotary really is swapped
