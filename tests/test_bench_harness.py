"""The benchmark harness: result store, statistics, child processes and the process-tree sampler."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from benchmarks import endpoint_load, harness, random_masks
from benchmarks.harness import (
    RESULTS_DIR_ENV,
    BenchProcessError,
    ChildProcess,
    ProcessTreeSampler,
    ResultStore,
    Stats,
    Stopwatch,
    add_output_arguments,
    machine_info,
    markdown_table,
    time_calls,
    time_interleaved,
    write_result,
)


def test_machine_info_names_the_machine() -> None:
    info = machine_info()
    for key in ("platform", "python", "cpu_count", "date", "mem_gib", "commit"):
        assert key in info
    assert info["mem_gib"] > 0


def test_the_commit_says_when_the_measured_code_differs_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure measured from uncommitted code must not claim the bare commit: "+changes" is
    added for tracked code that differs from HEAD, not for the results a run itself rewrites."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    bench = tmp_path / "benchmarks"
    (bench / "results").mkdir(parents=True)
    (bench / "code.py").write_text("x = 1\n")
    (bench / "results" / "r.json").write_text("{}\n")
    (bench / "RESULTS.md").write_text("# results\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    monkeypatch.setattr(harness, "BENCH_DIR", bench)
    head = harness._commit()
    assert len(head) >= 7 and "+" not in head
    (bench / "results" / "r.json").write_text('{"a": 1}\n')
    (bench / "RESULTS.md").write_text("# results, rewritten\n")
    assert harness._commit() == head
    (bench / "code.py").write_text("x = 2\n")
    assert harness._commit() == head + "+changes"


def test_markdown_table_formats_floats_and_blanks() -> None:
    table = markdown_table([{"a": 1.23456, "b": None}, {"a": "x"}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 |  |", "| x |  |"]


def test_store_writes_json_and_replaces_its_section(tmp_path: Path) -> None:
    store = ResultStore.at(tmp_path)
    store.write("alpha", {"x": 1}, "| t |", "first note")
    store.write("beta", {"y": 2}, "| u |")
    out = store.write("alpha", {"x": 3}, "| t2 |", "second note")
    data = json.loads(out.read_text())
    assert data["benchmark"] == "alpha" and data["x"] == 3 and "commit" in data["machine"]
    assert store.read("alpha") == data and store.read("missing") is None
    md = (tmp_path / "RESULTS.md").read_text()
    assert md.count("<!-- alpha:start -->") == 1 and md.count("<!-- beta:start -->") == 1
    assert "second note" in md and "first note" not in md and "| u |" in md
    assert "JSON: `alpha.json`" in md  # relative to the Markdown file
    assert md.index("alpha:start") < md.index("beta:start")  # replaced in place


def test_payload_machine_wins(tmp_path: Path) -> None:
    store = ResultStore.at(tmp_path)
    out = store.write("old", {"machine": {"date": "then", "commit": "abc1234"}, "rows": []}, "t")
    assert json.loads(out.read_text())["machine"] == {"date": "then", "commit": "abc1234"}
    # A re-rendered section's first line names the machine that measured, not the re-renderer.
    assert "Measured then on unknown CPU" in store.markdown.read_text()
    assert "commit abc1234." in store.markdown.read_text()


def test_default_store_follows_flag_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RESULTS_DIR_ENV, raising=False)
    assert ResultStore.default() == ResultStore.committed()
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path / "env"))
    assert ResultStore.default().folder == tmp_path / "env"
    parser = argparse.ArgumentParser()
    add_output_arguments(parser)
    args = parser.parse_args(["--results-dir", str(tmp_path / "flag")])
    assert ResultStore.default(args.results_dir).markdown == tmp_path / "flag" / "RESULTS.md"
    path = write_result("smoke", {"ok": True}, "| t |")
    assert path == tmp_path / "env" / "smoke.json" and path.exists()


def test_results_dir_that_is_a_file_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found at parse time, not as a FileExistsError after the whole benchmark ran."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv(RESULTS_DIR_ENV, str(blocker))
    parser = argparse.ArgumentParser(prog="bench")
    add_output_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args([])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"bench: error: argument --results-dir: ${RESULTS_DIR_ENV} '{blocker}' is a file; send "
        "a directory path"
    )
    assert parser.parse_args(["--results-dir", str(tmp_path / "new")]).results_dir == str(
        tmp_path / "new"
    )  # the flag wins over a bad environment value
    monkeypatch.delenv(RESULTS_DIR_ENV)
    with pytest.raises(SystemExit):
        endpoint_load.main(["--results-dir", str(blocker)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"python -m benchmarks.endpoint_load: error: argument --results-dir: '{blocker}' is a "
        "file; send a directory path"
    )


def test_random_masks_results_follow_the_store(tmp_path: Path) -> None:
    """benchmarks.accuracy --random-masks --results-dir DIR writes there, not into benchmarks/."""
    row: dict[str, object] = {c: 0 for c in random_masks.COLUMNS}
    row.update(dataset="toy", backbone="sasrec", width=64, variant="bits", budget=3.0,
               method="chord", one_time_bytes=10, bytes_per_adaptation=5)
    store = ResultStore.at(tmp_path / "res")
    random_masks.write([row], [], {}, 0.0, "accuracy_random", store)
    assert sorted(p.name for p in store.folder.iterdir()) == [
        "RESULTS.md", "accuracy_random.json", "accuracy_random_bytes.png"
    ]
    assert json.loads(store.path("accuracy_random").read_text())["rows"][0]["dataset"] == "toy"


def test_stats_of_known_samples() -> None:
    s = Stats.of(list(range(1, 101)))
    assert (s.n, s.min, s.max, s.mean) == (100, 1.0, 100.0, 50.5)
    assert s.median == pytest.approx(np.percentile(range(1, 101), 50))
    assert s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    with pytest.raises(ValueError, match="at least one sample"):
        Stats.of([])


def test_timers_count_calls() -> None:
    calls: list[str] = []
    samples = time_calls(lambda: calls.append("f"), repeats=5, warmup=2)
    assert len(samples) == 5 and len(calls) == 7 and all(t >= 0 for t in samples)
    got = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert {k: len(v) for k, v in got.items()} == {"a": 3, "b": 3}
    assert calls.count("a") == 1 + 2 * 3  # warmup + an untimed call before each timed one
    out = io.StringIO()
    with Stopwatch(out) as sw:
        inside = sw.seconds
        sw.log("step one")
    assert 0 <= inside <= sw.seconds and out.getvalue().endswith("s] step one\n")
    with pytest.raises(ValueError, match="repeats"):
        time_calls(lambda: None, repeats=0)


READY_CHILD = (
    "import sys, time\n"
    "from benchmarks.harness import announce_ready\n"
    "print('warming up', file=sys.stderr, flush=True)\n"
    "announce_ready('PORT', 4242)\n"
    "sys.stdin.read()\n"  # serve until the parent closes stdin
    "print('bye', flush=True)\n"
)


def test_child_announces_and_stops_on_stdin_close() -> None:
    with ChildProcess([sys.executable, "-c", READY_CHILD], ready="PORT", start_timeout_s=60) as c:
        assert c.ready_value == "4242"
        pid = c.pid
        assert psutil.pid_exists(pid)
    assert c.returncode == 0 and "warming up" in c.log_tail() and "bye" in c.log_tail()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_child_that_dies_reports_its_log() -> None:
    cmd = [sys.executable, "-c", "import sys; print('no model here', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(BenchProcessError, match=r"exited with 3(.|\n)*no model here"):
        ChildProcess(cmd, ready="PORT", start_timeout_s=60).start()


def test_child_that_never_gets_ready_is_killed() -> None:
    ignore_term = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    cmd = [sys.executable, "-c", ignore_term + "while True: time.sleep(1)"]
    child = ChildProcess(cmd, ready="PORT", start_timeout_s=1.0, stop_timeout_s=0.5)
    with pytest.raises(BenchProcessError, match=r"did not print 'PORT \.\.\.'"):
        child.start()
    assert child.returncode is not None and child.returncode < 0  # killed by a signal


def test_child_wait_with_log_file(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = ChildProcess([sys.executable, "-c", "print('done')"], log=log).start()
    assert child.wait(60) == 0 and log.read_text() == "done\n"
    slow = ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"], stop_timeout_s=1)
    assert slow.start().wait(0.2) is None and slow.returncode is not None


def test_tree_sampler_sees_children_and_cpu() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    with ChildProcess(
        [sys.executable, "-c", burn + "import time; time.sleep(30)"], stop_timeout_s=1
    ) as child:
        roles = {child.pid: "worker"}
        with ProcessTreeSampler(
            os.getpid(), 0.05, pss_every=2, role=lambda p, root: roles.get(p, "me")
        ) as sampler:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                sampler.cpu_by_role().get("worker", 0.0) <= 0 or len(sampler.cpu_series) < 3
            ):
                time.sleep(0.05)
    assert sampler.peak_procs >= 2 and sampler.peak_rss_kb > 0 and sampler.peak_pss_kb > 0
    assert sampler.cpu_by_role()["worker"] > 0
    t0, t1 = sampler.cpu_series[0][0], sampler.cpu_series[-1][0]
    assert sampler.cpu_over((t0, t1)) >= sampler.cpu_over((t0, t1), main_thread=True) >= 0
