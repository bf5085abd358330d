"""Print the measured ONNX parity figures the tests assert on (not collected by pytest).

Usage: python tests/onnx_figures.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from onnx_cases import ORIGINAL, build_cases, token_ids, tolerance

from validation.onnx_runtime import OnnxCausalLM


def decode_step_ms(model: OnnxCausalLM) -> float:
    """Median wall time of one cached decode step after a 299-token prefill."""
    import time

    ids = token_ids(300)
    _, past = model.forward(ids[None, :299])
    times = []
    for _ in range(200):
        start = time.perf_counter()
        model.forward(ids[None, 299:], past)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        cases = build_cases(root / "cases")
        print("case            rotary    length  max|err|   tolerance  logit scale")
        for name, case in cases.items():
            modes = ("function", "opset23", "contrib") if name in ("llama", "phi3") else ("function",)
            for rotary in modes:
                model = OnnxCausalLM(case.export(root, rotary=rotary))
                for length in (64, 300):
                    ids = token_ids(length)
                    want = case.reference(ids)
                    err = float(np.abs(model.logits(ids) - want).max())
                    print(f"{name:<15} {rotary:<9} {length:>6}  {err:.3e}  {tolerance(want):.3e}  "
                          f"{np.abs(want).max():.3f}")
        phi3 = cases["phi3"]
        for rotary in ("function", "opset23", "contrib"):
            model = OnnxCausalLM(phi3.export(root, rotary=rotary, label=f"fp16-{rotary}", dtype="fp16"))
            ids = token_ids(300)
            want, got = phi3.reference(ids), model.logits(ids)
            print(f"phi3 fp16 {rotary} 300: max|err| {np.abs(got - want).max():.3e}, top-1 agreement "
                  f"{(got.argmax(-1) == want.argmax(-1)).mean():.3f}")
        llama = cases["llama"]
        spec = llama.spec
        wrong = {"swapped": spec.replace(long_factors=spec.short_factors, short_factors=spec.long_factors),
                 "reversed": spec.replace(long_factors=tuple(r[::-1] for r in spec.long_factors),
                                          short_factors=tuple(r[::-1] for r in spec.short_factors))}
        for label, bad in wrong.items():
            model = OnnxCausalLM(llama.export(root, spec=bad, label=label))
            for length in (64, 300):
                ids = token_ids(length)
                want = llama.reference(ids)
                print(f"wrong factors ({label}) llama {length}: max|err| "
                      f"{np.abs(model.logits(ids) - want).max():.3e} (tolerance {tolerance(want):.3e})")
        ids = token_ids(300)
        want = np.concatenate([llama.reference(ids[:ORIGINAL]), llama.reference(ids)[ORIGINAL:]])
        model = OnnxCausalLM(llama.export(root))
        for policy in ("recompute", "keep"):
            got = model.decode(ids, prompt_len=240, kv_policy=policy).logits
            print(f"llama KV decode 240->300, kv_policy {policy}: max|err| before the switch "
                  f"{np.abs(got[:ORIGINAL] - want[:ORIGINAL]).max():.3e}, after "
                  f"{np.abs(got[ORIGINAL:] - want[ORIGINAL:]).max():.3e}")
        for target in (8192, 2_097_152):
            path = llama.export(root, spec=spec.replace(max_position_embeddings=target), label=f"t{target}")
            print(f"target {target}: model.onnx {path.stat().st_size} bytes, decode step at 300 tokens "
                  f"{decode_step_ms(OnnxCausalLM(path)):.3f} ms (median of 200)")


if __name__ == "__main__":
    main()
