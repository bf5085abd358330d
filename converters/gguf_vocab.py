"""The tokenizer part of a GGUF file, through gguf-py's vocab helpers.

Supported: SentencePiece (``tokenizer.model``, LLaMA/Phi-3 style, llama.cpp model ``llama``),
LLaMA-style byte-fallback BPE in ``tokenizer.json`` (model ``llama``) and GPT-2 byte-level BPE in
``tokenizer.json`` (model ``gpt2``). The token list is padded with ``[PAD{i}]`` to the model's
vocab size, as llama.cpp's converter does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longrope_export.errors import InputError, RuntimeUnavailable

if TYPE_CHECKING:
    import gguf

#: llama.cpp looks these up when general.name contains "phi3" / "phi-3" and fails to load without them.
PHI3_REQUIRED_TOKENS = ("<unk>", "<s>", "</s>", "<|endoftext|>")


@dataclass
class GGUFVocab:
    """Everything the writer needs, decided before the output file is opened."""

    tokenizer_model: str
    tokens: list[bytes]
    scores: list[float] | None
    types: list[int]
    special: Any  # gguf.SpecialVocab
    notes: list[str]


def _load_base(model_dir: Path) -> Any:
    import gguf

    if (model_dir / "tokenizer.model").exists():
        try:
            return gguf.SentencePieceVocab(model_dir)
        except RuntimeError as error:  # sentencepiece missing
            raise RuntimeUnavailable(str(error), path=model_dir / "tokenizer.model",
                                     fix="pip install sentencepiece") from None
    if not (model_dir / "tokenizer.json").exists():
        raise InputError("no tokenizer.model or tokenizer.json", path=model_dir,
                         fix="put the model's tokenizer files into the folder")
    for kind in (gguf.LlamaHfVocab, gguf.BpeVocab):
        try:
            return kind(model_dir)
        except (FileNotFoundError, TypeError, KeyError, ValueError):
            continue
    raise InputError("tokenizer.json is neither byte-level BPE nor LLaMA-style BPE (e.g. WordLevel); llama.cpp "
                     "cannot run it", path=model_dir / "tokenizer.json",
                     fix="use the model's SentencePiece tokenizer.model or a BPE tokenizer.json")


def read_vocab(model_dir: Path, vocab_size: int) -> GGUFVocab:
    """Read the tokenizer of ``model_dir`` into GGUF token lists of exactly ``vocab_size`` entries."""
    import gguf

    base = _load_base(Path(model_dir))
    tokens: list[bytes] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, toktype in base.all_tokens():
        tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
        scores.append(float(score))
        types.append(int(toktype))
    if len(tokens) > vocab_size:
        raise InputError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {vocab_size}",
                         path=model_dir, fix="give the tokenizer that belongs to this checkpoint")
    notes = []
    _apply_added_tokens(Path(model_dir), tokens, scores, types)
    if len(tokens) < vocab_size:
        notes.append(f"token list padded from {len(tokens)} to vocab_size {vocab_size} with [PAD{{i}}] tokens")
        for index in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{index}]".encode())
            scores.append(-1000.0)
            types.append(int(gguf.TokenType.UNUSED))
    model = base.tokenizer_model
    if model == "gpt2":
        notes.append("BPE pre-tokenizer written as 'default': llama.cpp's per-model pre-tokenizer regexes are "
                     "picked by its own converter's hash table, which this tool does not copy")
    special = gguf.SpecialVocab(model_dir, load_merges=model == "gpt2", n_vocab=len(tokens))
    return GGUFVocab(model, tokens, scores if model == "llama" else None, types, special, notes)


def _apply_added_tokens(model_dir: Path, tokens: list[bytes], scores: list[float], types: list[int]) -> None:
    """tokenizer_config.json's added tokens (Phi-3's <|user|>, <|end|>, ...): special ones are CONTROL tokens,
    so llama.cpp treats them as llama.cpp's own converter marks them (end-of-turn detection, detokenizing)."""
    import json

    import gguf

    path = model_dir / "tokenizer_config.json"
    if not path.exists():
        return
    try:
        decoder = json.loads(path.read_text(encoding="utf-8")).get("added_tokens_decoder") or {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"not valid JSON ({error})", path=path,
                         fix="restore the model's tokenizer_config.json") from None
    for key, entry in decoder.items():
        index = int(key)
        if index >= len(tokens):
            continue  # beyond the tokenizer's own vocabulary: padding covers it
        tokens[index] = str(entry["content"]).encode("utf-8")
        scores[index] = -1000.0
        types[index] = int(gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED)


def check_phi3_name(vocab: GGUFVocab, name: str, where: object) -> None:
    """llama.cpp's Phi-3 rule keys off general.name: refuse a file it would fail to load."""
    lowered = name.lower()
    if "phi3" not in lowered and "phi-3" not in lowered:
        return
    present = set(vocab.tokens)
    missing = [token for token in PHI3_REQUIRED_TOKENS if token.encode() not in present]
    if missing:
        raise InputError(f"general.name {name!r} contains 'phi3', so llama.cpp looks up {', '.join(missing)}, "
                         "which the vocabulary lacks: it would fail to load", path=where,
                         fix="give the model's real tokenizer (it has these tokens), or rename the model "
                             "folder (general.name is taken from it) so it does not contain 'phi3'")


def add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    """Write the tokenizer keys (model, pre, tokens, scores, types, special ids, merges)."""
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    vocab.special.add_to_gguf(writer, quiet=True)
