"""TPConfig validation and the YAML presets."""

import pytest
import torch

import st_tp
from st_tp.runtime.config import TPConfig, load_preset, paper_setting, resolve_dtype


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tp_start=3, tp_end=3), "tp_end .* must be greater than tp_start"),
        (dict(output_layer=9), "output_layer=9 is outside the model, which has 4 decoder layers. Allowed: -5..4"),
        (dict(template="no placeholder <PST>"), "has no '\\{text\\}' placeholder"),
        (dict(template='This sentence : "{text}" means'), "tp=True needs a '<PST>' marker"),
        (dict(prompt_method="eol"), "Unknown prompt_method 'eol'. Allowed:"),
        (dict(pst_init="gaussian"), "Unknown pst_init"),
        (dict(dtype="fp8"), "Unknown dtype"),
        (dict(tp_end="7"), "tp_end must be int"),
        (dict(tp_end=9), "tp_end 9 exceeds the model's 4 decoder layers.*Use tp_end <= 4"),
        (dict(temperature=1.0), "Unknown key\\(s\\) \\['temperature'\\]"),
    ],
)
def test_configuration_errors(tiny_llama, overrides, message):
    with pytest.raises(ValueError, match=message):
        st_tp.build(tiny_llama, device="cpu", **overrides)


def test_presets_load(tmp_path):
    from tests.conftest import ROOT

    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert len(names) >= 15
    base, config = load_preset(ROOT / "configs" / "llama2-7b-prompteol-tp.yaml")
    assert base == "meta-llama/Llama-2-7b-hf"
    assert (config.prompt_method, config.tp_start, config.tp_end, config.output_layer) == ("prompteol", 1, 7, 27)
    for name in names:
        load_preset(ROOT / "configs" / name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tp_end: seven\n")
    with pytest.raises(ValueError, match="tp_end must be int"):
        load_preset(bad)
    assert TPConfig().to_dict()["pst_init"] == "zeros"


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_exactly_where_the_cpu_runs_it_natively(tiny_llama, monkeypatch, native):
    """dtype 'auto' reads torch's own CPU checks (AVX512-BF16, AMX): bfloat16 where either says yes, else float32;
    float32 asked for stays float32, and CUDA keeps float16."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    assert st_tp.build(tiny_llama, tp_end=3, device="cpu")[0].model_dtype == expected
    assert st_tp.build(tiny_llama, tp_end=3, device="cpu", dtype="float32")[0].model_dtype == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16 and resolve_dtype("float32", "cpu") == torch.float32


def test_paper_setting_scales_to_the_depth():
    assert paper_setting(32) == dict(prompt_method="prompteol", tp=True, tp_start=1, tp_end=7, output_layer=27)
    assert (paper_setting(30)["tp_end"], paper_setting(30)["output_layer"]) == (7, 25)  # SmolLM2-135M
    assert (paper_setting(16)["tp_end"], paper_setting(16)["output_layer"]) == (4, 14)
    TPConfig(**paper_setting(18))  # a valid configuration at any depth
