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


def build_checkpoint(kind: str, folder: Path, seed: int = 0, **overrides: object) -> Path:
    """Save a tiny random model of ``kind`` (llama, phi3, mistral) with a tokenizer into ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(CONFIGS[kind], **overrides)
    model_type = params.pop("model_type")
    config = AutoConfig.for_model(model_type, initializer_range=INIT_STD, tie_word_embeddings=False, **params)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder, int(params["vocab_size"]))
    return folder
