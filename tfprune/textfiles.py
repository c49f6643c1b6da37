"""Reading the user's text files (calibration corpora, evaluation data) strictly: UTF-8, JSON objects, real
strings; every bad record is an error naming the file and the line."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import TfpruneError

__all__ = ["read_lines", "read_jsonl", "text_field"]


def read_lines(path: Path, error: type[TfpruneError] = TfpruneError) -> list[str]:
    """The lines of a UTF-8 text file, without their line ends (a UTF-8 BOM is dropped). Bad UTF-8 is an
    error naming the line."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as failure:
        line = data[: failure.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte {failure.start}): save the file as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _object_without_duplicates(pairs, where: str, error: type[TfpruneError]) -> dict:
    record = {}
    for key, value in pairs:
        if key in record:
            raise error(f"{where}: key {key!r} appears twice in one record")
        record[key] = value
    return record


def read_jsonl(path: Path, error: type[TfpruneError] = TfpruneError) -> list[tuple[str, dict]]:
    """[(\"path:line\", record)] of a JSON-lines file: one JSON object per non-blank line; anything else (not
    JSON, not an object, a key twice) is an error naming the line."""
    records = []
    for number, line in enumerate(read_lines(path, error), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line, object_pairs_hook=lambda pairs: _object_without_duplicates(pairs, where, error))
        except json.JSONDecodeError as failure:
            raise error(f"{where}: not JSON ({failure.msg}, column {failure.colno})") from None
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object {{...}}, got {type(record).__name__}")
        records.append((where, record))
    return records


def text_field(record: dict, key: str, where: str, error: type[TfpruneError] = TfpruneError) -> str:
    """record[key] as a stripped, non-empty string; null, numbers, lists and blank strings are errors."""
    if key not in record:
        raise error(f"{where}: no {key!r} field")
    value = record[key]
    if not isinstance(value, str):
        raise error(f"{where}: {key!r} must be a string, got {json.dumps(value)}")
    if not value.strip():
        raise error(f"{where}: {key!r} is empty")
    return value.strip()
