"""Duplicate ids: refused by default, in bounded memory (8 bytes an id: 80 MB at 10M rows).

Each id is kept as a 64-bit digest (an integer id as itself, a text id hashed) in sorted numpy runs that merge as
they grow, up to a cap (a log-structured set; each run searched with searchsorted). A digest match is
confirmed on the ids themselves before the run stops, so a hash collision never refuses a valid input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


def digests(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """uint64 per id: an integer id is its own digest (exact), any other id is hashed (pandas' siphash)."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_integer(ids.type):
        return ids.to_numpy().astype(np.int64).view(np.uint64)
    from pandas.util import hash_array

    values = np.array([repr(v) for v in ids.to_pylist()], dtype=object)  # repr: 1.0 and "1.0" differ
    return hash_array(values, categorize=False)


RUN_CAP = 1 << 20  # digests per run at which merging stops: a merge copies at most 16 MB, never the whole set


class DigestSet:
    """A set of uint64 digests as sorted runs; `add` merges runs of similar size up to RUN_CAP, so a lookup
    searches O(log n + n / RUN_CAP) runs and memory stays 8 bytes a digest plus one merge."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def contains(self, values: np.ndarray) -> np.ndarray:
        import numpy as np

        found = np.zeros(len(values), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            found |= run[at] == values
        return found

    def add(self, values: np.ndarray) -> None:
        import numpy as np

        self.runs.append(np.sort(values))
        while len(self.runs) > 1 and len(self.runs[-2]) < RUN_CAP and len(self.runs[-1]) * 2 >= len(self.runs[-2]):
            last = self.runs.pop()
            merged = np.concatenate([self.runs.pop(), last])
            del last  # at most the set twice over while merging
            merged.sort()  # in place
            self.runs.append(merged)

    def nbytes(self) -> int:
        return sum(run.nbytes for run in self.runs)


class DuplicateIds:
    """Every id written so far (its digest); `check` raises on the first id written twice, naming both rows."""

    def __init__(self, column: str, folder: Path, source: str):
        self.column, self.folder, self.source = column, folder, source
        self.seen = DigestSet()

    def load(self, parts: list[Path]) -> None:
        """The ids of shards kept from an earlier run (a resume checks new rows against them too)."""
        import pyarrow.parquet as pq

        for part in parts:
            self.seen.add(digests(pq.read_table(part, columns=["id"])["id"]))

    def check(self, ids: pa.ChunkedArray, rows: list[int]) -> None:
        """`ids` of one shard (as written) and their row numbers; add them, or raise on the first repeat."""
        import numpy as np

        values = digests(ids)
        earlier = self.seen.contains(values)
        order = np.argsort(values, kind="stable")
        repeat = np.zeros(len(values), dtype=bool)
        repeat[order[1:][values[order[1:]] == values[order[:-1]]]] = True  # an equal digest earlier in this shard
        for i in np.flatnonzero(earlier | repeat):  # in row order; confirmed on the ids (a collision is no repeat)
            first = self._first_row(ids, rows, int(i))
            if first is not None:
                raise ValueError(f"input {self.source}: the id {ids[int(i)].as_py()!r} (column {self.column!r}, "
                                 f"id_column) appears twice, at rows {first} and {rows[int(i)]} (0-based); a join on "
                                 "the output would double its rows. Make the ids unique, or set "
                                 "keep_duplicate_ids=True to write them as they are.")
        self.seen.add(values)

    def _first_row(self, ids: pa.ChunkedArray, rows: list[int], i: int) -> int | str | None:
        """The row number of the earlier row with the same id as row i of this shard, None if there is none."""
        import pyarrow.parquet as pq

        value = ids[i].as_py()
        for j in range(i):
            if ids[j].as_py() == value:
                return rows[j]
        for part in sorted(self.folder.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["id"])
            matches = [k for k, v in enumerate(table["id"].to_pylist()) if v == value]
            if matches:
                meta = _shard_meta(part)
                return _row_of(part, meta, matches[0])
        return None


def _shard_meta(part: Path) -> dict:
    import json

    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(part).metadata[b"st_tp.shard"])


def _row_of(part: Path, meta: dict, position: int) -> int | str:
    """The input row number of the position-th written row of a shard; when the shard left bad rows out (they
    are not recorded one by one), the written row's place in its part file instead."""
    if not meta.get("bad_rows"):
        return meta["first_row"] + position
    return f"{part.name} row {position}"
