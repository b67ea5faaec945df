"""docker-compose.yml and Dockerfile: their structure, and every command they name exists."""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chord.cli import COMMANDS

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    """The compose file, parsed with PyYAML."""
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """Each command line a service runs (`sh -c "a && b"` split into a and b)."""
    cmd = service["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(x) for x in cmd]
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def _check_chord(argv: list[str]) -> None:
    """`chord SUB FLAGS...` parses with that subcommand's own parser."""
    assert argv[0] == "chord" and argv[1] in COMMANDS, argv
    module = importlib.import_module(COMMANDS[argv[1]][0])
    parser = argparse.ArgumentParser(prog=f"chord {argv[1]}", exit_on_error=False)
    module.add_arguments(parser)
    parser.parse_args(argv[2:])  # raises on an unknown flag or a bad value


def _ray_start_flags() -> str:
    """The help text of `ray start` from the venv's ray."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    out = subprocess.run([ray, "start", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_services_and_scaling() -> None:
    services = _compose()["services"]
    assert {"cloud", "ray-head", "ray-worker", "simulator"} <= set(services)
    worker = services["ray-worker"]
    # Scalable with --scale: no fixed container name and no host port mapping.
    assert "container_name" not in worker and "ports" not in worker
    sim = _commands(services["simulator"])[0]
    assert sim[sim.index("--server") + 1] == "cloud:50051"
    assert sim[sim.index("--ray-address") + 1] == "ray-head:6379"
    assert "cloud" in services["simulator"]["depends_on"]
    assert "ray-head:6379" in " ".join(_commands(worker)[0])


def test_every_command_exists() -> None:
    services = _compose()["services"]
    ray_help = None
    seen = set()
    for name, service in services.items():
        for argv in _commands(service):
            if argv[0] == "chord":
                _check_chord(argv)
                seen.add(f"chord {argv[1]}")
            elif argv[:2] == ["ray", "start"]:
                ray_help = ray_help or _ray_start_flags()
                for flag in argv[2:]:
                    assert flag.split("=")[0] in ray_help, f"{name}: ray start has no {flag}"
                seen.add("ray start")
            else:
                pytest.fail(f"service {name} runs an unknown command {argv}")
    assert {"chord serve", "chord simulate", "ray start"} <= seen


def test_dockerfile_installs_the_project() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "pip install -e ." in text and "recbole==1.2.1" in text
    for pkg in ("chord", "cloud_server", "device_client", "simulator", "protos"):
        assert f"COPY {pkg} ./{pkg}" in text
