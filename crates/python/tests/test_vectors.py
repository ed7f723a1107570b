"""The shared test vectors (tests/vectors/, docs/format.md) read through the Python package.

tests/vectors/expected.json lists small files and what a reader must get from each. The file
comes with the C ABI work; until it is in the tree this test is skipped, saying so. Schema
read here (a list, or an object with a "files" list), one entry per file:

    {"file": "name under tests/vectors/", "kind": "table" | "ring",
     "keys": {"key": "value hex" | null, ...},           # table: expected gets
     "keys_hex": true,                                    # optional: keys are hex too
     "messages": ["payload hex", ...],                    # ring: every message from oldest
     "error": "NotFound" | "NotReady" | "VersionMismatch" | "WrongKind" | "Corrupt"
              | "Truncated" | "Foreign" | "BadMagic"}     # expected failure to open
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import podcache

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "vectors"
EXPECTED = VECTORS / "expected.json"

# The Rust error names (OpenError variants, format.md) and the Python class that reports each.
ERRORS = {
    "NotFound": podcache.FileNotFound,
    "NotReady": podcache.NotReady,
    "VersionMismatch": podcache.VersionMismatch,
    "WrongKind": podcache.WrongKind,
    "Corrupt": podcache.Corrupt,
    "Truncated": podcache.Corrupt,
    "Foreign": podcache.Foreign,
    "BadMagic": podcache.Foreign,
}


def _entries():
    if not EXPECTED.exists():
        return []
    data = json.loads(EXPECTED.read_text())
    return data["files"] if isinstance(data, dict) else data


@pytest.mark.skipif(not EXPECTED.exists(), reason=f"no test vectors: {EXPECTED} is not in the tree yet")
@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.get("file", "?"))
def test_vector(entry):
    path = VECTORS / entry["file"]
    opener = podcache.Subscriber if entry.get("kind") == "ring" else podcache.Table
    if entry.get("error"):
        with pytest.raises(ERRORS[entry["error"]]):
            opener(path)
        return
    if entry.get("kind") == "ring":
        with podcache.Subscriber(path, "oldest") as sub:
            got = []
            while (m := sub.try_recv()) is not None:
                got.append(m.hex())
        assert got == [m.lower() for m in entry["messages"]]
    else:
        with podcache.Table(path) as table:
            for key, want in entry["keys"].items():
                k = bytes.fromhex(key) if entry.get("keys_hex") else key.encode()
                got = table.get(k)
                assert (got.hex() if got is not None else None) == (want.lower() if want else None), key
