"""Checkpoints never run code: a pickle that would execute on load is refused with a clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from chord.checkpoint import CheckpointError, load_backbone
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
    with pytest.raises(CheckpointError, match="is not a valid backbone checkpoint"):
        load_backbone(path)
    assert not marker.exists()


def test_hypernet_with_code_is_refused(tmp_path: Path, smoke_run_dir: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(smoke_run_dir, run)
    marker = tmp_path / "pwned"
    torch.save({"format": "x", "evil": _Payload(marker)}, run / "hypernet.pt")
    with pytest.raises(RunError, match="is not a valid hypernetwork checkpoint"):
        load_run(run)
    assert not marker.exists()
