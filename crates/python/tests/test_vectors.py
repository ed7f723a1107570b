"""The shared test vectors (tests/vectors/) read through the Python package.

tests/vectors/expected.json lists small files and what a reader must get from each; its schema
is in docs/format.md, section "Test vectors". The Rust reader and the C ABI check the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import podcache

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "vectors"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())

# The error names of docs/format.md §5 and the Python class that reports each.
ERRORS = {
    "no_file": podcache.FileNotFound,
    "not_ready": podcache.NotReady,
    "version_mismatch": podcache.VersionMismatch,
    "wrong_kind": podcache.WrongKind,
    "truncated": podcache.Corrupt,
    "foreign": podcache.Foreign,
    "corrupt": podcache.Corrupt,
}


def _id(case: dict) -> str:
    return f"{case['file']}-as-{case['open_as']}-{case.get('start', '')}".rstrip("-")


def test_the_vectors_are_of_this_layout():
    assert EXPECTED["layout_version"] == 4
    assert len(EXPECTED["vectors"]) >= 10


@pytest.mark.parametrize("case", EXPECTED["vectors"], ids=_id)
def test_vector(case):
    path = VECTORS / case["file"]
    if case["open"] != "ok":
        opener = podcache.Table if case["open_as"] == "table" else podcache.Subscriber
        with pytest.raises(ERRORS[case["open"]]) as err:
            opener(path)
        if case["open"] == "foreign":
            # A file that is not podcache's is not reported as a damaged podcache file only.
            assert type(err.value) is podcache.Foreign
        return
    if case["open_as"] == "table":
        with podcache.Table(path) as table:
            for stat, want in case.get("stats", {}).items():
                assert table.stats()[stat] == want, stat
            for g in case["gets"]:
                key = bytes.fromhex(g["key_hex"])
                if g.get("error"):
                    with pytest.raises(ERRORS[g["error"]]):
                        table.get(key)
                    continue
                got = table.get(key)
                want = g["value_hex"]
                assert (None if got is None else got.hex()) == want, key
                assert (key in table) == (want is not None), key
    else:
        with podcache.Subscriber(path, case["start"]) as sub:
            for m in case["messages"]:
                got = sub.try_recv()
                assert got is not None, m
                assert (got.hex(), sub.last_seq, sub.last_lost) == (m["payload_hex"], m["seq"], m["lost"])
            if case["then"] == "empty":
                assert sub.try_recv() is None
            else:
                with pytest.raises(ERRORS[case["then"]]):
                    sub.try_recv()
