"""The C++ tile math of the HollowAttention plugin (plugins/hollow_attention/tile_schedule.h),
compiled for the CPU with g++ and compared with the Python spec: visited key tiles, attention
output, and work proportional to the attended pairs."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rlens.plugins.spec import hollow_attention_mask, reference_hollow_attention

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "plugins" / "hollow_attention" / "tests" / "tile_schedule_test.cpp"


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    past: int
    head_dim: int
    start: int
    length: int
    window: int
    query_tile: int = 4
    key_tile: int = 4


CASES = {
    "span-middle": Case(2, 4, 2, 23, 0, 8, 5, 12, 3),
    "span-at-start": Case(1, 2, 2, 20, 0, 4, 0, 14, 5, 4, 8),
    "span-at-end": Case(1, 3, 1, 19, 0, 4, 7, 12, 4, 8, 4),
    "past-gqa": Case(2, 4, 2, 17, 9, 8, 3, 10, 2, 4, 3),
    "window-1": Case(1, 2, 1, 16, 5, 4, 2, 11, 1),
    "window-covers-span": Case(1, 2, 2, 18, 3, 4, 4, 9, 64),
    "no-span": Case(1, 2, 1, 13, 4, 4, 0, 0, 2),
    "whole-chunk-visual": Case(1, 1, 1, 15, 6, 4, 0, 15, 4, 5, 2),
    "tiles-of-one": Case(1, 2, 2, 9, 2, 4, 2, 5, 2, 1, 1),
}


@pytest.fixture(scope="module")
def tile_binary(tmp_path_factory) -> Path:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) on PATH: cannot build the tile_schedule_test CPU driver")
    out = tmp_path_factory.mktemp("tile") / "tile_schedule_test"
    cmd = [compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", str(SOURCE), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def make_inputs(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    kv_len = case.past + case.q_len
    q = rng.standard_normal((case.batch, case.heads, case.q_len, case.head_dim))
    k = rng.standard_normal((case.batch, case.kv_heads, kv_len, case.head_dim))
    v = rng.standard_normal((case.batch, case.kv_heads, kv_len, case.head_dim))
    return q, k, v


def run_driver(binary: Path, case: Case, q, k, v, scale: float) -> dict:
    header = [case.batch, case.heads, case.kv_heads, case.q_len, case.past + case.q_len, case.head_dim,
              case.start, case.length, case.window, repr(scale), case.query_tile, case.key_tile]
    body = " ".join(" ".join(repr(float(x)) for x in a.ravel()) for a in (q, k, v))
    text = " ".join(str(x) for x in header) + "\n" + body + "\n"
    proc = subprocess.run([str(binary)], input=text, capture_output=True, text=True, check=True)
    result: dict = {"tiles": {}}
    for line in proc.stdout.splitlines():
        word, *rest = line.split()
        if word == "tiles":
            tile, count, *visited = (int(x) for x in rest)
            assert len(visited) == count
            result["tiles"][tile] = visited
        elif word in ("pairs", "allowed"):
            result[word] = int(rest[0])
        elif word == "out":
            result["out"] = np.array([float(x) for x in rest]).reshape(q.shape)
    return result


def needed_key_tiles(case: Case) -> dict[int, list[int]]:
    """Key tiles holding at least one allowed (query, key) pair, per query tile (from the spec's mask)."""
    mask = hollow_attention_mask(case.q_len, case.past + case.q_len, (case.start, case.length), case.window)
    tiles = {}
    for t in range(-(-case.q_len // case.query_tile)):
        rows = mask[t * case.query_tile:(t + 1) * case.query_tile]
        tiles[t] = sorted({int(j) // case.key_tile for j in np.nonzero(rows.any(axis=0))[0]})
    return tiles


@pytest.mark.parametrize("name", sorted(CASES))
def test_visited_tiles_are_exactly_the_needed_ones(tile_binary, name):
    case = CASES[name]
    q, k, v = make_inputs(case)
    result = run_driver(tile_binary, case, q, k, v, 0.5)
    assert result["tiles"] == needed_key_tiles(case)
    mask = hollow_attention_mask(case.q_len, case.past + case.q_len, (case.start, case.length), case.window)
    assert result["allowed"] == int(mask.sum())  # every allowed pair lies in a visited tile


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiled_attention_matches_reference(tile_binary, name):
    case = CASES[name]
    q, k, v = make_inputs(case, seed=1)
    scale = case.head_dim ** -0.5
    result = run_driver(tile_binary, case, q, k, v, scale)
    expected = reference_hollow_attention(q, k, v, (case.start, case.length), case.window, scale)
    np.testing.assert_allclose(result["out"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 16, 48])
def test_work_is_proportional_to_attended_pairs(tile_binary, window):
    # one long visual span after a short text prefix, with past: visual query tiles must visit
    # only the prefix and their window, not all earlier keys
    case = Case(1, 1, 1, q_len=600, past=40, head_dim=1, start=24, length=520, window=window,
                query_tile=16, key_tile=16)
    q, k, v = make_inputs(case)
    result = run_driver(tile_binary, case, q, k, v, 1.0)
    span_begin, span_end = case.past + case.start, case.past + case.start + case.length
    bound = span_begin + window + case.query_tile + 2 * case.key_tile
    for t, visited in result["tiles"].items():
        q0 = case.past + t * case.query_tile
        q1 = q0 + case.query_tile
        if q0 >= span_begin and q1 <= span_end:  # a tile of visual queries only
            assert len(visited) * case.key_tile <= bound, (t, visited)
    causal_pairs = sum(case.past + i + 1 for i in range(case.q_len))
    mask = hollow_attention_mask(case.q_len, case.past + case.q_len, (case.start, case.length), window)
    overhead = result["pairs"] / mask.sum()
    assert result["pairs"] < causal_pairs
    assert overhead < 1 + 2.0 * (case.query_tile + case.key_tile) / window  # tile granularity only
    print(f"window {window}: visited {result['pairs']} pairs for {mask.sum()} allowed ({overhead:.2f}x), "
          f"causal {causal_pairs}")
