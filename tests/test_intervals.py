"""Paired bootstrap intervals of the accuracy tables: pairing, ties, groups and their storage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import accuracy
from benchmarks.harness import ResultStore
from benchmarks.intervals import add_intervals, paired_interval, verdict
from tests.hyper_fixtures import synthetic_csv  # noqa: F401


def test_a_constant_shift_per_user_gives_that_shift_and_a_degenerate_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300)  # users differ far more than the shift: only pairing sees it
    diff = paired_interval(base + 0.25, base, seed=3, n=400)
    assert diff.mean == pytest.approx(0.25)
    assert diff.lo == pytest.approx(0.25) and diff.hi == pytest.approx(0.25)
    assert diff.users == 300 and verdict(diff.lo, diff.hi) == "yes"
    # The same shift downwards is a loss, again with no spread.
    down = paired_interval(base - 0.01, base, seed=3, n=400)
    assert down.hi == pytest.approx(-0.01) and verdict(down.lo, down.hi) == "loss"
    # Unpaired, the same vectors overlap: shuffling one side breaks the pairing and the interval
    # widens by orders of magnitude.
    shuffled = paired_interval(rng.permutation(base) - 0.01, base, seed=3, n=400)
    assert shuffled.hi - shuffled.lo > 100 * (down.hi - down.lo + 1e-12)


def test_identical_methods_tie() -> None:
    a = np.random.default_rng(1).random(200)
    diff = paired_interval(a, a.copy(), seed=0, n=300)
    assert (diff.mean, diff.lo, diff.hi) == (0.0, 0.0, 0.0)
    assert verdict(diff.lo, diff.hi) == "no (tie)"


def test_interval_excludes_zero_only_for_a_real_difference() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(500)
    real = paired_interval(base + 0.05 + rng.normal(0, 0.05, 500), base, seed=1, n=500)
    assert 0 < real.lo < real.mean < real.hi
    noise = paired_interval(base + rng.normal(0, 0.05, 500), base, seed=1, n=500)
    assert noise.lo < 0 < noise.hi


def test_users_one_method_did_not_evaluate_are_left_out_of_the_pair() -> None:
    a = np.array([0.5, np.nan, 0.3, 0.2])
    b = np.array([0.4, 0.9, np.nan, 0.1])
    diff = paired_interval(a, b, seed=0, n=50)
    assert diff.users == 2 and diff.mean == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same test users"):
        paired_interval(a, b[:3], seed=0)
    with pytest.raises(ValueError, match="no user was measured by both"):
        paired_interval(np.array([np.nan, 1.0]), np.array([1.0, np.nan]), seed=0)


def _row(method: str, budget: float, ndcg: float, mode: str = "pretrained") -> dict[str, Any]:
    return {"dataset": "toy", "backbone": "sasrec", "backbone_mode": mode, "budget": budget,
            "method": method, "NDCG@10": ndcg, "avg_bits": budget}


def test_accuracy_rows_are_compared_with_the_best_other_method_at_their_bits() -> None:
    users = 400
    rng = np.random.default_rng(5)
    base = rng.random(users)
    # Budget-free rows are stored at the first budget (2); ptq-3 belongs with the budget-3 rows.
    per = {
        ("fp32", 2.0): base + 0.2, ("ptq-8", 2.0): base + 0.2, ("ptq-3", 2.0): base + 0.05,
        ("ptq-2", 2.0): base - 0.1, ("mixed-static", 2.0): base,
        ("chord-pretrained", 2.0): base + 0.02,
        ("mixed-static", 3.0): base + 0.06, ("chord-pretrained", 3.0): base + 0.06,
    }
    rows = [_row(m, b, float(v.mean())) for (m, b), v in per.items()]
    rows.append(_row("chord-random", 3.0, 0.04, mode="random"))  # alone in its mode: no vs
    vectors = {accuracy.vector_key(r): per[(r["method"], r["budget"])] for r in rows[:-1]}
    vectors[accuracy.vector_key(rows[-1])] = np.full(users, 0.04)
    add_intervals(rows, accuracy.comparison_group,
                  lambda r: vectors.get(accuracy.vector_key(r)), seed=0)
    by = {(r["method"], r["budget"]): r for r in rows}
    assert "vs" not in by[("fp32", 2.0)] and "vs" not in by[("ptq-8", 2.0)]
    assert "vs" not in by[("chord-random", 3.0)]
    chord2 = by[("chord-pretrained", 2.0)]
    assert chord2["vs"] == "mixed-static" and chord2["diff"] == pytest.approx(0.02)
    assert chord2["win"] == "yes" and chord2["ci_users"] == users
    assert by[("ptq-2", 2.0)]["vs"] == "chord-pretrained" and by[("ptq-2", 2.0)]["win"] == "loss"
    # At 3 bits CHORD equals mixed-static user by user: a tie, whichever is the best other.
    chord3 = by[("chord-pretrained", 3.0)]
    assert chord3["win"] == "no (tie)" and chord3["diff"] == 0.0
    assert by[("ptq-3", 2.0)]["vs"] in ("mixed-static", "chord-pretrained")
    assert by[("ptq-3", 2.0)]["diff"] == pytest.approx(-0.01)


def test_replot_recomputes_intervals_from_the_stored_vectors(tmp_path: Path) -> None:
    store = ResultStore.at(tmp_path)
    base = np.linspace(0.0, 1.0, 50)
    rows = [_row("mixed-static", 3.0, float(base.mean())),
            _row("chord-pretrained", 3.0, float(base.mean()) + 0.1),
            _row("fp32", 3.0, 0.9),  # no vector kept: compared with nothing either way
            _row("ptq-3", 2.0, float(base.mean()) + 0.05)]  # listed at budget 2, compared at 3
    vectors = {accuracy.vector_key(rows[0]): base, accuracy.vector_key(rows[1]): base + 0.1,
               accuracy.vector_key(rows[3]): base + 0.05}
    meta = {"config": {"dataset": "toy", "backbone": "sasrec", "allocation": "rd"}, "runs": {},
            "seconds": 1.0}
    accuracy.write(store, accuracy.NAME, rows, [meta], 1.0, vectors=vectors)
    npz = tmp_path / f"{accuracy.NAME}_per_user.npz"
    loaded = accuracy.load_vectors(npz)
    assert set(loaded) == set(vectors)
    assert all(np.array_equal(loaded[k], v) for k, v in vectors.items())
    data = json.loads(store.path(accuracy.NAME).read_text())
    chord, ptq = data["rows"][1], data["rows"][3]
    assert (chord["vs"], chord["win"]) == ("ptq-3", "yes")
    assert (ptq["vs"], ptq["win"]) == ("chord-pretrained @3 bits", "loss")
    # Strip the columns; --replot brings them back from the .npz alone.
    for r in data["rows"]:
        for col in ("vs", "diff", "ci95", "win", "ci_users"):
            r.pop(col, None)
    store.path(accuracy.NAME).write_text(json.dumps(data))
    assert accuracy.replot(argparse.Namespace(name=accuracy.NAME), store) == 0
    again = json.loads(store.path(accuracy.NAME).read_text())["rows"][1]
    assert (again["vs"], again["diff"], again["win"]) == ("ptq-3", 0.05, "yes")
    assert "CHORD wins" in (tmp_path / "RESULTS.md").read_text()


def test_import_replaces_one_pair_keeps_the_others_in_place_and_their_vectors(
    tmp_path: Path,
) -> None:
    base = np.linspace(0.0, 1.0, 40)

    def pair(dataset: str, shift: float) -> tuple[list[dict[str, Any]], dict[Any, np.ndarray]]:
        rows = [{**_row("mixed-static", 3.0, float(base.mean())), "dataset": dataset},
                {**_row("chord-pretrained", 3.0, float(base.mean()) + shift), "dataset": dataset}]
        return rows, {accuracy.vector_key(rows[0]): base,
                      accuracy.vector_key(rows[1]): base + shift}

    def meta(dataset: str) -> dict[str, Any]:
        return {"config": {"dataset": dataset, "backbone": "sasrec"}, "runs": {}, "seconds": 60.0}

    committed = ResultStore.at(tmp_path / "committed")
    rows_a, vec_a = pair("a", 0.1)
    rows_b, _ = pair("b", 0.0)
    accuracy.write(committed, accuracy.NAME, rows_a + rows_b, [meta("a"), meta("b")], 60.0,
                   vectors=vec_a)  # pair b predates per-user vectors
    measured = ResultStore.at(tmp_path / "run")
    new_b, vec_b = pair("b", -0.2)
    accuracy.write(measured, accuracy.NAME, new_b, [meta("b")], 60.0, vectors=vec_b)
    args = argparse.Namespace(import_json=[str(measured.path(accuracy.NAME))], merge=True,
                              name=accuracy.NAME)
    assert accuracy.import_results(args, committed) == 0
    rows = json.loads(committed.path(accuracy.NAME).read_text())["rows"]
    assert [(r["dataset"], r["win"]) for r in rows] == [
        ("a", "loss"), ("a", "yes"), ("b", "yes"), ("b", "loss")]
    assert rows[3]["diff"] == pytest.approx(-0.2)
    kept = accuracy.load_vectors(accuracy.vectors_path(committed.path(accuracy.NAME)))
    assert set(kept) == set(vec_a) | set(vec_b)


def test_the_benchmark_keeps_a_vector_per_row_and_replot_reproduces_its_intervals(
    synthetic_csv: str, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "res"
    assert accuracy.main([
        "--datasets", synthetic_csv, "--backbones", "sasrec", "--budgets", "3",
        "--preset", "smoke", "--hyper-steps", "6", "--duet-steps", "6", "--finetune-users", "15",
        "--trained-backbones", str(tmp_path / "none"), "--results-dir", str(out),
    ]) == 0
    store = ResultStore.at(out)
    data = json.loads(store.path(accuracy.NAME).read_text())
    vectors = accuracy.load_vectors(accuracy.vectors_path(store.path(accuracy.NAME)))
    n_test = data["meta"][0]["test_users"]
    assert {accuracy.vector_key(r) for r in data["rows"]} == set(vectors)
    assert all(v.shape == (n_test,) for v in vectors.values())
    by = {(r["backbone_mode"], r["method"]): r for r in data["rows"]}
    chord = by[("pretrained", "chord-pretrained")]
    assert chord["win"] in ("yes", "no (tie)", "loss") and chord["ci_users"] == n_test
    assert by[("pretrained", "finetune")]["ci_users"] == 15
    assert "win" in by[("pretrained", "ptq-3")]  # at budget 3; ptq-2, 4, 8 have no peers here
    assert not any("win" in by[("pretrained", m)] for m in ("fp32", "ptq-2", "ptq-4", "ptq-8"))
    assert "win" in by[("random", "chord-random")]
    before = [(r["method"], r.get("ci95")) for r in data["rows"]]
    assert accuracy.main(["--replot", "--results-dir", str(out)]) == 0
    after = json.loads(store.path(accuracy.NAME).read_text())["rows"]
    assert [(r["method"], r.get("ci95")) for r in after] == before
