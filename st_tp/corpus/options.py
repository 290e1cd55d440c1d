"""What `embed_corpus` does with a corpus: the settings, checked once, as one dataclass.

Errors here name the Python setting (`shard_size`); the CLI maps settings to its flags when it prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OUTPUT_DTYPES = ("float32", "float16")
BAD_ROW_POLICIES = ("error", "skip")
ENGINES = ("local", "ray")
RESERVED = ("id", "embedding")  # the output's own columns


@dataclass
class CorpusOptions:
    """What `embed_corpus` does with a corpus; every field is also an `st-tp encode` option of the same name."""

    text_column: str = "text"
    id_column: str | None = None  # None: the row number (0-based, over all input files in order)
    keep_columns: tuple[str, ...] = ()
    batch_size: int = 32
    shard_size: int = 10_000
    device: str | None = None
    normalize: bool = False
    output_dtype: str = "float32"
    on_bad_row: str = "error"
    keep_duplicate_ids: bool = False  # False: a repeated id_column value stops the run (a join would double rows)
    progress: bool = True
    engine: str = "local"  # "local" (this process) or "ray"
    actors: int = 2
    cpus_per_actor: float = 1
    gpus_per_actor: float = 0
    address: str | None = None  # Ray cluster to join; None: $RAY_ADDRESS, else a local cluster
    verbose: bool = False  # Ray's own INFO logs and worker output (warnings only otherwise)
    on_shard: Callable[[dict], None] | None = field(default=None, repr=False, compare=False)  # called per written shard

    def __post_init__(self) -> None:
        self.keep_columns = tuple(self.keep_columns)
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output_dtype {self.output_dtype!r}: choose one of {', '.join(OUTPUT_DTYPES)}.")
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_row {self.on_bad_row!r}: choose 'error' (stop at the first bad row) or 'skip'.")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: choose 'local' (one process) or 'ray'.")
        for name in ("batch_size", "shard_size", "actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        actor_device = "cuda" if self.gpus_per_actor > 0 else "cpu"
        if self.engine == "ray" and self.device and self.device.split(":")[0] != actor_device:
            raise ValueError(f"device={self.device!r} with engine='ray': each actor's device follows gpus_per_actor "
                             f"(cuda when above 0, else cpu); leave out device={self.device!r} or set gpus_per_actor.")
        clash = set(self.keep_columns) & set(RESERVED)
        if clash:
            raise ValueError(f"keep_columns {sorted(clash)}: the output already has columns id and embedding; "
                             "rename the input column or leave it out.")

    def fingerprint(self) -> dict:
        """The settings that change what the output holds: a resume must use the same ones. on_bad_row and
        keep_duplicate_ids may change between runs, like the engine (a run refused for a bad row or a repeated
        id is resumed with the policy that lets it through)."""
        return {"text_column": self.text_column, "id_column": self.id_column, "keep_columns": list(self.keep_columns),
                "shard_size": self.shard_size, "normalize": self.normalize, "output_dtype": self.output_dtype}
