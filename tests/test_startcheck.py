"""Output-path checks really try to write, so they hold for root (os.access says yes to root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chord.cli import main
from chord.startcheck import StartupError, check_address, check_out_dir, check_out_file

needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@needs_proc
def test_output_file_under_proc_is_refused_in_one_line() -> None:
    with pytest.raises(StartupError) as info:
        check_out_file("/proc/nope/x.jsonl", "--reports")
    assert str(info.value) == (
        "--reports '/proc/nope/x.jsonl' cannot be created ('/proc' is not a writable directory: "
        "No such file or directory); send a path under a directory you can write"
    )


@needs_proc
def test_simulate_out_under_proc_is_refused_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--out", "/proc/nope/out", "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "chord simulate: error: --out '/proc/nope/out' cannot be created ('/proc' is not a "
        "writable directory: No such file or directory); send a path under a directory you "
        "can write"
    ]


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys")
def test_output_dir_under_sys_is_refused() -> None:
    with pytest.raises(StartupError, match=r"^--out '/sys/chord-out' cannot be created \('/sys'"):
        check_out_dir("/sys/chord-out", "--out")


def test_check_never_truncates_an_existing_file_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text('{"kept": true}\n')
    assert check_out_file(out, "--json") == out
    assert check_out_dir(tmp_path, "--out") == tmp_path
    assert check_out_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert out.read_text() == '{"kept": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file left


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StartupError) as info:
        check_out_file(blocker / "x.json", "--json")
    assert str(info.value) == (
        f"--json '{blocker / 'x.json'}' cannot be created ('{blocker}' is not a writable "
        "directory: not a directory); send a path under a directory you can write"
    )


@pytest.mark.parametrize(
    ("address", "expect"),
    [
        # Passed the check, then gRPC spent every retry on "Misformatted domain name".
        ("::1:50051", "server '::1:50051' has an IPv6 host without brackets; send [::1]:50051 "
         "([IPv6]:PORT)"),
        ("fe80::1:80", "server 'fe80::1:80' has an IPv6 host without brackets; send "
         "[fe80::1]:80 ([IPv6]:PORT)"),
        ("a:b:1", "server 'a:b:1' is not HOST:PORT; send e.g. 127.0.0.1:50051 or [::1]:50051"),
        ("[::1]:50051", None),
        ("127.0.0.1:50051", None),
    ],
)
def test_ipv6_address_needs_brackets(address: str, expect: str | None) -> None:
    if expect is None:
        assert check_address(address, "server")[1] == 50051
        return
    with pytest.raises(StartupError) as info:
        check_address(address, "server")
    assert str(info.value) == expect


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        # Path("") is the current directory: `--out ''` filled the repository root.
        (["simulate", "--out", "", "--quiet"], "chord simulate: error: argument --out: is "
         "empty; send a path"),
        (["serve", "--run", " "], "chord serve: error: argument --run: is empty; send a path"),
        (["train", "--dataset", "ml-100k", "--out", ""], "chord train: error: --out is empty; "
         "send a directory path"),
    ],
)
def test_empty_paths_are_refused_not_read_as_the_current_directory(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # refused by argparse (a path flag's type)
        code = int(str(exc.code))
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line
    assert list(tmp_path.iterdir()) == []
    for check in (check_out_dir, check_out_file):
        with pytest.raises(StartupError, match=r"^--x is empty; send a"):
            check("", "--x")


def test_train_refusing_its_data_leaves_no_new_out_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The data is read after --out is made: a refused file left an empty --out directory."""
    data = tmp_path / "nan.data"
    data.write_text("1\t1\tnan\t1\n")
    out = tmp_path / "out"
    assert main(["train", "--dataset", str(data), "--no-progress", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("chord train: error: ")
    assert not out.exists()


def test_resume_refuses_flags_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume runs the config saved in its directory: --devices, --out and --config beside it
    were silently ignored (600 devices ran where 10 were asked, and --out was never made)."""
    out = tmp_path / "other"
    code = main(["simulate", "--resume", str(tmp_path), "--devices", "10", "--out", str(out),
                 "--quiet"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "chord simulate: error: --resume DIR finishes the run with the config saved in DIR; "
        "leave out --devices, --out (they would be ignored), or start a new run with --out"
    ]
    assert not out.exists()
