"""Check exported models on other onnxruntime versions (not collected by pytest).

    python tests/onnx_compat.py make DIR          # project venv: export tiny models + reference logits
    /other/venv/bin/python tests/onnx_compat.py run DIR [MODE ...]   # only onnxruntime + numpy needed

Measured 2026-11-26 (CPU): onnxruntime 1.20.1 runs ``function`` and ``contrib`` (it refuses opset
23); 1.23.2 and 1.32.0 run all three modes; every logit error <= 4.5e-5 (tolerance ~2e-4).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MODES = ("function", "contrib", "opset23")
NAMES = ("llama", "phi3-partial")
LENGTHS = (64, 300)


def make(root: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from onnx_cases import build_cases, token_ids

    cases = build_cases(root / "cases")
    for name in NAMES:
        for mode in MODES:
            cases[name].export(root, rotary=mode)
        for length in LENGTHS:
            np.save(root / f"{name}-ref{length}.npy", cases[name].reference(token_ids(length)))


def run(root: Path, modes: list[str]) -> int:
    import onnxruntime as ort

    failures = 0
    for name in NAMES:
        for mode in modes:
            session = ort.InferenceSession(str(root / f"{name}-{mode}" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
            past = {i.name: np.zeros((1, int(i.shape[1]), 0, int(i.shape[3])), np.float32)
                    for i in session.get_inputs() if i.name.startswith("past_key_values.")}
            for length in LENGTHS:
                ids = ((np.arange(length, dtype=np.int64) * 7919 + 13) % 256)[None]
                feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                         "position_ids": np.arange(length, dtype=np.int64)[None], **past}
                logits = session.run(["logits"], feeds)[0][0]
                want = np.load(root / f"{name}-ref{length}.npy")
                error, tol = float(np.abs(logits - want).max()), max(1e-4, 3e-5 * float(np.abs(want).max()))
                failures += error > tol
                print(f"onnxruntime {ort.__version__} {name} {mode} {length}: max|err| {error:.3e} "
                      f"(tolerance {tol:.3e}) {'ok' if error <= tol else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        folder.mkdir(parents=True, exist_ok=True)
        make(folder)
    else:
        sys.exit(run(folder, sys.argv[3:] or list(MODES)))
