"""Tests of chord.data: every file format, malformed files, re-indexing, the cache and the split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from chord.data import (
    DataFormatError,
    SplitError,
    UnknownDatasetError,
    detect_format,
    leave_one_out,
    load_dataset,
    pad_sequences,
)
from chord.data.interactions import InteractionData


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache directory."""
    monkeypatch.setenv("CHORD_CACHE_DIR", str(tmp_path / "cache"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a small file and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


# user 10: items 7 (t=3), 5 (t=1), 9 (t=2), 8 (t=2)  -> time order 5, 9, 8, 7 (stable on ties)
# user 2: items 5, 6, 7 at t=1, 2, 3; user 3 has only two interactions (dropped at min 3).
ROWS = [
    ("10", "7", 3),
    ("10", "5", 1),
    ("2", "5", 1),
    ("10", "9", 2),
    ("2", "6", 2),
    ("10", "8", 2),
    ("3", "9", 1),
    ("2", "7", 3),
    ("3", "5", 2),
]


def expected(data: InteractionData) -> None:
    """Assert the outcome of loading ROWS with min_interactions=3."""
    assert data.n_users == 2 and data.n_items == 5
    assert list(data.user_labels) == ["2", "10"]  # numeric order of raw ids
    assert list(data.item_labels) == ["5", "6", "7", "8", "9"]
    # items re-indexed 5->1, 6->2, 7->3, 8->4, 9->5
    assert data.sequences[0].tolist() == [1, 2, 3]
    assert data.sequences[1].tolist() == [1, 5, 4, 3]


def test_grouplens_u_data(tmp_path: Path) -> None:
    text = "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ROWS)
    path = write(tmp_path, "u.data", text)
    assert detect_format(path) == "grouplens"
    expected(load_dataset(str(path), min_interactions=3))
    expected(load_dataset(str(path), fmt="grouplens", min_interactions=3, cache=False))


def test_movielens_ratings_dat(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.dat", "".join(f"{u}::{i}::4::{t}\n" for u, i, t in ROWS))
    assert detect_format(path) == "movielens-dat"
    expected(load_dataset(str(path), min_interactions=3))


def test_recbole_inter(tmp_path: Path) -> None:
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    path = write(tmp_path, "mine.inter", head + "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ROWS))
    assert detect_format(path) == "inter"
    data = load_dataset(str(path), min_interactions=3)
    expected(data)
    assert data.name == "mine"


def test_inter_columns_in_any_order_and_without_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "x.txt", "item_id:token\tuser_id:token\nb\tu\na\tu\nc\tu\n")
    assert detect_format(path) == "inter"
    data = load_dataset(str(path), min_interactions=1)
    assert list(data.item_labels) == ["a", "b", "c"]
    assert data.sequences[0].tolist() == [2, 1, 3]  # line order is the time order


def test_csv_whitespace_comma_header_and_line_order(tmp_path: Path) -> None:
    spaced = write(tmp_path, "s.txt", "".join(f"{u}  {i} {t}\n" for u, i, t in ROWS))
    assert detect_format(spaced) == "csv"
    expected(load_dataset(str(spaced), min_interactions=3))
    comma = write(
        tmp_path, "c.csv", "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in ROWS)
    )
    expected(load_dataset(str(comma), fmt="csv", min_interactions=3))
    no_time = write(tmp_path, "n.csv", "a,x\na,z\nb,x\na,y\n\n")
    data = load_dataset(str(no_time), min_interactions=1)
    assert data.sequences[0].tolist() == [1, 3, 2]  # a: x, z, y in line order
    assert data.sequences[1].tolist() == [1]


def test_min_interactions_drops_short_users(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ROWS))
    assert load_dataset(str(path), min_interactions=2).n_users == 3
    assert load_dataset(str(path), min_interactions=4).n_users == 1
    with pytest.raises(Exception, match="no user has at least 9"):
        load_dataset(str(path), min_interactions=9)


@pytest.mark.parametrize(
    ("name", "fmt", "text", "line", "expect"),
    [
        ("u.data", "grouplens", "1\t2\t3\t4\n1\t2\t3\n", 2, "4 fields"),
        ("u.data", "grouplens", "1\t2\t3\tnoon\n", 1, "timestamp is 'noon', not a plain decimal"),
        ("ratings.dat", "movielens-dat", "1::2::3::4\n1::2::x::4\n", 2,
         "rating is 'x', not a plain decimal"),
        ("a.inter", "inter", "user_id:token\titem_id:token\n1\t2\t3\n", 2, "2 tab-separated"),
        ("b.inter", "inter", "user item\n1\t2\n", 1, "typed header"),
        ("c.inter", "inter", "user_id:token\tthing:token\n1\t2\n", 1, "'item_id:token'"),
        ("d.csv", "csv", "1,2,3\n1,2\n", 2, "3 fields"),
        ("e.csv", "csv", "1,2,3,4,5\n", 1, "2 or 3 fields"),
        ("f.csv", "csv", "1 2 later\n", 1, "timestamp is 'later', not a plain decimal"),
    ],
)
def test_malformed_files_name_file_line_and_expectation(
    tmp_path: Path, name: str, fmt: str, text: str, line: int, expect: str
) -> None:
    path = write(tmp_path, name, text)
    for f in (fmt, "auto"):
        with pytest.raises(DataFormatError) as info:
            load_dataset(str(path), fmt=f, min_interactions=1)
        message = str(info.value)
        assert f"{path}:{line}:" in message
        assert expect in message


def test_empty_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no interactions"):
        load_dataset(str(write(tmp_path, "e.csv", "\n\n")), min_interactions=1)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(DataFormatError, match="UTF-8"):
        load_dataset(str(binary), min_interactions=1)


def test_unknown_dataset_and_format() -> None:
    with pytest.raises(UnknownDatasetError) as info:
        load_dataset("ml-20m")
    assert "ml-100k" in str(info.value) and "ml-1m" in str(info.value)
    with pytest.raises(Exception, match="auto, grouplens"):
        load_dataset("ml-100k", fmt="xlsx")


def test_cache_hit_invalidation_and_atomic_write(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in ROWS))
    first = load_dataset(str(path), min_interactions=3)
    second = load_dataset(str(path), min_interactions=3)
    assert not first.cached and second.cached
    expected(second)
    assert not load_dataset(str(path), min_interactions=2).cached  # options are in the key
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]
    with path.open("a") as fh:  # new size and mtime: parsed again
        fh.write("2\t8\t4\t9\n")
    os.utime(path, ns=(1, 1))
    changed = load_dataset(str(path), min_interactions=3)
    assert not changed.cached and changed.sequences[0].tolist() == [1, 2, 3, 4]
    corrupt = next(cache.glob("u-*.npz"))
    corrupt.write_bytes(b"not an npz")  # an unreadable entry is rebuilt, not trusted
    assert load_dataset(str(path), min_interactions=3, cache_dir=cache).n_users == 2


def test_packaged_ml100k() -> None:
    data = load_dataset("ml-100k")
    assert (data.name, data.n_users, data.n_items, data.n_interactions) == (
        "ml-100k",
        943,
        1682,
        100000,
    )
    assert all(len(s) >= 20 for s in data.sequences)
    assert max(int(s.max()) for s in data.sequences) == 1682


def test_packaged_ml1m_parsed_once() -> None:
    first = load_dataset("ml-1m")
    second = load_dataset("ml-1m")
    assert not first.cached and second.cached
    assert (second.n_users, second.n_items, second.n_interactions) == (6040, 3706, 1000209)
    assert second.user_labels[0].startswith("1m_")
    assert "Toy Story (1995)" in set(second.item_labels.tolist())
    assert all(np.array_equal(a, b) for a, b in zip(first.sequences, second.sequences, strict=True))


def test_leave_one_out() -> None:
    data = InteractionData(
        name="t",
        sequences=[np.array([3, 1, 4, 1, 5]), np.array([2, 7, 1])],
        n_items=7,
        user_labels=np.array(["a", "b"]),
        item_labels=np.array(list("1234567")),
    )
    split = leave_one_out(data)
    assert [s.tolist() for s in split.train] == [[3, 1, 4], [2]]
    assert [h.tolist() for h in split.valid.histories] == [[3, 1, 4], [2]]
    assert split.valid.targets.tolist() == [1, 7]
    assert [h.tolist() for h in split.test.histories] == [[3, 1, 4, 1], [2, 7]]
    assert split.test.targets.tolist() == [5, 1]
    assert [s.tolist() for s in split.seen] == [[1, 3, 4, 5], [1, 2, 7]]
    assert split.stage("test") is split.test
    with pytest.raises(SplitError):
        split.stage("train")
    short = InteractionData("s", [np.array([1, 2])], 2, np.array(["a"]), np.array(["1", "2"]))
    with pytest.raises(SplitError, match="fewer than 3"):
        leave_one_out(short)


def test_pad_sequences() -> None:
    out = pad_sequences([np.array([1, 2, 3, 4]), np.array([5]), np.array([], np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5], [0, 0, 0]]


BOM = "\ufeff"
# One text per format and reader (each with three interactions of user 1).
ONE_USER = {
    ("u.data", "grouplens"): "1\t10\t4\t100\n1\t11\t4\t101\n1\t12\t4\t102\n",
    ("ratings.dat", "movielens-dat"): "1::10::4::100\n1::11::4::101\n1::12::4::102\n",
    ("x.inter", "inter"): "user_id:token\titem_id:token\ttimestamp:float\n"
    "1\t10\t100\n1\t11\t101\n1\t12\t102\n",
    ("x.csv", "csv"): "1,10,100\n1,11,101\n1,12,102\n",
    ("y.csv", "csv"): "user,item\n1,10\n1,11\n1,12\n",
    ("z.txt", "csv"): "1 10\n1 11\n1 12\n",
}


@pytest.mark.parametrize(("name", "fmt"), list(ONE_USER))
def test_bom_reads_like_no_bom_in_every_reader(tmp_path: Path, name: str, fmt: str) -> None:
    """A UTF-8 byte-order mark does not stick to the first user id (GroupLens case: 1 user)."""
    text = ONE_USER[(name, fmt)]
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    plain = write(tmp_path / "plain", name, text)
    bommed = tmp_path / "bom" / name
    bommed.write_bytes((BOM + text).encode("utf-8"))
    assert detect_format(bommed) == detect_format(plain)
    for f in (fmt, "auto"):
        a = load_dataset(str(plain), fmt=f, min_interactions=3, cache=False)
        b = load_dataset(str(bommed), fmt=f, min_interactions=3, cache=False)
        assert list(b.user_labels) == list(a.user_labels) == ["1"]
        assert [s.tolist() for s in b.sequences] == [[1, 2, 3]]


@pytest.mark.parametrize(("name", "fmt"), [k for k in ONE_USER if k[1] != "inter"])
def test_files_joined_with_cat_keep_no_bom(tmp_path: Path, name: str, fmt: str) -> None:
    """Two BOM'd files joined with `cat`: the second part's mark starts a line mid-file and must
    not stick to that line's user id either (one user, six interactions)."""
    text = ONE_USER[(name, fmt)]
    header = text.splitlines(keepends=True)[0] if name == "y.csv" else ""
    second = text.replace("1,1", "1,2").replace("\t1", "\t2").replace("::1", "::2")
    second = second.replace(" 1", " 2")[len(header):]
    path = tmp_path / name
    path.write_bytes((BOM + text).encode("utf-8") + (BOM + second).encode("utf-8"))
    data = load_dataset(str(path), fmt=fmt, min_interactions=3, cache=False)
    assert list(data.user_labels) == ["1"]
    assert data.n_interactions == 6


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_are_named_as_such(tmp_path: Path, encoding: str) -> None:
    """A UTF-16/32 file (its BOM says so) gets advice to convert from that encoding."""
    path = tmp_path / "u.data"
    text = ONE_USER[("u.data", "grouplens")]
    data = text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode(encoding)
    path.write_bytes(data)
    name = "UTF-32" if encoding == "utf-32" else "UTF-16"
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path), cache=False)
    assert str(info.value) == (
        f"{path}: the file is {name} text (it starts with a {name} byte-order mark); "
        f"re-encode it as UTF-8 (e.g. iconv -f {name} -t UTF-8)"
    )


@pytest.mark.parametrize(("name", "fmt"), list(ONE_USER))
def test_control_characters_in_ids_are_refused_by_line(
    tmp_path: Path, name: str, fmt: str
) -> None:
    """A NUL inside an item id used to load as one more item ('\\x005')."""
    lines = ONE_USER[(name, fmt)].splitlines(keepends=True)
    lines[-1] = lines[-1].replace("12", "1\x002", 1)
    path = write(tmp_path, name, "".join(lines))
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path), fmt=fmt, min_interactions=1, cache=False)
    assert str(info.value) == (
        f"{path}:{len(lines)}: id '1\\x002' holds control character U+0000; "
        "send ids of printable characters"
    )


def test_bom_grouplens_default_minimum_keeps_user(tmp_path: Path) -> None:
    """The issue's case: the BOM file loads as one user with 3 items under min_interactions=3."""
    path = tmp_path / "u.data"
    path.write_bytes((BOM + ONE_USER[("u.data", "grouplens")]).encode("utf-8"))
    data = load_dataset(str(path), min_interactions=3, cache=False)
    assert data.n_users == 1 and data.n_interactions == 3


def test_non_utf8_byte_names_the_line_not_a_buffer_position(tmp_path: Path) -> None:
    """A latin-1 byte on line 5001 is reported at line 5001 (not a decode-buffer offset)."""
    lines = [f"{u % 50}\t{u}\t4\t{u}" for u in range(5000)] + ["7\tcaf\xe9\t4\t9"]
    path = tmp_path / "u.data"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path), cache=False)
    message = str(info.value)
    assert message.startswith(f"{path}:5001: byte 0xe9 at column 6 ")
    assert "UTF-8" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "fmt", "text", "line", "field"),
    [
        ("u.data", "grouplens", "1\t2\t4\t5\n1\t3\tnan\t6\n", 2, "rating"),
        ("u.data", "grouplens", "1\t2\t4\tinf\n", 1, "timestamp"),
        ("ratings.dat", "movielens-dat", "1::2::4::5\n1::3::4::-inf\n", 2, "timestamp"),
        ("a.inter", "inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tNaN\n", 2,
         "timestamp"),
        ("b.inter", "inter", "user_id:token\titem_id:token\trating:float\n1\t2\tx\n", 2, "rating"),
        ("c.inter", "inter", "user_id:token\titem_id:token\tv:float_seq\n1\t2\t1 inf\n", 2, "v"),
        ("d.csv", "csv", "1,2,3\n1,3,1e999\n", 2, "timestamp"),
    ],
)
def test_numeric_fields_must_be_finite_numbers(
    tmp_path: Path, name: str, fmt: str, text: str, line: int, field: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(DataFormatError) as info:
        load_dataset(str(path), fmt=fmt, min_interactions=1, cache=False)
    assert str(info.value).startswith(f"{path}:{line}: {field} is "), str(info.value)


def test_ids_past_int64_sort_numerically(tmp_path: Path) -> None:
    """Ids are opaque tokens: an integer id past int64 (a real export's 23-digit item id) is
    re-indexed in numeric order, where it crashed with OverflowError before."""
    huge = "99999999999999999999999"
    rows = [("7", "5", 1), ("7", huge, 2), ("7", "10", 3), ("7", "9", 4)]
    path = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    data = load_dataset(str(path), min_interactions=1, cache=False)
    assert list(data.item_labels) == ["5", "9", "10", huge]
    assert data.sequences[0].tolist() == [1, 4, 3, 2]
    mixed = write(tmp_path, "mixed.data", f"1\t{huge}\t4\t1\n1\tabc\t4\t2\n1\t2\t4\t3\n")
    assert list(load_dataset(str(mixed), min_interactions=1, cache=False).item_labels) == [
        "2", huge, "abc"]
