"""Levels and codes of a fixed run are pinned: reshaping the core must not change one bit.

`tests/data/golden_levels.npz` was written before the level rules moved into `chord.levels`
(commit b6ba73f), from a smoke random-mode run (ML-100K, SASRec, rd rule): six users' importance
from its hypernetwork, its reference importance and its measured level-cost table, with the
levels both rules chose and the codes the server sent. The inputs are stored, so the check does
not depend on training being bit-identical across machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chord.codes import decode_levels, encode_levels, reference_levels
from chord.levels import DEFAULT_TIERS, LevelCost, assign_levels_batch

GOLDEN = Path(__file__).parent / "data" / "golden_levels.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    """The stored inputs and outputs."""
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _cost(g: dict[str, np.ndarray]) -> LevelCost:
    return LevelCost(
        g["layer_loss"],
        tuple(int(x) for x in g["layer_channels"]),
        tuple(int(x) for x in g["layer_weights"]),
    )


def _cases(g: dict[str, np.ndarray]) -> tuple[list, list[float]]:
    return [DEFAULT_TIERS[str(t)] for t in g["tiers"]], [float(b) for b in g["budgets"]]


def test_rd_levels_are_unchanged(golden: dict[str, np.ndarray]) -> None:
    tiers, budgets = _cases(golden)
    rows = assign_levels_batch(golden["importance"], golden["sizes"], tiers, budgets, _cost(golden))
    np.testing.assert_array_equal(np.stack(rows), golden["levels_rd"])


def test_quota_levels_are_unchanged(golden: dict[str, np.ndarray]) -> None:
    tiers, budgets = _cases(golden)
    rows = assign_levels_batch(golden["importance"], golden["sizes"], tiers, budgets)
    np.testing.assert_array_equal(np.stack(rows), golden["levels_quota"])


def test_codes_are_unchanged_and_decode(golden: dict[str, np.ndarray]) -> None:
    tiers, budgets = _cases(golden)
    cost = _cost(golden)
    ends = np.cumsum(golden["payload_len"])
    for i, (tier, budget) in enumerate(zip(tiers, budgets, strict=True)):
        ref = reference_levels(golden["reference"], golden["sizes"], tier, budget, cost)
        code = encode_levels(golden["levels_rd"][i], "v-golden", reference=ref)
        payload = golden["payload"][ends[i] - golden["payload_len"][i] : ends[i]].tobytes()
        assert (code.payload, code.crc32, code.encoding) == (
            payload, int(golden["crc32"][i]), str(golden["encoding"][i])
        )
        back = decode_levels(code, "v-golden", len(golden["sizes"]), ref)
        np.testing.assert_array_equal(back, golden["levels_rd"][i])
