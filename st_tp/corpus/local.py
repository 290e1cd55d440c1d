"""The one-process engine: read the input here, embed each shard's texts here, in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .inputs import CorpusInput
from .options import CorpusOptions
from .readers import BAD, iter_input
from .rows import bad_reasons
from .store import Shard, ShardAssembler


class LocalEngine:
    """A source of embedded shards: each shard's good texts embedded at once (sorted by length over the shard,
    as `model.encode` sorts a list), an `embedding` and a `_bad` column added."""

    name = "local"

    def __init__(self, model: str, options: CorpusOptions):
        self.model, self.options = model, options
        self.embedder = None  # loaded only when there is work: a finished run re-run does nothing

    def shards(self, source: CorpusInput, columns: list[str], assembler: ShardAssembler, first_file: int,
               skip_rows: int, progress: Callable[[int], None]) -> Iterator[Shard]:
        import pyarrow as pa

        from .embedder import Embedder

        options = self.options
        for shard in _cut(assembler, iter_input(source, columns, first_file, skip_rows), len(source.files)):
            reasons = bad_reasons(shard.table, columns[0], options.id_column)
            if self.embedder is None:
                self.embedder = Embedder(self.model, options.device, options.batch_size, options.normalize,
                                         options.output_dtype)
            stops = options.on_bad_row == "error" and any(reasons)  # the loop stops at this shard: embed nothing
            good = [r is None and not stops for r in reasons]
            embedding = self.embedder.embed_rows(shard.table[columns[0]], good, progress)
            progress(good.count(False))
            table = shard.table.drop_columns([c for c in (BAD,) if c in shard.table.column_names])
            table = table.append_column("embedding", embedding)
            shard.table = table.append_column(BAD, pa.array(reasons, pa.string()))
            yield shard

    def close(self) -> None:
        self.embedder = None


def _cut(assembler: ShardAssembler, tables, total_files: int) -> Iterator[Shard]:
    for file_index, table in tables:
        yield from assembler.add(file_index, table)
    yield from assembler.finish(total_files)
