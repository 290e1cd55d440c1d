"""The tp_end x output_layer sweep: every cell equals a direct evaluation of that setting."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import st_tp
from st_tp.data import read_pairs
from st_tp.resume import TPEndRecorder
from st_tp.runtime.config import load_preset
from st_tp.sweep import VANILLA, sweep, write_outputs


@pytest.fixture(scope="module")
def swept(golden_dir, data_dir, tmp_path_factory):
    base = str(golden_dir / "llama" / "model")
    dev = data_dir / "raw" / "stsb.dev.tsv"
    result = sweep(base, dev, tp_ends=[2, 3, 5], limit=60, batch_size=8, dtype="float32", device="cpu", show_progress_bar=False)
    out = tmp_path_factory.mktemp("sweep")
    write_outputs(result, out, base, "prompteol", str(dev))
    return base, dev, result, out


def _direct(base, dev, **settings):
    model = st_tp.build(base, dtype="float32", device="cpu", **settings)
    s1, s2, gold = read_pairs(dev, 60)
    a = model.encode(s1, normalize_embeddings=True)
    b = model.encode(s2, normalize_embeddings=True)
    return spearmanr(gold, (a * b).sum(1)).statistic


@pytest.mark.parametrize("tp_end, output_layer", [(3, 6), (2, 8), (5, 4)])
def test_sweep_cells_equal_direct_evaluation(swept, tp_end, output_layer):
    base, dev, result, _ = swept
    direct = _direct(base, dev, tp_end=tp_end, output_layer=-1 if output_layer == 8 else output_layer)
    assert result.scores[tp_end][output_layer] == pytest.approx(direct, abs=1e-6)


def test_sweep_vanilla_row(swept):
    base, dev, result, _ = swept
    assert result.scores[VANILLA][5] == pytest.approx(_direct(base, dev, tp=False, output_layer=5), abs=1e-6)


@pytest.mark.slow
def test_every_cell_scores_what_a_built_model_scores(golden_dir, data_dir, dtype="float32"):
    """Issue #42's setting (golden tiny Llama, float32, 150 STS-B dev pairs, tp_end 2..4): every cell of the grid,
    vanilla's row included, equals the score of a model built with that cell's settings and run through model.encode,
    to 1e-6; and the sweep's own check of its best cell agrees. (Real weights in both dtypes: below.)"""
    base, dev = str(golden_dir / "llama" / "model"), data_dir / "raw" / "stsb.dev.tsv"
    result = sweep(base, dev, tp_ends=[2, 3, 4], limit=150, dtype=dtype, device="cpu", show_progress_bar=False)
    s1, s2, gold = read_pairs(dev, 150)
    assert result.dtype == dtype and not result.rebuilt_differs()
    for row, settings in [(VANILLA, dict(tp=False)), *((e, dict(tp_end=e)) for e in (2, 3, 4))]:
        assert np.isnan(result.scores[row][0]), "layer 0 reads the same last token for every prompt"
        for k in range(1, 9):
            model = st_tp.build(base, dtype=dtype, device="cpu", output_layer=-1 if k == 8 else k, **settings)
            a, b = (model.encode(s, normalize_embeddings=True) for s in (s1, s2))
            direct = spearmanr(gold, (a * b).sum(1)).statistic
            assert result.scores[row][k] == pytest.approx(direct, abs=1e-6), (row, k)


def test_encode_batches_are_the_batches_encode_forms(tiny_llama):
    """Found without running the model, and equal to what model.encode really hands the module, batch for batch."""
    from st_tp.sweep_scoring import encode_batches

    model = st_tp.build(tiny_llama, tp_end=3, dtype="float32", device="cpu")
    texts = ["a b c", "a", "a b c d e f", "a b", "x y z w", "a b c", "q"] * 3
    seen, preprocess = [], model[0].preprocess
    model[0].preprocess = lambda batch, **kwargs: seen.append(list(batch)) or preprocess(batch, **kwargs)
    model.encode(texts, batch_size=4)
    found = encode_batches(model, texts, batch_size=4)
    assert [[texts[i] for i in ids] for ids in found] == seen[len(found):] == seen[: len(found)]
    assert sorted(np.concatenate(found).tolist()) == list(range(len(texts)))


ROWS = {VANILLA: dict(tp=False), 2: dict(tp_end=2), 3: dict(tp_end=3)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype, cells", [
    ("bfloat16", [(VANILLA, 28), (2, 28), (2, 30), (3, 12), (3, 20)]),  # cells that differed by up to 2e-3, the best
    ("float32", [(3, 20), (2, 30)]),  # the cell that differed most in float32, and the best one
])
def test_real_weight_cells_score_what_built_models_score(data_dir, dtype, cells):
    """Issue #42 on real weights: SmolLM2's cells once differed from built models by up to 2e-3 (bfloat16) and 9e-5
    (float32) of Spearman, since a row's numbers depend on the rows batched with it and the sweep batched pairs
    while encode batches each side by length. Batched as encode batches, every checked cell equals the built model's
    score in float32. In bfloat16 that held on an AVX512-BF16 CPU (Zen 5), but on an AMX-BF16 Xeon (oneDNN's AMX
    kernels) cells differed from built models by up to 7e-4, the cause not yet found: bfloat16 is checked to 2e-3."""
    from st_tp.base_model import PACKAGED, resolve_base_model
    from tests.test_base_model import require_package

    require_package(PACKAGED["smollm2-135m"])
    tolerance = 1e-6 if dtype == "float32" else 2e-3
    base, dev = resolve_base_model("packaged:smollm2-135m", dtype=dtype).path, data_dir / "raw" / "stsb.dev.tsv"
    result = sweep(base, dev, tp_ends=[2, 3], limit=200, dtype=dtype, device="cpu", show_progress_bar=False)
    assert not result.rebuilt_differs(tolerance)
    s1, s2, gold = read_pairs(dev, 200)
    for row, k in cells:
        model = st_tp.build(base, dtype=dtype, device="cpu", output_layer=-1 if k == 30 else k, **ROWS[row])
        a, b = (model.encode(s, normalize_embeddings=True) for s in (s1, s2))
        assert result.scores[row][k] == pytest.approx(spearmanr(gold, (a * b).sum(1)).statistic, abs=tolerance), (row, k)


def test_sweep_outputs(swept):
    _, _, result, out = swept
    rows = (out / "grid.csv").read_text().splitlines()
    assert rows[0].split(",") == ["tp_end", *map(str, range(9))]
    assert [r.split(",")[0] for r in rows[1:]] == ["vanilla", "2", "3", "5"]
    base_model, config = load_preset(out / "best.yaml")
    best_e, best_k, best_v = result.best()
    assert (config.tp_end, config.output_layer if config.output_layer >= 0 else 8) == (best_e, best_k)
    assert np.isfinite(best_v) and best_v == max(v for e, r in result.scores.items() if e != VANILLA for v in r if np.isfinite(v))
    for png in ("heatmap.png", "curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


LONG = " ".join(["The quick brown fox jumps over the lazy dog again."] * 4)  # past a 24-token sliding window
RESUME_CASES = {  # how the recorded pass laid out its rows, which the resumed layers must lay out again
    "sdpa, packed, prefix cache": dict(),
    "eager attention": dict(model_kwargs={"attn_implementation": "eager"}),
    "prefix cache off": dict(prefix_cache=False),
    "one text (no padding: not packed)": dict(texts=["A man is playing a guitar."]),
    "gemma3 sliding window": dict(arch="gemma3_text", texts=["Hi", LONG, "A man is playing a guitar."]),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_recorded_cells_equal_runners_built_at_each_tp_end(tiny_llama, tmp_path, case):
    """The sweep's TPEndRecorder through the runner's recorder= hook: every (tp_end, k) state of one recorded pass
    equals what a runner built at that tp_end computes (two templates), whatever layout the pass used."""
    settings = dict(RESUME_CASES[case])
    texts = settings.pop("texts", ["A man is playing a guitar.", "Hi", "Is it going to rain tomorrow?"])
    base = tiny_llama
    if "arch" in settings:
        from tests.tiny_models import make_tiny

        base = make_tiny(settings.pop("arch"), tmp_path / "model", tiny_llama, sliding_window=24)
    templates = ["This sentence : <PST> \"{text}\" means in one word:\"", "Sentence <PST> '{text}' in a word:"]

    def module(tp_end):
        return st_tp.build(base, prompt_method="custom", template=templates, tp_end=tp_end, output_layer=-1,
                           dtype="float32", device="cpu", **settings)[0]

    built = module(4)
    features, largest = built.preprocess(texts), built.runner
    every = range(largest.total_layers + 1)
    with torch.inference_mode():
        cells = largest.last_token_states(features, every, recorder=TPEndRecorder([2, 3, 4], largest.total_layers))
        assert sorted(cells) == [(e, k) for e in (2, 3, 4) for k in every]
        for tp_end in (2, 3, 4):
            direct = module(tp_end).runner.last_token_states(features, every)
            for k in every:
                torch.testing.assert_close(cells[(tp_end, k)], direct[k], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(cells[(2, 4)], cells[(4, 4)]), "different tp_end must give different states"


def test_sweep_errors_name_the_setting(tiny_llama, data_dir):
    dev = data_dir / "raw" / "stsb.dev.tsv"
    common = dict(limit=4, dtype="float32", device="cpu", show_progress_bar=False)
    with pytest.raises(ValueError, match=r"^tp_ends is empty") as empty:
        sweep(tiny_llama, dev, tp_ends=[], **common)
    assert "--" not in str(empty.value), "library messages name settings, not CLI flags"
    with pytest.raises(ValueError, match=r"tp_end \(1\) must be greater than tp_start \(1\)"):
        sweep(tiny_llama, dev, tp_ends=[1, 3], **common)
    with pytest.raises(ValueError, match="tp_end 5 exceeds the model's 4 decoder layers"):
        sweep(tiny_llama, dev, tp_ends=[2, 5], **common)


def test_progress_counts_prompt_tokens_so_its_eta_holds(golden_dir, data_dir, monkeypatch):
    """The batches run longest first: a bar that counted batches extrapolated the first, most expensive one (a 6 h
    ETA for a 1 h sweep). It counts each batch's real prompt tokens instead, which is what a pass's time follows."""
    import st_tp.sweep as sweep_module

    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.done, self.desc = total, [], kwargs["desc"]
            bars.append(self)

        def update(self, n):
            self.done.append(n)

        def close(self):
            pass

    monkeypatch.setattr(sweep_module, "tqdm", Bar)
    base, dev = str(golden_dir / "llama" / "model"), data_dir / "raw" / "stsb.dev.tsv"
    sweep(base, dev, tp_ends=[2, 3], limit=24, batch_size=4, dtype="float32", device="cpu", show_progress_bar=True)
    (bar,) = bars
    s1, s2, _ = read_pairs(dev, 24)
    module = st_tp.build(base, tp_end=3, dtype="float32", device="cpu")[0]
    prompts = module.preprocess(s1 + s2)
    (template,) = module.runner.template_batches(prompts)  # PromptEOL: one template, its prefix before <PST> cached
    cached = len(s1 + s2) * template.prefix.length
    assert bar.total == sum(bar.done) == int(prompts["attention_mask"].sum()) - cached and cached > 0
    # encode's batches: the sentence1s longest first (by characters), then the sentence2s
    assert len(bar.done) == 6 and bar.done[0] == max(bar.done[:3]) and bar.done[3] == max(bar.done[3:])
    assert "2 tp_end + vanilla: 2.8 passes over 48 prompts" in bar.desc  # 1 + (8 - 2) / 8 + 1 = 2.75 (8 layers)


def test_full_passes_stay_under_one_per_tp_end_plus_vanilla():
    from st_tp.sweep import full_passes

    assert full_passes([4], 16, include_vanilla=False) == 1 and full_passes([4], 16) == 2  # n = 1: the bound itself
    assert full_passes(range(2, 13), 28) == pytest.approx(1 + sum(28 - e for e in range(2, 12)) / 28 + 1)  # 9.68
    for layers in (8, 16, 28, 32, 80):
        for n in range(1, layers):
            assert full_passes(range(1, n + 1), layers) <= n + 1


def test_sweep_scores_only_the_layers_asked_for_and_reports_its_best(swept, golden_dir, data_dir):
    """`layers` keeps those exits (-1: the final-normed output), each equal to the full sweep's cell; the others are
    NaN and never win. The report is what the CLI prints: the best cell, and the rebuilt check when it agrees."""
    base, dev, result, out = swept
    kept = sweep(base, dev, tp_ends=[2, 3, 5], layers=[3, -1], limit=60, batch_size=8, dtype="float32", device="cpu",
                 show_progress_bar=False)
    for row, scores in kept.scores.items():
        assert [k for k, v in enumerate(scores) if np.isfinite(v)] == [3, 8], row
        assert scores[3] == result.scores[row][3] and scores[8] == result.scores[row][8]
    assert kept.best()[1] in (3, 8) and kept.scored_on == str(dev)
    lines = result.report(out).splitlines()
    best_e, best_k, best_v = result.best()
    assert lines[0].startswith(f"best: tp_end={best_e} output_layer={best_k} spearman={best_v:.4f} (vanilla best ")
    assert lines[0].endswith(f"wrote {out}/grid.csv, heatmap.png, curves.png, best.yaml")
    assert lines[1:] == [f"checked: a model built with best.yaml scores {result.best_rebuilt:.6f}, as its grid cell."]
    with pytest.raises(ValueError, match=r"^layers \[9\]: this model's exit layers are 0\.\.8"):
        sweep(base, dev, tp_ends=[2], layers=[9], limit=8, dtype="float32", device="cpu", show_progress_bar=False)
