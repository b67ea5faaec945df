"""Interaction datasets: packaged MovieLens, user files in four formats, leave-one-out splits.

Public names:
- `load_dataset(source, fmt="auto", min_interactions=5) -> InteractionData`: `.name`,
  `.n_users`, `.n_items`, `.sequences` (one int64 array of 1-based item ids per user, oldest
  first), `.user_labels` / `.item_labels` (raw ids), `.cached`.
- `leave_one_out(data) -> Split`: `.train` (list of seq[:-2]), `.valid` and `.test`
  (`EvalSet` with `.users`, `.histories`, `.targets`; valid history = seq[:-2], target = seq[-2];
  test history = seq[:-1], target = seq[-1]), `.seen` (every item each user touched).
- `pad_sequences(seqs, max_len) -> LongTensor` (left padding with 0).
- Errors: `DataFormatError` (bad file: names file, line and expectation), `UnknownDatasetError`,
  `SplitError`, all subclasses of `DataError`.
"""

from chord.data.errors import DataError, DataFormatError, SplitError, UnknownDatasetError
from chord.data.interactions import (
    BUILTIN,
    InteractionData,
    build_interactions,
    default_cache_dir,
    load_dataset,
)
from chord.data.readers import FORMATS, RawInteractions, detect_format, read_interactions
from chord.data.split import EvalSet, Split, leave_one_out, pad_sequences

__all__ = [
    "BUILTIN",
    "FORMATS",
    "DataError",
    "DataFormatError",
    "EvalSet",
    "InteractionData",
    "RawInteractions",
    "Split",
    "SplitError",
    "UnknownDatasetError",
    "build_interactions",
    "default_cache_dir",
    "detect_format",
    "leave_one_out",
    "load_dataset",
    "pad_sequences",
    "read_interactions",
]
