"""GGUF files as base models: the models Python packages carry (`packaged:<name>`), and the conversion cache.

transformers reads a GGUF's tokenizer, config and weights, but refuses `save_pretrained` on the result ("quantized
with gguf and is not serializable"), and dequantizing takes seconds to minutes on every load. So a GGUF is turned once
into a plain Hugging Face folder under the st_tp cache, and everything downstream (pruning, saving, the sweep) sees an
ordinary folder; a saved st_tp model never needs the GGUF.

Memory and disk stay bounded by the weights in 16 bits: the conversion stores bfloat16 (or float16/float32 when a
build runs in exactly that dtype; `conversion_dtype`), casting each tensor as soon as it is dequantized, so no float32
copy of the whole model is ever held. Q4-Q8 blocks hold 4-8-bit integers times a float16 scale: bfloat16 keeps their
range whatever the model (float16 overflows past 65504) and is what a CPU with native bfloat16 runs anyway.

A conversion folder is keyed by the file's content (sha256) and its dtype, so a second venv or a reinstall of the same
package reuses it. A file's sha256 is remembered on disk by (path, size, mtime, inode), so a multi-GB file is hashed
once, not by every command.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CACHE_ENV = "ST_TP_CACHE"
GGUF_CACHE = "gguf"  # conversions; with PACKAGED_CACHE, the only folders under the cache root that st_tp writes
PACKAGED_CACHE = "packaged"  # GGUF files assembled from the parts that several packages carry
DIGESTS_FILE = "digests.json"  # {path: {size, mtime_ns, inode, sha256}} under the gguf/ folder
STAGING_PREFIX = ".converting-"
SOURCE_FILE = "st_tp_source.json"  # written last into a conversion: a folder without it is never trusted
STALE_STAGING_S = 3600  # a conversion takes minutes; a staging folder this old belongs to a killed process


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$ST_TP_CACHE, else $XDG_CACHE_HOME/st_tp, else ~/.cache/st_tp."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "st_tp"


def conversion_dtype(dtype: str, device: str | None = None) -> str:
    """The dtype a GGUF conversion is stored in for a build whose dtype setting is `dtype`: the 16-bit dtype the build
    runs in, float32 only when asked for by name, else bfloat16 (module docstring)."""
    if dtype in ("float32", "float16", "bfloat16"):
        return dtype
    from st_tp.runtime.config import resolve_dtype  # 'auto': float16 on CUDA, bfloat16 or float32 on a CPU

    runs_in = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    return runs_in if runs_in in ("float16", "bfloat16") else "bfloat16"


def convert_gguf(folder: str, gguf_file: str, *, dtype: str = "bfloat16", cache_dir: str | Path | None = None) -> Path:
    """The plain HF folder (config, safetensors in `dtype`, tokenizer) of `folder/gguf_file`, converted on first use."""
    path = Path(folder).expanduser() / gguf_file
    if not path.is_file():
        present = sorted(p.name for p in Path(folder).expanduser().glob("*.gguf")) if Path(folder).expanduser().is_dir() else []
        raise ValueError(
            f"No GGUF file {gguf_file!r} in {folder}"
            + (f"; GGUF files there: {', '.join(present)}." if present else " (no .gguf file there).")
        )
    digest = gguf_digest(path, cache_dir)
    suffix = "" if dtype == "float32" else f"-{dtype}"  # float32 folders keep the name earlier st_tp gave them
    target = cache_root(cache_dir) / GGUF_CACHE / f"{path.stem}-{digest[:16]}{suffix}"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    try:
        _dequantize_to_folder(path, staging, dtype)
        source = {"file": path.name, "size": path.stat().st_size, "sha256": digest, "dtype": dtype,
                  "converted": time.strftime("%Y-%m-%d %H:%M:%S")}
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2))  # last: marks the folder complete
        if target.exists() and not _complete(target):  # not ours (we only ever rename complete folders into place)
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)  # atomic: a half-written folder is never found under the final name
    except OSError:
        if not _complete(target):  # another process may have finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_DIGESTS: dict[tuple, str] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino


def _digests_path(cache_dir: str | Path | None) -> Path:
    return cache_root(cache_dir) / GGUF_CACHE / DIGESTS_FILE


def _stored_digests(cache_dir: str | Path | None) -> dict:
    try:
        stored = json.loads(_digests_path(cache_dir).read_text())
        return stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: hash again
        return {}


def remember_digest(path: Path, digest: str, cache_dir: str | Path | None) -> None:
    name, size, mtime_ns, inode = key = _file_key(path)
    _DIGESTS[key] = digest
    stored = _stored_digests(cache_dir)
    stored[name] = {"size": size, "mtime_ns": mtime_ns, "inode": inode, "sha256": digest}
    target = _digests_path(cache_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=target.parent, prefix=f".{DIGESTS_FILE}.", delete=False) as out:
            json.dump(stored, out, indent=1)
        os.replace(out.name, target)  # atomic: concurrent writers lose an entry at worst, never the file
    except OSError:  # a read-only cache still converts; it only hashes again next time
        pass


def gguf_digest(path: Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of the file's content: the cache key, so copies of one GGUF in two venvs share one conversion. Hashing
    takes about 1.5 s a GB, so it is remembered on disk by (path, size, mtime, inode): a changed or replaced file
    has another key and is hashed again."""
    key = _file_key(path)
    if key in _DIGESTS:
        return _DIGESTS[key]
    name, size, mtime_ns, inode = key
    entry = _stored_digests(cache_dir).get(name)
    if entry and (entry.get("size"), entry.get("mtime_ns"), entry.get("inode")) == (size, mtime_ns, inode):
        _DIGESTS[key] = entry["sha256"]
        return entry["sha256"]
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            sha.update(chunk)
    remember_digest(path, sha.hexdigest(), cache_dir)
    return _DIGESTS[key]


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by killed conversions (never trusted, but hundreds of MB each)."""
    for staging in folder.glob(f"{STAGING_PREFIX}*"):
        if _stale(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _stale(staging: Path) -> bool:
    try:
        return time.time() - staging.stat().st_mtime > STALE_STAGING_S
    except OSError:  # removed meanwhile
        return False


@dataclass(frozen=True)
class CacheEntry:
    """One folder or file under the st_tp cache, for `st-tp cache`."""

    path: Path
    size: int  # bytes
    source: str  # the GGUF it was converted from, or what the entry is


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """The converted GGUF folders (and unfinished or outdated ones) and the assembled GGUF files, with their sizes."""
    root = cache_root(cache_dir)
    entries = []
    conversions = root / GGUF_CACHE
    for folder in sorted(conversions.iterdir()) if conversions.is_dir() else []:
        if not folder.is_dir():
            continue
        if folder.name.startswith(STAGING_PREFIX):
            source = "killed conversion, never used" if _stale(folder) else "conversion in progress (or killed), never used"
        elif _complete(folder):
            info = json.loads((folder / SOURCE_FILE).read_text())
            source = f"from {info.get('file')} in {info.get('dtype', 'float32')} (converted {info.get('converted')})"
        else:
            source = "from an older st_tp (keyed by path), never used again"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        entries.append(CacheEntry(folder, size, source))
    assembled = root / PACKAGED_CACHE
    for file in sorted(assembled.glob("*.gguf")) if assembled.is_dir() else []:
        entries.append(CacheEntry(file, file.stat().st_size, "assembled from its packages' parts"))
    return entries


def clear_cache(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Remove every conversion and assembled file (a later build makes them again) and return what was removed. Only
    the cache's own gguf/ and packaged/ folders are touched, so a $ST_TP_CACHE that points somewhere shared loses
    nothing else; a conversion running right now keeps its staging folder."""
    removed = []
    for entry in cache_entries(cache_dir):
        if entry.path.name.startswith(STAGING_PREFIX) and not _stale(entry.path):
            continue
        if entry.path.is_dir():
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            entry.path.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _dequantize_to_folder(path: Path, out: Path, dtype: str) -> None:
    """Config, tokenizer and weights of a GGUF as a plain HF folder, weights in `dtype`, each tensor written to disk
    as it is dequantized (and a large one in pieces): memory holds one piece at a time, whatever the model's size."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("Reading a GGUF file needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except ValueError as error:  # e.g. "GGUF model with architecture X is not supported yet."
        raise ValueError(
            f"transformers cannot read {path.name}: {error} Use a GGUF of an architecture that transformers reads "
            "(Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, ...) or the model's Hugging Face folder."
        ) from None
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    if hasattr(config, "quantization_config"):  # the GGUF marker; without it the folder is an ordinary one
        del config.quantization_config
    config.dtype = torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):  # names and shapes only: no memory
        model = AutoModel.from_config(config, dtype=torch_dtype)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    with SafetensorsWriter(out / "model.safetensors", expected, torch_dtype) as writer:
        for key, row, piece in gguf_tensors(path, model, torch_dtype):
            if key in expected:
                writer.write(key, row, piece)
    if missing := writer.missing():
        raise ValueError(f"{path.name} holds no tensor for {len(missing)} weights of its architecture (e.g. "
                         f"{missing[0]}); it cannot be converted.")
    config.save_pretrained(out)


class SafetensorsWriter:
    """A safetensors file written tensor by tensor, in pieces of rows, in any order: the header (names, shapes,
    offsets) is known up front from the model's shapes, so each piece goes straight to its place in the file."""

    DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
        self.shapes, self.itemsize = shapes, dtype.itemsize
        header, offset, self.offsets = {}, 0, {}
        for key in sorted(shapes):
            size = math.prod(shapes[key]) * self.itemsize
            header[key] = {"dtype": self.DTYPES[str(dtype).removeprefix("torch.")], "shape": list(shapes[key]),
                           "data_offsets": [offset, offset + size]}
            self.offsets[key] = offset
            offset += size
        header["__metadata__"] = {"format": "pt"}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self.data_start = 8 + len(encoded)
        self.file = open(path, "wb")  # noqa: SIM115 (closed in __exit__)
        self.file.write(len(encoded).to_bytes(8, "little") + encoded)
        self.file.truncate(self.data_start + offset)
        self.rows_written = {key: 0 for key in shapes}

    def write(self, key: str, row: int, piece: torch.Tensor) -> None:
        """Rows row.. of tensor `key` (a 1-D tensor is one piece at row 0)."""
        shape = self.shapes[key]
        rows = shape[0] if shape else 1
        if tuple(piece.shape[1:]) != tuple(shape[1:]) or row + (len(piece) if shape else 1) > rows:
            raise ValueError(f"GGUF tensor for {key} has shape {tuple(piece.shape)} at row {row}; expected {shape}.")
        import torch

        row_bytes = math.prod(shape[1:]) * self.itemsize
        self.file.seek(self.data_start + self.offsets[key] + row * row_bytes)
        self.file.write(memoryview(piece.contiguous().view(torch.uint8).numpy()))
        self.rows_written[key] += len(piece) if shape else 1

    def missing(self) -> list[str]:
        return sorted(key for key, rows in self.rows_written.items() if rows < (self.shapes[key][0] if self.shapes[key] else 1))

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


PIECE_BYTES = 64 << 20  # float32 bytes dequantized at a time from one large tensor


def gguf_tensors(path: Path, model: torch.nn.Module, dtype: torch.dtype) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(the model's state-dict name, first row, rows in `dtype`) for each tensor of a GGUF, cast as soon as they are
    dequantized; a tensor over PIECE_BYTES comes in pieces of rows, unless the architecture's tensor processor changes
    it (then it needs the whole tensor, e.g. llama.cpp's q/k permutation undone).

    It is the tensor loop of transformers' GGUF reader (`load_gguf_checkpoint(return_tensors=True)`, which holds the
    whole model in memory at once): the same name map and tensor processors. tests/test_gguf.py guards that it equals
    `from_pretrained(gguf_file=...)` tensor for tensor."""
    import mmap

    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
        read_field,
    )

    def as_torch(array) -> torch.Tensor:  # a float tensor stored unquantized is a view of the file's pages: copy it
        array = array if array.flags.writeable and array.flags.c_contiguous else np.array(array)
        return torch.from_numpy(array).to(dtype)

    parsed = {"config": load_gguf_checkpoint(str(path), return_tensors=False)["config"], "tensors": {}}  # MoE experts
    reader = GGUFReader(path)
    processor = TENSOR_PROCESSORS.get(read_field(reader, "general.architecture")[0], TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(model, processor)
    file_map = getattr(reader.data, "_mmap", None)  # numpy's memmap keeps its mmap here
    for tensor in reader.tensors:
        data = tensor.data  # rows of quantized blocks (or of floats), still in the file
        step = max(1, len(data) * PIECE_BYTES // (4 * int(tensor.n_elements))) if data.ndim > 1 else len(data)
        if step < len(data) and _processor_keeps(processor, tensor, names, parsed["config"]):  # in pieces
            for row in range(0, len(data), step):
                yield names.get(tensor.name), row, as_torch(dequantize(data[row : row + step], tensor.tensor_type))
        else:
            result = processor.process(weights=dequantize(data, tensor.tensor_type), name=tensor.name,
                                        tensor_key_mapping=names, parsed_parameters=parsed)
            yield names.get(result.name), 0, as_torch(result.weights)
        if file_map is not None:  # the pages read would count as resident memory until the file is closed
            file_map.madvise(mmap.MADV_DONTNEED)  # a read-only file mapping: dropped pages are read again if needed
    for key, tensor in parsed["tensors"].items():
        yield key, 0, tensor.to(dtype)


def _processor_keeps(processor, tensor, names: dict, config: dict) -> bool:
    """Whether the architecture's tensor processor leaves this tensor as it is (name and values), so it can be read in
    pieces. Asked with a float32 array of the tensor's full shape that is never written, so its pages are never
    allocated, and with throwaway parsed parameters (MoE processors store expert tensors there)."""
    import numpy as np

    probe = np.zeros(tuple(int(size) for size in reversed(tensor.shape)), dtype=np.float32)
    result = processor.process(weights=probe, name=tensor.name, tensor_key_mapping=names,
                               parsed_parameters={"config": config, "tensors": {}})
    return result.weights is probe and result.name == tensor.name
