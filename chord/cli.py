"""The `chord` command: one entry point that dispatches to each subsystem's command module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from chord.process_env import apply_process_env

# Subcommand -> module exposing add_arguments(parser) and run(args) -> int. Imported lazily so
# `chord --help` stays fast and a broken optional subsystem does not take the others down.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("chord.commands.train", "train and evaluate a full-precision backbone"),
    "eval": ("chord.commands.eval", "accuracy table: CHORD against the baselines"),
    "serve": ("cloud_server.cli", "run the gRPC strategy service"),
    "simulate": ("simulator.cli", "run a device fleet against the cloud service"),
    "bench": ("benchmarks.cli", "benchmarks and the endpoint load generator"),
}


class CommandModule(Protocol):
    """What a subcommand module offers."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's flags."""

    def run(self, args: argparse.Namespace) -> int:
        """Execute with parsed flags; return the exit status."""


def _load(name: str) -> CommandModule:
    """Import a subcommand's module."""
    return cast(CommandModule, importlib.import_module(COMMANDS[name][0]))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="chord", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    apply_process_env()  # before the subcommand imports grpc or ray
    try:
        module = _load(name)
        cmd_parser = argparse.ArgumentParser(prog=f"chord {name}", description=COMMANDS[name][1])
        module.add_arguments(cmd_parser)
        args = cmd_parser.parse_args(argv[1:])
        return module.run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shells' 128 + SIGINT, no traceback
        words = argv[:2] if len(argv) > 1 and argv[1].isidentifier() else argv[:1]  # bench load
        print(f"chord {' '.join(words)}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
