"""JUnit XML for CI: one test case per gate (spec, lossy semantics, logits at each length)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .parity import ParityReport


def parity_junit(report: ParityReport, path: Path) -> None:
    """Write ``report`` as a JUnit XML file CI systems display."""
    cases: list[tuple[str, str | None]] = []
    failed_checks = [c for c in report.spec_checks if not c["passed"]]
    cases.append(("spec", "; ".join(f"{c['check']}: reference {c['reference']}, candidate {c['candidate']}"
                                    for c in failed_checks) or None))
    if report.lossy:
        message = "; ".join(item["what"] + (f" (max abs effect {item['max_abs_effect']:.3g} at {item['length']})"
                                            if item["max_abs_effect"] is not None else "")
                            for item in report.lossy)
        cases.append(("lossy", None if report.allow_lossy else message + " -- pass --allow-lossy to accept"))
    for r in report.lengths:
        cases.append((f"logits@{r.length}", None if r.passed else
                      f"max abs {r.max_abs:.3g} (tolerance {r.tolerance:.3g}), KL {r.kl:.3g}, top-1 {r.top1:.3f}"))
    suite = ET.Element("testsuite", name=f"longrope-parity {report.runtime}", tests=str(len(cases)),
                       failures=str(sum(1 for _, m in cases if m)))
    for name, message in cases:
        case = ET.SubElement(suite, "testcase", classname=f"parity.{report.runtime}", name=name)
        if message:
            ET.SubElement(case, "failure", message=message).text = message
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
