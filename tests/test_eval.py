"""`chord eval` end to end on a small synthetic dataset, and its input errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from chord.cli import main
from tests.hyper_fixtures import synthetic_csv  # noqa: F401


def test_eval_command_writes_rows(
    synthetic_csv: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    out = tmp_path / "eval.json"
    code = main([
        "eval", "--dataset", synthetic_csv, "--budget", "2", "--smoke", "--hyper-steps", "6",
        "--quiet", "--methods", "fp32,ptq-2,mixed-random,chord-pretrained,chord-random",
        "--json", str(out),
    ])
    assert code == 0
    data = json.loads(out.read_text())
    methods = [(r["method"], r["backbone_mode"]) for r in data["rows"]]
    assert ("chord-pretrained", "pretrained") in methods and ("chord-random", "random") in methods
    assert data["meta"]["tier"] == "low"
    for r in data["rows"]:
        assert {"method", "backbone_mode", "avg_bits", "HR@5", "HR@10", "NDCG@5", "NDCG@10",
                "bytes_down_per_user", "adapt_ms"} <= set(r)
    printed = capsys.readouterr().out
    assert "chord-pretrained" in printed and "NDCG@10" in printed


def test_eval_command_rejects_unreachable_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--budget", "8", "--quiet"]) == 2
    assert "strictly inside" in capsys.readouterr().err
    assert main(["eval", "--budget", "3", "--methods", "fp32,nope", "--quiet"]) == 2


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (("--device", "cuda:99"), "--device 'cuda:99': this machine has"),
        (("--device", "tpu"), "--device 'tpu' is not a torch device"),
        (("--budget", "nan"), "budget must be a finite number of bits > 0, got nan"),
        (("--max-users", "0"), "max_users must be >= 1, got 0"),
        (("--hyper-steps", "0"), "hyper_steps must be >= 1, got 0"),
        (("--seed", "-1"), "seed must be >= 0, got -1"),
        (("--negatives", "0"), "--negatives must be >= 1, got 0"),
        (("--threads", "0"), "argument --threads: 0 is below 1"),
        # 100,000 threads crashed torch's thread pool at start (segmentation fault, exit 139).
        (("--threads", "100000"), "argument --threads: 100000 threads is above"),
        (("--backbone-path", "/nonexistent/b.pt"), "--backbone-path '/nonexistent/b.pt' is not"),
    ],
)
def test_eval_refuses_settings_before_loading_data(
    flags: tuple[str, ...], expect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before the dataset is even looked up (the dataset here does not exist)."""
    with pytest.raises(SystemExit) if flags[0] == "--threads" else contextlib.nullcontext():
        code = main(["eval", "--dataset", "/nonexistent/data.csv", "--smoke", *flags])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expect in err[-1] and "Traceback" not in "\n".join(err)
