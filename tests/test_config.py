"""TPConfig validation and the YAML presets."""

import pytest

import st_tp
from st_tp.config import TPConfig, load_preset


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
