"""Shared fixtures. Tests never touch the network: hubs are forced offline before anything imports them."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Loading a saved folder runs its shipped code through transformers' dynamic modules, which copy it into
# HF_MODULES_CACHE: a temporary one keeps the suite out of ~/.cache/huggingface/modules.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="st_tp-tests-hf-modules-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
TINY_LLAMA = ROOT / "assets" / "tiny-llama-install-check"

torch.set_num_threads(2)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared reference folder lives beside the repository)")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return require(GOLDEN)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA)


@pytest.fixture(scope="session")
def tiny_llama() -> str:
    """The shipped 4-layer random Llama with the real Llama-2 tokenizer."""
    return str(TINY_LLAMA)


@pytest.fixture(scope="session")
def backbones(tmp_path_factory, tiny_llama) -> dict[str, str]:
    """A tiny random decoder of every supported family (tests/tiny_models.py), saved once per session."""
    from tests.tiny_models import ARCHS, make_tiny

    root = tmp_path_factory.mktemp("backbones")
    return {arch: make_tiny(arch, root / arch, tiny_llama) for arch in ARCHS}


def pytest_sessionstart(session) -> None:
    """The releases st_tp drives, printed before any test (even under -q), so a red CI run says at once which one
    changed (.ci/run installs the newest that pyproject allows)."""
    from importlib.metadata import version

    names = ("torch", "transformers", "sentence-transformers", "mteb", "tokenizers", "huggingface-hub")
    installed = []
    for name in names:
        try:
            installed.append(f"{name} {version(name)}")
        except Exception:  # not installed
            installed.append(f"{name} absent")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("st_tp test run with " + ", ".join(installed))
