"""Tiny random checkpoints, initialised so that RoPE matters (init std 0.1, REFERENCE s.6)."""

from __future__ import annotations

from pathlib import Path

import torch

INIT_STD = 0.1

CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=256, num_attention_heads=2, num_key_value_heads=2, head_dim=128,
                  intermediate_size=256, num_hidden_layers=2, vocab_size=256, max_position_embeddings=4096),
    "phi3": dict(model_type="phi3", hidden_size=192, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=256, num_hidden_layers=2, vocab_size=256, max_position_embeddings=4096,
                 original_max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "mistral": dict(model_type="mistral", hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                    head_dim=128, intermediate_size=256, num_hidden_layers=2, vocab_size=256,
                    max_position_embeddings=32768, sliding_window=4096),
}


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A byte-level word-piece-free tokenizer built in-process (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}\n')


def training_text(lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-text to train tiny tokenizers on (nothing downloads)."""
    import random

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "or", "ux", "be", "di", "fa", "go"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) + rng.choice([".", ",", "!", "?"])
            for _ in range(lines)]


def write_sentencepiece(folder: Path, vocab_size: int, extra_symbols: tuple[str, ...] = ("<|endoftext|>",)) -> None:
    """A tiny SentencePiece ``tokenizer.model`` (LLaMA/Phi-3 style) with the tokens llama.cpp's Phi-3
    rule looks up (<unk>, <s>, </s>, <|endoftext|>)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(training_text()), model_writer=model,
                                   vocab_size=min(vocab_size, 200), model_type="bpe", character_coverage=1.0,
                                   user_defined_symbols=list(extra_symbols), minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", '
                                                  '"eos_token": "</s>", "unk_token": "<unk>"}\n')


def write_bpe(folder: Path, vocab_size: int) -> None:
    """A tiny GPT-2 style byte-level BPE ``tokenizer.json`` trained in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(training_text(), trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast", '
                                                  '"bos_token": "<s>", "eos_token": "</s>"}\n')


TOKENIZERS = {"wordlevel": write_tokenizer, "spm": write_sentencepiece, "bpe": write_bpe}


def build_checkpoint(kind: str, folder: Path, seed: int = 0, tokenizer: str = "wordlevel",
                     **overrides: object) -> Path:
    """Save a tiny random model of ``kind`` (llama, phi3, mistral) with a tokenizer into ``folder``.

    ``tokenizer``: ``wordlevel`` (transformers only), ``spm`` or ``bpe`` (llama.cpp accepts both).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(CONFIGS[kind], **overrides)
    model_type = params.pop("model_type")
    config = AutoConfig.for_model(model_type, initializer_range=INIT_STD, tie_word_embeddings=False, **params)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    TOKENIZERS[tokenizer](folder, int(params["vocab_size"]))
    return folder
