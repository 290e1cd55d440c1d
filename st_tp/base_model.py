"""Where a base model comes from: a hub id, a local folder (checked before any hub call), a GGUF file, or a
GGUF that a Python package carries (`packaged:<name>`).

A GGUF file is converted once into a plain Hugging Face folder (st_tp.gguf), so everything downstream sees an
ordinary folder and a saved st_tp model never needs the GGUF.

GGUF models that Python packages carry (`st_tp.gguf.PACKAGED`) are named `packaged:<name>` anywhere a base model is
accepted. The conversion and its cache live in st_tp.gguf.
"""

from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from st_tp.gguf import conversion_dtype, convert_gguf
from st_tp.packaged import PACKAGED, PackagedModel  # noqa: F401 (PackagedModel: re-exported for callers)

PACKAGED_SCHEME = "packaged:"
HUB_PROBE_TIMEOUT_S = 3.0


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


def resolve_base_model(base_model: str, gguf_file: str | None = None, *, dtype: str = "auto",
                       device: str | None = None, cache_dir: str | Path | None = None) -> BaseModel:
    """A hub id / folder as is; `packaged:<name>` or a folder with `gguf_file` converted to a plain folder once, in
    the dtype a build with this `dtype` setting on `device` runs in (st_tp.gguf.conversion_dtype)."""
    if base_model.startswith(PACKAGED_SCHEME):
        name = base_model[len(PACKAGED_SCHEME) :]
        if name not in PACKAGED:
            raise ValueError(f"Unknown packaged model {name!r}. Available: {', '.join(PACKAGED)}.")
        if gguf_file is not None:
            raise ValueError(f"{base_model} names its own GGUF file; drop gguf_file={gguf_file!r}.")
        packaged = PACKAGED[name]
        folder, gguf_file = packaged.locate(cache_dir)
        path = str(convert_gguf(folder, gguf_file, dtype=conversion_dtype(dtype, device), cache_dir=cache_dir))
        return BaseModel(path, packaged.hub_id, packaged.licence, f"`{packaged.install}` ({base_model})")
    check_local_path(base_model)
    if gguf_file is None:
        return BaseModel(base_model, base_model)
    path = str(convert_gguf(base_model, gguf_file, dtype=conversion_dtype(dtype, device), cache_dir=cache_dir))
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
