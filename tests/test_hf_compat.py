"""One test per transformers behaviour st_tp relies on beyond documented extension points (st_tp/runtime/hf_compat.py).

When a transformers release changes one of them, the failing test names it; the fix then lives in hf_compat.py."""

import warnings

import pytest
import torch
from transformers import AutoModel, DynamicCache

import st_tp
from st_tp.runtime import hf_compat
from st_tp.runtime.decoder import find_decoder
from tests.tiny_models import ARCHS


@pytest.fixture(scope="module")
def llama(backbones):
    return AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32).eval()


def _ids(n=6):
    return torch.arange(3, 3 + n).unsqueeze(0)


def test_decoder_takes_its_kv_cache_under_the_name_cache_kwarg_reports(llama):
    """transformers 5.24 renamed the decoder's and layers' `past_key_values` to `cache`; the name we pass must be the
    one the forward declares, so the cache is filled and no FutureWarning is raised."""
    assert hf_compat.cache_kwarg(llama) in ("cache", "past_key_values")
    assert hf_compat.cache_kwarg(llama.layers[0]) == hf_compat.cache_kwarg(llama)
    cache = DynamicCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llama(input_ids=_ids(), **hf_compat.cache_kwargs(llama, cache))
    assert cache.get_seq_length() == 6


def test_cache_update_on_an_empty_cache_returns_the_layers_keys_and_values(llama):
    """PrefixKV records keys/values through `Cache.update`, the call every attention layer makes."""
    with torch.inference_mode():
        layers = hf_compat.keys_and_values(llama, _ids())
        reference = DynamicCache()
        llama(input_ids=_ids(), **hf_compat.cache_kwargs(llama, reference))
    assert len(layers) == len(llama.layers)
    config = llama.config
    head_dim = config.hidden_size // config.num_attention_heads
    for keys, values in layers:
        assert keys.shape == values.shape == (1, config.num_key_value_heads, 6, head_dim)
    continued = hf_compat.cache_holding(layers)  # a cache built from them continues exactly like the model's own
    with torch.inference_mode():
        a = llama(input_ids=_ids(2) + 50, **hf_compat.cache_kwargs(llama, continued)).last_hidden_state
        b = llama(input_ids=_ids(2) + 50, **hf_compat.cache_kwargs(llama, reference)).last_hidden_state
    torch.testing.assert_close(a, b)


def test_dynamic_cache_without_config_keeps_every_key_of_a_sliding_window_model(tiny_llama, tmp_path):
    """A cache built without a config has full layers: a prefix longer than a sliding window stays whole."""
    from tests.tiny_models import make_tiny

    model = AutoModel.from_pretrained(make_tiny("gemma3_text", tmp_path / "g", tiny_llama, sliding_window=4)).eval()
    with torch.inference_mode():
        layers = hf_compat.keys_and_values(model, _ids(9))
    assert all(keys.shape[2] == 9 for keys, _ in layers)
    assert hf_compat.cache_holding(layers).get_seq_length() == 9


def test_recorded_layer_kwargs_take_a_new_cache(llama):
    """The sweep replays a layer with its recorded kwargs and a fresh cache, under the name the decoder used."""
    fresh = DynamicCache()
    for name in ("cache", "past_key_values"):
        kwargs = hf_compat.with_cache(llama.layers[0], {name: "recorded", "use_cache": True}, fresh)
        assert kwargs == {hf_compat.cache_kwarg(llama.layers[0]): fresh, "use_cache": True}


def test_attention_implementation_can_be_read_and_switched_to_a_registered_name(backbones):
    model = AutoModel.from_pretrained(backbones["llama"], dtype=torch.float32, attn_implementation="eager")
    assert hf_compat.attention_implementation(model) == "eager"
    hf_compat.set_attention_implementation(model, "st_tp_padded_eager")  # registered by st_tp.runtime.packing at import
    assert hf_compat.attention_implementation(model) == "st_tp_padded_eager"
    assert hf_compat.attention_implementation(model.layers[0].self_attn) == "st_tp_padded_eager"


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_modeling_file_defines_its_eager_attention(backbones, arch):
    """The packing wrapper calls the model's own `eager_attention_forward` (transformers does not register it)."""
    model = AutoModel.from_pretrained(backbones[arch], dtype=torch.float32)
    attention = find_decoder(model).layers[0].self_attn
    assert callable(hf_compat.attention_function("eager", attention))
    assert hf_compat.attention_function("sdpa", attention) is not None


@pytest.mark.parametrize("arch", list(ARCHS))
def test_decoder_layers_take_hidden_states_first_and_per_token_inputs_batch_first(backbones, arch):
    """The layer hooks find the hidden states as the first argument (or keyword), every per-token input laid out
    [B, S, ...], and the layer's output hidden states as the output or its first element."""
    model = AutoModel.from_pretrained(backbones[arch], dtype=torch.float32)
    seen = {}

    def record(module, args, kwargs):
        seen["hidden"] = hf_compat.layer_hidden_states(args, kwargs)
        seen["per_token"] = [v for v in [*args[1:], *kwargs.values()] if isinstance(v, (torch.Tensor, tuple))]

    def output(module, args, kwargs, out):
        seen["output"] = hf_compat.layer_output_hidden_states(out)

    layer = find_decoder(model).layers[0]
    handles = [layer.register_forward_pre_hook(record, with_kwargs=True), layer.register_forward_hook(output, with_kwargs=True)]
    with torch.inference_mode():
        model(input_ids=torch.arange(3, 13).view(2, 5))
    for handle in handles:
        handle.remove()
    assert seen["hidden"].shape == seen["output"].shape == (2, 5, model.config.hidden_size)
    rotary = [v for v in seen["per_token"] if isinstance(v, tuple)]
    assert rotary and all(t.shape[:2] in ((2, 5), (1, 5)) for t in rotary[0])


def test_truncated_config_cuts_per_layer_lists(backbones):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(backbones["gemma3_text"])
    assert len(config.layer_types) == config.num_hidden_layers == 6
    hf_compat.truncate_config(config, 2)
    assert config.num_hidden_layers == 2 and len(config.layer_types) == 2
    model = AutoModel.from_config(config)
    assert len(find_decoder(model).layers) == 2


def test_st_tp_triggers_no_deprecation_warning_of_the_libraries_it_drives(tiny_llama, data_dir, tmp_path):
    """encode (prefix cache on), the sweep's resumed layers, and save/load raise no FutureWarning/DeprecationWarning
    from transformers or sentence-transformers."""
    from st_tp.sweep import sweep

    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=FutureWarning)
        warnings.filterwarnings("error", category=DeprecationWarning, module="(transformers|sentence_transformers)")
        model = st_tp.build(tiny_llama, tp_end=3, device="cpu")
        model.encode(["A man is playing a guitar.", "Hi"])
        model.save(str(tmp_path / "m"))
        sweep(tiny_llama, data_dir / "raw" / "stsb.dev.tsv", tp_ends=[2, 3], limit=8, batch_size=4, device="cpu",
              show_progress_bar=False)
