"""Environment every `chord` process (and its Ray workers) starts with, set before gRPC loads.

gRPC's C core reads its settings once, when the first module that embeds it is imported (grpc,
or Ray's _raylet, which carries its own copy), so these must be in os.environ before that:

- GRPC_ENABLE_FORK_SUPPORT=false: with fork support on, gRPC registers pthread_atfork
  handlers, and every fork() while its threads are busy logs "Other threads are currently
  calling into gRPC, skipping fork() handlers". `chord simulate` runs the embedded server's
  threads while `ray.init` forks Ray's processes (Ray's Popen uses a preexec_fn, so Python
  calls fork(), not vfork()): five such lines per run. No process here uses gRPC across a
  fork without exec (Ray's children exec; the load generator uses the spawn start method),
  so the handlers buy nothing.
- GRPC_VERBOSITY=ERROR: gRPC core's own INFO and WARNING lines are not the product's lines;
  errors still show.

Values already in the environment win (setdefault), so a user can turn either back on.
"""

from __future__ import annotations

import os

GRPC_PROCESS_ENV: dict[str, str] = {
    "GRPC_ENABLE_FORK_SUPPORT": "false",
    "GRPC_VERBOSITY": "ERROR",
}


def apply_process_env() -> dict[str, str]:
    """Set GRPC_PROCESS_ENV's values not already set; returns the values now in effect."""
    for key, value in GRPC_PROCESS_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in GRPC_PROCESS_ENV}


__all__ = ["GRPC_PROCESS_ENV", "apply_process_env"]
