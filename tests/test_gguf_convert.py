"""convert --to gguf: the keys and f32 factor tensors of REFERENCE.md s.3, llama.cpp parity with
transformers in both regimes, and tensor equality with llama.cpp's own converter."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from gguf_support import LA2_LONG, ORIGINAL, TARGET, require_llama_cpp, run_llama_cpp_converter

from converters.gguf_longrope import START_TOKEN_KEY, SWITCH_POLICY_KEY, factor_tensor_names
from longrope_export import rope
from longrope_export.cli import main
from longrope_export.hf_loader import checkpoint_spec

T = gguf.GGUFValueType


def _fields(path: Path) -> dict[str, gguf.ReaderField]:
    return dict(gguf.GGUFReader(path).fields)


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_keys_and_factor_tensors(kind: str, gguf_models, converted_gguf) -> None:
    path = converted_gguf(kind)
    spec = checkpoint_spec(gguf_models.baked(kind))
    reader = gguf.GGUFReader(path)
    fields = dict(reader.fields)
    arch = kind

    def typed(template: str, vtype: gguf.GGUFValueType):  # type: ignore[no-untyped-def]
        item = fields[template.format(arch=arch)]
        assert item.types == [vtype], (template, item.types)
        return item.contents()

    assert fields[gguf.Keys.General.ARCHITECTURE].contents() == arch
    assert typed(gguf.Keys.LLM.CONTEXT_LENGTH, T.UINT32) == TARGET
    assert typed(gguf.Keys.Rope.DIMENSION_COUNT, T.UINT32) == spec.rotary_dim
    assert typed(gguf.Keys.Rope.FREQ_BASE, T.FLOAT32) == 10000.0
    assert typed(gguf.Keys.Rope.SCALING_ORIG_CTX_LEN, T.UINT32) == ORIGINAL
    assert typed(gguf.Keys.Rope.SCALING_ATTN_FACTOR, T.FLOAT32) == np.float32(rope.attention_factor(spec))
    assert gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch) not in fields
    scaling_type = gguf.Keys.Rope.SCALING_TYPE.format(arch=arch)
    if kind == "llama":
        assert typed(gguf.Keys.Rope.SCALING_TYPE, T.STRING) == "longrope"
    else:
        assert scaling_type not in fields
    assert fields[START_TOKEN_KEY].contents() == 0 and fields[SWITCH_POLICY_KEY].contents() == "switch"
    tensors = {t.name: t for t in reader.tensors}
    long_name, short_name = factor_tensor_names()
    for name, which in ((long_name, "long"), (short_name, "short")):
        tensor = tensors[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(x) for x in tensor.shape] == [spec.rotary_dim // 2]
        np.testing.assert_array_equal(tensor.data, np.asarray(spec.factors(which), dtype=np.float32))
    assert not np.array_equal(tensors[long_name].data, tensors[short_name].data)


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_llama_cpp_matches_transformers_f32(kind: str, gguf_models, converted_gguf) -> None:
    require_llama_cpp()
    from validation.gguf_parity import gguf_parity

    report = gguf_parity(converted_gguf(kind), gguf_models.baked(kind), (64, 300))
    for item in report["lengths"]:
        print(f"{kind} {item['n_tokens']} tokens ({item['factor_set']}): max abs error {item['max_abs_error']:.3g} "
              f"(1e-3 x scale {1e-3 * item['logit_scale']:.3g}), KL {item['mean_kl']:.3g}, top-1 "
              f"{item['top1_agreement']}, wrong factor set {item['wrong_factor_set_error']:.3g}, "
              f"plain RoPE {item['plain_rope_error']:.3g}")
        assert item["passed"], item
        assert item["max_abs_error"] <= 1e-3 * item["logit_scale"]
        assert item["plain_rope_error"] > 100 * item["max_abs_error"]
        assert item["wrong_factor_set_error"] > 100 * item["max_abs_error"]
    assert [item["factor_set"] for item in report["lengths"]] == ["short", "long"]
    assert report["passed"]


@pytest.mark.parametrize("kind", ["phi3", "llama"])
def test_tensors_equal_llama_cpp_converter(kind: str, gguf_models, converted_gguf, llama_cpp_converter_script,
                                           tmp_path) -> None:
    """Every tensor both files hold is byte-identical (llama: q/k permuted as llama.cpp's LlamaModel does). For
    llama the stock converter writes no factor tensors: the silent drop of REFERENCE.md s.3."""
    ours = gguf.GGUFReader(converted_gguf(kind))
    theirs = gguf.GGUFReader(run_llama_cpp_converter(llama_cpp_converter_script, gguf_models.baked(kind),
                                                     tmp_path / "stock.gguf"))
    mine = {t.name: t for t in ours.tensors}
    stock = {t.name: t for t in theirs.tensors}
    common = sorted(set(mine) & set(stock))
    assert len(common) == len(stock)
    assert (set(factor_tensor_names()) <= set(common)) == (kind == "phi3")
    for name in common:
        assert mine[name].tensor_type == stock[name].tensor_type, name
        assert list(mine[name].shape) == list(stock[name].shape), name
        assert mine[name].data.tobytes() == stock[name].data.tobytes(), name


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_lower_precision_recorded(outtype: str, gguf_models, converted_gguf) -> None:
    require_llama_cpp()
    from validation.gguf_parity import gguf_parity

    report = gguf_parity(converted_gguf("phi3", outtype), gguf_models.phi3_baked, (64, 300))
    assert not report["gated"]
    for item in report["lengths"]:
        print(f"phi3 {outtype} {item['n_tokens']} tokens: max abs error {item['max_abs_error']:.3g} "
              f"(scale {item['logit_scale']:.3g}), KL {item['mean_kl']:.3g}, top-1 {item['top1_agreement']:.3f}")
        assert item["top1_agreement"] >= 0.8 and item["mean_kl"] < 0.05  # recorded, loosely bounded


def test_cli_convert_bakes_on_the_fly_long_only(gguf_models, tmp_path) -> None:
    out = tmp_path / "llama.gguf"
    args = ["convert", str(gguf_models.llama_base), "--to", "gguf", "-o", str(out), "--factors", str(LA2_LONG),
            "--original-max-position-embeddings", str(ORIGINAL), "--max-position-embeddings", str(TARGET),
            "--start-token", "4", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["arch"] == "llama" and data["spec"]["policy"] == "long-only"
    assert "-np" in result.stderr and "ignores the start-token threshold" in result.stderr
    tensors = {t.name: t.data for t in gguf.GGUFReader(out).tensors}
    long_name, short_name = factor_tensor_names()
    np.testing.assert_array_equal(tensors[long_name], tensors[short_name])
    assert _fields(out)[START_TOKEN_KEY].contents() == 4
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder and file removed
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0


def test_mistral_sliding_window_is_explained(tmp_path) -> None:
    from tiny_models import build_checkpoint

    base = build_checkpoint("mistral", tmp_path / "mistral", tokenizer="bpe", vocab_size=320)
    for choice, phrase in (("keep", "diverges from transformers beyond 4096"), ("drop", "agree at every length")):
        out = tmp_path / f"mistral-{choice}.gguf"
        result = CliRunner().invoke(main, ["convert", str(base), "--to", "gguf", "-o", str(out), "--factors",
                                           str(LA2_LONG), "--original-max-position-embeddings", "4096",
                                           "--max-position-embeddings", "131072", "--sliding-window", choice])
        assert result.exit_code == 0, result.output
        assert phrase in result.stderr
        assert _fields(out)[gguf.Keys.General.ARCHITECTURE].contents() == "llama"
    require_llama_cpp()  # the byte-level BPE vocabulary loads and runs
    from validation.llama_cpp_runtime import context_for, llama_cpp_logits

    logits = llama_cpp_logits(out, list(range(1, 40)), context_for(39, 4096, "short"))
    assert logits.shape == (39, 320) and np.isfinite(logits).all()


def test_inspect_gguf(converted_gguf) -> None:
    result = CliRunner().invoke(main, ["inspect", str(converted_gguf("phi3")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "gguf" and report["arch"] == "phi3" and not report["silent_drop"]
    assert len(report["longrope"]["long_factors"]) == 48 and report["longrope"]["original_context_length"] == ORIGINAL
    assert any("-np" in note for note in report["longrope"]["llama_cpp_selection"])
    human = CliRunner().invoke(main, ["inspect", str(converted_gguf("phi3"))])
    assert "SHORT factors" in human.stdout and "long factors: 48 f32" in human.stdout


def test_validate_gguf_reports_start_token_effect(gguf_models, tmp_path) -> None:
    """llama.cpp ignores n_hat: the report gates against the n_hat-free reference and says how much n_hat moves
    the logits."""
    require_llama_cpp()
    from longrope_export.bake import BakeOptions, bake

    baked = bake(gguf_models.phi3_base, tmp_path / "phi3_nhat", BakeOptions(factors=gguf_models.phi3_spec,
                                                                            start_token=8)).output
    out = tmp_path / "phi3-nhat.gguf"
    assert CliRunner().invoke(main, ["convert", str(baked), "--to", "gguf", "-o", str(out)]).exit_code == 0
    assert _fields(out)[START_TOKEN_KEY].contents() == 8
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["validate", "gguf", str(out), "--checkpoint", str(baked), "--lengths", "300",
                                       "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    item = json.loads(report_path.read_text())["lengths"][0]
    print(f"n_hat=8 at 300 tokens changes transformers' logits by {item['start_token_effect']:.3g} "
          f"(llama.cpp vs n_hat-free reference: {item['max_abs_error']:.3g})")
    assert item["start_token_effect"] > 10 * item["max_abs_error"]
    assert "start token effect" in result.stdout and "passed" in result.stdout


def test_convert_streams_one_tensor_at_a_time(gguf_models, tmp_path, monkeypatch) -> None:
    """Each weight payload is released before the next one is loaded: peak memory ~ the largest tensor."""
    import weakref

    import converters.gguf_writer as writer_module

    original, alive = writer_module._payload, []

    def tracked(tensor, factors, handles):  # type: ignore[no-untyped-def]
        assert all(ref() is None for ref in alive), "an earlier tensor payload is still referenced"
        array = original(tensor, factors, handles)
        if tensor.source is not None:
            alive.append(weakref.ref(array))
        return array

    monkeypatch.setattr(writer_module, "_payload", tracked)
    plan = writer_module.convert_to_gguf(gguf_models.llama_baked, tmp_path / "streamed.gguf", "q8_0")
    assert len(alive) == len(plan.tensors) - 2


def test_added_special_tokens_become_control_tokens(gguf_models, tmp_path) -> None:
    import shutil

    from converters.gguf_vocab import read_vocab

    model = tmp_path / "model"
    shutil.copytree(gguf_models.phi3_baked, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"3": {"content": "<|endoftext|>", "special": True},
                                      "4": {"content": "<|user|>", "special": False}}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    vocab = read_vocab(model, 256)
    assert vocab.tokens[3:5] == [b"<|endoftext|>", b"<|user|>"]
    assert vocab.types[3:5] == [gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED]
    assert len(vocab.tokens) == 256 and vocab.tokens[-1] == b"[PAD255]"


def test_grouped_query_attention_llama_parity(tmp_path) -> None:
    """k_proj is permuted with the KV head count (4 query heads, 2 KV heads)."""
    require_llama_cpp()
    from tiny_models import build_checkpoint

    from longrope_export.bake import BakeOptions, bake
    from validation.gguf_parity import gguf_parity

    base = build_checkpoint("llama", tmp_path / "base", tokenizer="spm", num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=ORIGINAL)
    baked = bake(base, tmp_path / "llama_gqa", BakeOptions(factors=LA2_LONG, original_max_position_embeddings=ORIGINAL,
                                                           max_position_embeddings=TARGET)).output
    out = tmp_path / "gqa.gguf"
    assert CliRunner().invoke(main, ["convert", str(baked), "--to", "gguf", "-o", str(out)]).exit_code == 0
    item = gguf_parity(out, baked, (300,))["lengths"][0]
    assert item["passed"] and item["plain_rope_error"] > 100 * item["max_abs_error"], item


def test_gguf_candidate_reads_the_spec_back(gguf_models, converted_gguf) -> None:
    """The llama.cpp candidate for ``validate parity``: spec read back from the file, logits per factor set."""
    require_llama_cpp()
    from validation.gguf_parity import compare_logits, token_ids
    from validation.llama_cpp_runtime import GgufCandidate

    want = checkpoint_spec(gguf_models.phi3_baked)
    candidate = GgufCandidate(converted_gguf("phi3"), isolate=False)
    got = candidate.spec
    assert candidate.dtype == "f32" and candidate.switch_rule == "per-context"
    assert (got.policy, got.original_max_position_embeddings, got.max_position_embeddings, got.rotary_dim) == (
        want.policy, want.original_max_position_embeddings, want.max_position_embeddings, want.rotary_dim)
    for which in ("long", "short"):
        np.testing.assert_array_equal(np.float32(got.factors(which)), np.float32(want.factors(which)))
    assert np.float32(rope.attention_factor(got)) == np.float32(rope.attention_factor(want))
    ids = np.asarray(token_ids(300, 256))
    long_logits, short_logits = candidate.logits(ids, "long"), candidate.logits(ids, "short")
    assert compare_logits(long_logits, short_logits)["max_abs_error"] > 1.0  # the requested set is used
