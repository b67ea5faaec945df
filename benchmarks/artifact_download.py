"""FetchArtifact: how fast a device downloads the pretrained backbone, by chunk size and link cuts.

    python -m benchmarks.artifact_download [--repeats 5] [--run-dir DIR] [--results-dir DIR]

A `chord` server in its own process (benchmarks.server_process) serves the run; this process is
the device: `device_client.artifacts.fetch_artifact` with the cache bypassed (every download
comes over the wire, as for a fresh phone), verified by SHA-256 as always. Per chunk size it
reports the median wall time of one download, the throughput it implies, and the framing
overhead (serialized ArtifactChunk bytes over artifact bytes); the last rows cut every stream
after 100 KB, so the download is resumed from the bytes kept until it completes.
Loopback gRPC on a shared machine: compare rows of one run, not across machines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ResultStore,
    Stats,
    add_output_arguments,
    load_average,
    markdown_table,
    time_calls,
    write_result,
)
from benchmarks.server_process import ServerProcess
from chord.startcheck import path_arg
from cloud_server.config import ServerConfig
from device_client.artifacts import ArtifactCache, DownloadStats, fetch_artifact
from device_client.transport import NetworkFaults, RetryPolicy, Transport

NAME = "artifact_download"
CHUNKS = (16 << 10, 64 << 10, 256 << 10, 1 << 20)  # 64 KiB is the server's default
CUT_BYTES = 100_000


def _default_run() -> Path:
    """The smoke pretrained SASRec run on ML-100K (trained once, then cached)."""
    from chord.hyper.runs import RunConfig, prepare_run

    return prepare_run(
        RunConfig.preset("smoke", dataset="ml-100k", backbone="sasrec", mode="pretrained", seed=0)
    )


def measure(target: str, repeats: int, cache_dir: Path) -> list[dict[str, Any]]:
    """One row per (chunk size, cut): median download time, MB/s, overhead, streams opened."""
    policy = RetryPolicy(call_timeout_s=30.0, overall_timeout_s=120.0, backoff_base_s=0.01)
    spec, _ = Transport(target, policy).get_model_spec("bench-artifacts")
    ref = spec.artifact("backbone_weights")
    if ref is None:
        raise SystemExit("the served run lists no weights artifact; pass a pretrained --run-dir")
    cache = ArtifactCache(cache_dir)
    rows = []
    for cut in (0, CUT_BYTES):
        transport = Transport(target, policy, faults=NetworkFaults(stream_cut_bytes=cut))
        for chunk in CHUNKS:
            last = DownloadStats()

            def once(chunk: int = chunk, transport: Transport = transport) -> None:
                nonlocal last
                _, last = fetch_artifact(
                    transport, ref, cache, tag="bench", reuse=False, max_chunk_bytes=chunk
                )

            ms = Stats.of([t * 1e3 for t in time_calls(once, repeats, warmup=1)])
            rows.append(
                {
                    "chunk_kib": chunk >> 10,
                    "stream_cut_bytes": cut,
                    "artifact_bytes": ref.size_bytes,
                    "download_ms_median": ms.median,
                    "download_ms_p90": ms.p90,
                    "mb_per_s": ref.size_bytes / 1e6 / (ms.median / 1e3),
                    "wire_overhead_pct": 100.0 * (last.bytes_received / ref.size_bytes - 1),
                    "streams": last.attempts,
                    "resumes": last.resumes,
                }
            )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the benchmark."""
    parser.add_argument("--repeats", type=int, default=5, help="timed downloads per row")
    parser.add_argument("--run-dir", type=path_arg, default=None, help="pretrained run to serve")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Serve the run in a child process, download from it, write JSON and the RESULTS section."""
    run_dir = args.run_dir or _default_run()
    with (
        ServerProcess(ServerConfig(run_dir=run_dir, grace_s=0.5)) as server,
        tempfile.TemporaryDirectory(prefix="chord-bench-cache-") as cache_dir,
    ):
        rows = measure(server.target, args.repeats, Path(cache_dir))
        load = load_average()
    cols = [
        "chunk_kib", "stream_cut_bytes", "download_ms_median", "download_ms_p90", "mb_per_s",
        "wire_overhead_pct", "streams", "resumes",
    ]
    table = markdown_table(rows, cols)
    notes = (
        f"Download of the {rows[0]['artifact_bytes']:,}-byte pretrained SASRec weights artifact "
        "(ML-100K, hidden 64, chord.backbone.v1+safetensors) from a server process over loopback "
        "gRPC, SHA-256 verified, cache bypassed; median and p90 of "
        f"{args.repeats} downloads per row after one warm-up. `stream_cut_bytes` > 0: the client "
        "cancels each stream once it received that many bytes and resumes from the bytes kept. "
        "`wire_overhead_pct`: serialized ArtifactChunk bytes over artifact bytes, minus 1. "
        f"Load average at the end: {load}; on a loaded host the times are noise-limited (see "
        "p90), the overhead and stream counts are exact."
    )
    write_result(NAME, {"rows": rows, "repeats": args.repeats, "load_average": load}, table, notes,
                 store=ResultStore.default(args.results_dir))
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
