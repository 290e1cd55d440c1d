"""The tp_end x output_layer sweep: every cell equals a direct evaluation of that setting."""

import numpy as np
import pytest
from scipy.stats import spearmanr

import st_tp
from st_tp.runtime.config import load_preset
from st_tp.data import read_pairs
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
