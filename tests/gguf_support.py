"""GGUF test support: tiny baked phi3/llama checkpoints at original context 256 (so 64 tokens run the
short factors and 300 the long ones), real factor vectors, and llama.cpp / its own converter.

Without llama-cpp-python the llama.cpp tests skip, unless LONGROPE_REQUIRE_LLAMA_CPP=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_models import build_checkpoint

DATA = Path(os.environ.get("LONGROPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PHI35_CONFIG = DATA / "configs" / "phi-3.5-mini-instruct.config.json"
LA2_LONG = DATA / "longrope-factors" / "2048k_la2_256k.csv"
LA2_SHORT = DATA / "longrope-factors" / "8k_la2_256k.csv"
ORIGINAL, TARGET = 256, 8192
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"


def skip_or_fail(message: str) -> None:
    """Skip, or fail when LONGROPE_REQUIRE_LLAMA_CPP=1 (CI installs llama.cpp and must run these tests)."""
    if os.environ.get("LONGROPE_REQUIRE_LLAMA_CPP") == "1":
        pytest.fail(f"{message} (LONGROPE_REQUIRE_LLAMA_CPP=1)")
    pytest.skip(message)


def require_llama_cpp() -> None:
    """Skip (or, with LONGROPE_REQUIRE_LLAMA_CPP=1, fail) when llama-cpp-python cannot be imported."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as error:
        skip_or_fail(f"llama-cpp-python not importable ({error}); install {LLAMA_CPP_PYTHON}")


@dataclass(frozen=True)
class TinyModels:
    root: Path
    phi3_base: Path
    phi3_baked: Path
    llama_base: Path
    llama_baked: Path
    phi3_spec: Path

    def baked(self, kind: str) -> Path:
        return self.phi3_baked if kind == "phi3" else self.llama_baked


def phi35_spec_file(folder: Path) -> Path:
    """Phi-3.5-mini's real 48 + 48 factors as a JSON spec for 256 -> 8192 (policy switch)."""
    scaling = json.loads(PHI35_CONFIG.read_text())["rope_scaling"]
    spec = {"schema": "longrope-export/spec", "version": 1, "rotary_dim": 96, "rope_theta": 10000.0,
            "original_max_position_embeddings": ORIGINAL, "max_position_embeddings": TARGET, "policy": "switch",
            "long_factors": scaling["long_factor"], "short_factors": scaling["short_factor"]}
    path = folder / "phi35-256-8192.json"
    path.write_text(json.dumps(spec))
    return path


def build_tiny_models(root: Path) -> TinyModels:
    from longrope_export.bake import BakeOptions, bake

    spec = phi35_spec_file(root)
    phi3_base = build_checkpoint("phi3", root / "phi3" / "base", tokenizer="spm", max_position_embeddings=ORIGINAL,
                                 original_max_position_embeddings=ORIGINAL)
    # A folder named phi3_baked makes general.name contain "phi3": llama.cpp's Phi-3 vocabulary rule applies.
    phi3_baked = root / "phi3" / "phi3_baked"
    bake(phi3_base, phi3_baked, BakeOptions(factors=spec))
    llama_base = build_checkpoint("llama", root / "llama" / "base", tokenizer="spm", max_position_embeddings=ORIGINAL)
    llama_baked = root / "llama" / "llama_baked"
    bake(llama_base, llama_baked, BakeOptions(factors=LA2_LONG, short_factors=LA2_SHORT,
                                              original_max_position_embeddings=ORIGINAL,
                                              max_position_embeddings=TARGET))
    return TinyModels(root, phi3_base, phi3_baked, llama_base, llama_baked, spec)


def llama_cpp_converter(cache: Path) -> Path:
    """llama.cpp's own ``convert_hf_to_gguf.py``, from the llama-cpp-python sdist (pip download)."""
    script = cache / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           LLAMA_CPP_PYTHON, "-d", str(cache)], check=False, capture_output=True, text=True)
    archives = sorted(cache.glob("llama_cpp_python-0.3.36.tar.gz"))
    if done.returncode != 0 or not archives:
        skip_or_fail(f"cannot obtain the {LLAMA_CPP_PYTHON} sdist (llama.cpp's convert_hf_to_gguf.py): "
                     f"{done.stderr.strip()[-300:]}")
    with tarfile.open(archives[0]) as archive:
        members = [m for m in archive.getmembers()
                   if "/vendor/llama.cpp/" in m.name and ("/gguf-py/" in m.name or "/conversion/" in m.name
                                                          or m.name.endswith("/convert_hf_to_gguf.py"))]
        archive.extractall(cache, members=members, filter="data")
    return script


def rewrite_gguf(source: Path, target: Path, drop: frozenset[str] = frozenset(),
                 as_f16: frozenset[str] = frozenset(), extra: dict[str, int] | None = None) -> Path:
    """Copy a GGUF file with gguf-py, dropping some tensors, storing others as f16 and adding u16 keys."""
    import gguf
    import numpy as np

    from converters.gguf_patch import raw_value

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for item in reader.fields.values():
        if item.name.startswith("GGUF.") or item.name == gguf.Keys.General.ARCHITECTURE:
            continue
        sub = item.types[-1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(item.name, raw_value(item), item.types[0], sub_type=sub)
    for key, value in (extra or {}).items():
        writer.add_uint16(key, value)
    for tensor in reader.tensors:
        if tensor.name not in drop:
            data = np.asarray(tensor.data)
            writer.add_tensor(tensor.name, data.astype(np.float16) if tensor.name in as_f16 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def split_gguf(source: Path, folder: Path, max_tensors: int) -> Path:
    """Split a GGUF file the way gguf-py / llama-gguf-split do; returns the first file (model-00001-of-N.gguf)."""
    import gguf
    import numpy as np

    from converters.gguf_patch import raw_value

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(folder / "model.gguf", reader.fields[gguf.Keys.General.ARCHITECTURE].contents(),
                             split_max_tensors=max_tensors)
    for item in reader.fields.values():
        if not item.name.startswith("GGUF.") and item.name != gguf.Keys.General.ARCHITECTURE:
            sub = item.types[-1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(item.name, raw_value(item), item.types[0], sub_type=sub)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sorted(folder.glob("model-00001-of-*.gguf"))[0]


def run_llama_cpp_converter(script: Path, model_dir: Path, output: Path, outtype: str = "f32") -> Path:
    done = subprocess.run([sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile",
                           str(output)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return output
