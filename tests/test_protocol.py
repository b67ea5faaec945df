"""The evaluation protocol is checked against the data at load, on every command that ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chord.cli import main as cli_main
from chord.protocol import Protocol, ProtocolError, check_protocol


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own dataset cache."""
    monkeypatch.setenv("CHORD_CACHE_DIR", str(tmp_path / "cache"))


def test_check_protocol_names_the_raw_user_and_the_rule() -> None:
    seen = [np.arange(1, 11), np.arange(1, 61), np.arange(1, 5)]
    labels = np.array(["alice", "bob", "carol"])
    check_protocol(Protocol("sampled", 15), 75, seen, labels)
    check_protocol(Protocol("full"), 75, seen, labels)
    with pytest.raises(ProtocolError) as info:
        check_protocol(Protocol("sampled", 20), 75, seen, labels, "toy")
    assert str(info.value) == (
        "toy: sampled ranking needs 20 unseen negatives per user, but user bob touched 60 of 75 "
        "items, leaving 15 unseen (the fewest of any user); pass --negatives 15 or fewer, or "
        "--full-ranking"
    )


def test_check_protocol_names_the_binding_user_first_time() -> None:
    """Not the first user short of negatives: the one with the fewest unseen items."""
    seen = [np.arange(1, 11), np.arange(1, 31), np.arange(1, 16)]
    labels = np.array(["alice", "bob", "carol"])
    with pytest.raises(ProtocolError) as info:
        check_protocol(Protocol("sampled", 100), 75, seen, labels, "cat75")
    assert str(info.value) == (
        "cat75: sampled ranking needs 100 unseen negatives per user, but user bob touched 30 of "
        "75 items, leaving 45 unseen (the fewest of any user); pass --negatives 45 or fewer, or "
        "--full-ranking"
    )
    check_protocol(Protocol("sampled", 45), 75, seen, labels, "cat75")  # the advice works
    with pytest.raises(ProtocolError, match="user index 0 touched 75 of 75 items, leaving 0 "
                       r"unseen \(the fewest of any user\); pass --full-ranking$"):
        check_protocol(Protocol("sampled", 1), 75, [np.arange(75)])


def test_protocol_refuses_nonsense() -> None:
    with pytest.raises(ProtocolError, match="--negatives must be >= 1"):
        Protocol("sampled", 0)
    with pytest.raises(ProtocolError, match="ranking must be one of"):
        Protocol("topk", 10)


def test_cli_eval_small_catalogue_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"u{u},{(u * 3 + s) % 75 + 1},{s}" for u in range(30) for s in range(10)]
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    code = cli_main(["eval", "--dataset", str(path), "--smoke", "--quiet",
                     "--methods", "fp32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "chord eval: error: small: sampled ranking needs 100 unseen negatives per user, "
        "but user u0 touched 10 of 75 items, leaving 65 unseen (the fewest of any user); pass "
        "--negatives 65 or fewer, or --full-ranking"
    ]


@pytest.mark.parametrize("flags", [("--negatives", "50"), ("--full-ranking",)])
def test_cli_eval_small_catalogue_with_a_fitting_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]
) -> None:
    """Backbone early stopping, hypernetwork validation and the table all use the protocol."""
    import json

    lines = [f"u{u},{(u * 3 + s) % 75 + 1},{s}" for u in range(30) for s in range(10)]
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval.json"
    code = cli_main(["eval", "--dataset", str(path), "--smoke", "--quiet", "--methods",
                     "fp32,chord-pretrained", "--hyper-steps", "4", *flags, "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    expect = "whole catalogue" if flags == ("--full-ranking",) else "50 sampled unseen negatives"
    assert expect in result["meta"]["protocol"]
    for row in result["rows"]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("HR@10", "NDCG@10"))
