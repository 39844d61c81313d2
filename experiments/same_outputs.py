"""Do two run folders hold the same results? The check behind "results must not change".

    python experiments/same_outputs.py RUN_A RUN_B

Compares every data file byte for byte (eval records, mistakes, knowledge, training sets,
the general probe) and summary.json with wall and CPU times left out. Prints each
difference and exits 1 if there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = ("**/eval/records.jsonl", "**/eval/general.json", "**/mistakes/mistakes.jsonl",
        "**/knowledge/knowledge.jsonl", "**/train_set/train.parquet")  # fmt: skip
TIMING = {"seconds", "cpu_seconds", "train_s", "tokens_per_s", "minutes"}


def untimed(node: object) -> object:
    if isinstance(node, dict):
        return {k: untimed(v) for k, v in node.items() if k not in TIMING}
    if isinstance(node, list):
        return [untimed(v) for v in node]
    return node


def differences(a: Path, b: Path) -> list[str]:
    out = []
    files = sorted({p.relative_to(a) for g in DATA for p in a.glob(g)}
                   | {p.relative_to(b) for g in DATA for p in b.glob(g)})  # fmt: skip
    for rel in files:
        if not (a / rel).is_file() or not (b / rel).is_file():
            out.append(f"{rel}: only in one run")
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            out.append(f"{rel}: differs")
    sa, sb = (untimed(json.loads((r / "summary.json").read_text())) for r in (a, b))
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            out.append(f"summary.json[{key!r}] differs")
    return out + [f"({len(files)} data files compared)"]


if __name__ == "__main__":
    found = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(found))
    sys.exit(1 if len(found) > 1 else 0)
