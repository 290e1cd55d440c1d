"""The benchmark arithmetic behind the GPU figures: the FLOP count of MFU, checked against torch's own counter,
and a smoke run of the GPU benchmark on CPU (tiny shapes) so the script a GPU session runs is known to work."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import st_tp
from benchmarks.bench_gpu import dense_fp16_peak_tflops, main, model_flops

SENTENCES = ["A man is playing a guitar.", "Hi", "After hours of debate, the council postponed its decision."]


def counted(module, features) -> tuple[int, int]:
    """(Linear-module FLOPs, attention matmul FLOPs) of one forward, as torch's FlopCounterMode counts them."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module.forward(dict(features))
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    linear = sum(v for name, v in per_module.items() if name.endswith("_proj"))
    # Eager attention's own matmuls (scores, weighted values) are what self_attn counts beyond its projections.
    attention = sum(v for name, v in per_module.items() if name.endswith("self_attn"))
    attention -= sum(v for name, v in per_module.items() if ".self_attn." in name and name.endswith("_proj"))
    return linear, attention


@pytest.mark.parametrize("settings", [
    dict(tp=True, output_layer=3, prefix_cache=True),
    dict(tp=False, output_layer=3, prefix_cache=False),
    dict(tp=True, output_layer=-1, prefix_cache=False),
])
def test_model_flops_match_torch_counter_without_padding(tiny_llama, settings):
    model = st_tp.build(tiny_llama, tp_end=3, device="cpu", model_kwargs={"attn_implementation": "eager"}, **settings)
    module = model[0]
    features = module.preprocess(SENTENCES[:1])  # one row: no padding, every column is computed
    ours = model_flops(module, features)
    linear, attention = counted(module, features)
    assert ours["linear"] == linear
    # Eager attention computes every (query, key) score; a causal query only needs the keys up to itself.
    past = int(features["prefix_lengths"][0]) if settings["prefix_cache"] else 0
    q = int(features["attention_mask"].sum()) - past
    assert math.isclose(ours["attention"], attention * (past + (q + 1) / 2) / (past + q), rel_tol=1e-12)


def test_model_flops_exclude_padding_and_cached_prefix(tiny_llama):
    model = st_tp.build(tiny_llama, tp_end=3, output_layer=3, device="cpu", prefix_cache=True,
                        model_kwargs={"attn_implementation": "eager"})
    module = model[0]
    features = module.preprocess(SENTENCES)
    past = int(features["prefix_lengths"][0])
    assert past > 0, "the PromptEOL prefix should be cached"
    assert len(set(features["attention_mask"].sum(1).tolist())) > 1, "rows of different lengths: there is padding"
    ours = model_flops(module, features)["linear"]  # (also computes the cached prefix, outside the count below)
    linear, _ = counted(module, features)  # the forward skips padding rows in every Linear, so torch counts them not
    assert ours == linear


def test_peak_table():
    assert dense_fp16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert dense_fp16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert dense_fp16_peak_tflops("NVIDIA H200") == 989.4
    assert dense_fp16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert dense_fp16_peak_tflops("Some Other GPU") is None


def test_gpu_benchmark_smoke_run_on_cpu(data_dir):
    result = main(["--shapes", "tiny", "--device", "cpu", "--dtype", "float32", "--peak-tflops", "2",
                   "--sentences", "64", "--batch-size", "16", "--rounds", "1"])
    assert set(result["rows"]) == {"tp", "vanilla", "vanilla_last"}
    for row in result["rows"].values():
        assert row["sentences_per_s_forward"] > 0 and row["sentences_per_s_encode"] > 0
        assert row["mfu"] == pytest.approx(row["forward_tflops"] / 2)
    # early exit keeps fewer layers: the paper-exit models hold less than the full-depth one
    assert result["rows"]["tp"]["weights_gib"] < result["rows"]["vanilla_last"]["weights_gib"]
    with pytest.raises(SystemExit):  # CPU figures are never written into the GPU section
        main(["--shapes", "tiny", "--device", "cpu", "--write"])


def test_corpus_benchmark_smoke_run(data_dir):
    """benchmarks/bench_corpus.py at a tiny size (the tiny model, 48 rows, one RSS size, no Ray): it runs, both
    paths give the plain .npy's embeddings, and the figures it prints are there."""
    from benchmarks.bench_corpus import main as bench_corpus

    result = bench_corpus(["--model", "tiny", "--rows", "48", "--rounds", "1", "--rss-rows", "300", "--skip-ray",
                           "--ids-rows", "30000"])
    assert result["duplicate_ids"]["digest set MiB"] * 2**20 == 8 * 30_001  # 8 bytes an id (+ the warm-up id)
    assert result["agreement"]["local"]["min cosine"] > 0.999  # joined on id; bfloat16 where the CPU runs it
    assert set(result["median_s"]) == {"plain model.encode (.npy)", "one-process streaming (2 threads)"}
    assert any(k.startswith("one-process streaming / plain") for k in result["ratios"]) and result["peak_rss_mib"][300] > 0


def test_rotated_rounds_start_round_r_at_run_r():
    """time_rounds(rotate=True): every run takes every place in a round (long runs drift within a round)."""
    from benchmarks.common import time_rounds

    calls = []
    times = time_rounds({name: (lambda name=name: calls.append(name)) for name in "abc"}, 3, rotate=True)
    assert calls == list("abc" "bca" "cab") and all(len(t) == 3 for t in times.values())
    calls.clear()
    time_rounds({name: (lambda name=name: calls.append(name)) for name in "ab"}, 2)
    assert calls == list("abab")


def test_appendix_benchmark_smoke_run(tmp_path):
    """benchmarks/bench_appendix.py on the tiny model, three categories and two transfer tasks at tiny samples: the
    tables carry both models, the deltas and their intervals (whose full-sample scores are mteb's own: the bootstrap
    checks them), the paper's columns and the no-data line for reranking."""
    from benchmarks.bench_appendix import main as bench_appendix

    (tmp_path / "vanilla.yaml").write_text("prompt_method: prompteol\ntp: false\noutput_layer: 3\ndtype: float32\n")
    result = bench_appendix(["--model", "assets/tiny-llama-install-check", "--presets", str(tmp_path / "vanilla.yaml"),
                             "install-check", "--out", str(tmp_path / "out"), "--categories", "sts,pair-classification",
                             "--sts-sample", "30", "--pair-sample", "60", "--transfer-tasks", "SST2,MRPC",
                             "--senteval-sample", "60", "--resamples", "30"])
    report = result["report"]
    assert "### Table 5: transfer tasks" in report and "| paper, Llama-2-7B, PromptEOL + TP (full sets) |" in report
    assert "### Table 8: PairClassification (max_ap x100): install-check - vanilla" in report
    assert "### Table 12: STS" in report and "reranking: no local data in" in report
    stsb = next(row for row in result["bootstrap"]["STS: install-check - vanilla"] if row["name"] == "STSBenchmark-local")
    assert stsb["score_b"] == pytest.approx(result["mteb"].scores["install-check"]["STSBenchmark-local"], abs=1e-4)
    assert f"| STSBenchmark | 30 pairs | {100 * stsb['score_a']:.2f} | {100 * stsb['score_b']:.2f} | " in report
