"""Reads the records of an offline W&B run (``<dir>/wandb/offline-run-*/run-*.wandb``).

wandb 0.2x dropped its Python reader (``wandb.sdk.internal.datastore``); the file is still
the LevelDB log format (32 KiB blocks of chunks, each ``crc32 | length | type``, the CRC
seeded with the type byte) behind a 7-byte W&B header, and each record is the SDK's own
protobuf ``wandb.proto.wandb_internal_pb2.Record``. No ``wandb sync``, no network.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)  # ident, magic, version
BLOCK, CHUNK_HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every whole record, in order; a torn tail (a killed writer) ends the list."""
    raw = path.read_bytes()
    assert raw[: len(HEADER)] == HEADER, f"{path} is not a W&B run file"
    out, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # the block's zero padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + CHUNK_HEADER])
        data = raw[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if kind == 0 or len(data) < length or zlib.crc32(data, zlib.crc32(bytes([kind]))) != crc:
            break
        pos += CHUNK_HEADER + length
        pending = data if kind in (FULL, FIRST) else pending + data
        if kind in (FULL, LAST):
            out.append(wandb_internal_pb2.Record.FromString(pending))
    return out


@dataclass
class OfflineRun:
    """What one offline run file says: its run record, history rows, metric axes, summary."""

    run: wandb_internal_pb2.RunRecord | None = None
    history: list[dict] = field(default_factory=list)
    step_metric: dict[str, str] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)
    exit_code: int | None = None


def read_run(path: Path) -> OfflineRun:
    """Decode the records of ``run-*.wandb`` into plain values."""
    out = OfflineRun()
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.run = r.run
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "metric" and r.metric.name:
            out.step_metric[r.metric.name] = r.metric.step_metric
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            out.exit_code = r.exit.exit_code
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def run_files(root: Path) -> list[Path]:
    """The offline run files under ``root/wandb``, oldest first."""
    return sorted(root.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
