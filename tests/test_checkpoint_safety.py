"""Checkpoints never run code: a pickle that would execute on load is refused with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from chord.checkpoint import CheckpointError, load_backbone
from chord.cli import main
from chord.hyper.runs import RunError, load_run


class _Payload:
    """Unpickling this touches a marker file: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_backbone_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "backbone.pt"
    torch.save({"format": "chord-backbone", "evil": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone(path)
    assert str(info.value) == (
        f"{path} is not a chord backbone checkpoint (torch.load with weights_only=True refused "
        "it: UnpicklingError); pass a backbone.pt written by `chord train`"
    )
    assert not marker.exists()


def test_cli_eval_refuses_a_file_that_is_not_a_checkpoint_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never torch's multi-line text, which advises the unsafe weights_only=False."""
    monkeypatch.setenv("CHORD_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "small.csv"
    data.write_text("".join(f"u{u},{(u * 7 + s) % 200 + 1},{s}\n"
                            for u in range(40) for s in range(12)))
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint\n")
    code = main(["eval", "--dataset", str(data), "--smoke", "--quiet", "--methods", "fp32",
                 "--negatives", "50", "--backbone-path", str(bad)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"chord eval: error: {bad} is not a chord backbone checkpoint (torch.load with "
        "weights_only=True refused it: UnpicklingError); pass a backbone.pt written by "
        "`chord train`"
    ]


def test_hypernet_with_code_is_refused(tmp_path: Path, smoke_run_dir: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run_dir, run)
    marker = tmp_path / "pwned"
    torch.save({"format": "x", "evil": _Payload(marker)}, run / "hypernet.pt")
    with pytest.raises(RunError) as info:
        load_run(run)
    assert str(info.value) == (
        f"cannot read {run / 'hypernet.pt'}: not a chord-hypernet/1 file (torch.load with "
        "weights_only=True refused it: UnpicklingError)"
    )
    assert not marker.exists()
