"""`st-tp`: what each command prints, and the one-line errors that name the fix (no traceback, no network)."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tomllib
from sentence_transformers import SentenceTransformer

from st_tp.cli import build_parser, main
from tests.conftest import ROOT

SENTENCES = ROOT / "assets" / "sentences.txt"


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "install-check"
    main(["build", tiny_llama, "--config", str(ROOT / "configs" / "install-check.yaml"), "--out", str(out)])
    return out


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("st-tp: error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("st-tp tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_build_and_encode_print_what_they_did(saved, tmp_path, capsys):
    capsys.readouterr()
    main(["encode", str(saved), "--input", str(SENTENCES), "--output", str(tmp_path / "e"), "--similarity"])
    out = capsys.readouterr().out
    lines = SENTENCES.read_text().splitlines()
    assert f"Read {len(lines)} lines from {SENTENCES}; wrote {len(lines)} embeddings of dimension 64 to {tmp_path / 'e.npy'}" in out
    assert "cosine" in out  # the similarity table
    assert "; runs in " in out  # the dtype the model computes in
    embeddings = np.load(tmp_path / "e.npy")  # `--output e` writes e.npy, and says so
    expected = SentenceTransformer(str(saved), trust_remote_code=True, device="cpu").encode(lines)
    np.testing.assert_array_equal(embeddings, expected)


def test_mistyped_local_folder_fails_at_once_without_network(saved, tmp_path, capsys, no_network):
    """Item 1: no hub retries for a path that can only be local; near matches are named."""
    typo = str(saved.parent / "install-chek")
    started = time.perf_counter()
    err = _error(capsys, ["encode", typo, "--input", str(SENTENCES), "--output", str(tmp_path / "e.npy")])
    assert time.perf_counter() - started < 5
    assert f"{typo}: no such folder; did you mean {saved}?" in err
    os.chdir(saved.parent)  # a relative path that starts with '.'
    try:
        err = _error(capsys, ["encode", "./install-chekk/", "--input", str(SENTENCES), "--output", str(tmp_path / "e")])
    finally:
        os.chdir(ROOT)
    assert "./install-chekk/: no such folder; did you mean" in err
    err = _error(capsys, ["build", str(tmp_path / "nothing" / "here"), "--out", str(tmp_path / "m")])
    assert "no such folder (nothing similar in" in err


def test_missing_files_and_devices_are_one_line_errors(saved, tmp_path, capsys, no_network):
    """Item 2, and a preset given by name."""
    err = _error(capsys, ["encode", str(saved), "--input", "nope.txt", "--output", str(tmp_path / "e")])
    assert "--input nope.txt: no such file." in err
    err = _error(capsys, ["build", "--config", "no-such-preset", "--out", str(tmp_path / "m")])
    assert "--config no-such-preset: no such preset file or name. Presets: " in err and "llama2-7b-prompteol-tp" in err
    err = _error(capsys, ["sweep", str(saved), "--dev", "missing.tsv", "--out", str(tmp_path / "s")])
    assert "--dev missing.tsv: no such file." in err
    import torch

    if not torch.cuda.is_available():
        err = _error(capsys, ["encode", str(saved), "--input", str(SENTENCES), "--output", str(tmp_path / "e"), "--device", "cuda"])
        assert "--device cuda: no CUDA GPU is visible" in err and "--device cpu" in err
    err = _error(capsys, ["mteb", str(saved), "--tasks", "sts", "--local-data", str(tmp_path / "nowhere")])
    assert "--local-data" in err and "no such folder" in err


def test_preset_by_name_and_bad_overrides(tiny_llama, tmp_path, capsys):
    main(["build", tiny_llama, "--config", "install-check", "--out", str(tmp_path / "m")])
    assert "Saved a Token Prepending model" in capsys.readouterr().out
    main(["build", tiny_llama, "--config", "install-check", "--dtype", "float32", "--out", str(tmp_path / "m")])
    assert "output_layer 3; runs in float32) to" in capsys.readouterr().out
    err = _error(capsys, ["build", tiny_llama, "--out", str(tmp_path / "m"), "--set", "tp_end=0"])
    assert "tp_end (0) must be greater than tp_start (1)" in err
    err = _error(capsys, ["build", tiny_llama, "--out", str(tmp_path / "m"), "--set", "tp_end"])
    assert "--set expects KEY=VALUE" in err


def test_the_auto_dtype_is_printed_with_its_reason(monkeypatch):
    import torch

    from st_tp.cli import dtype_note

    monkeypatch.setattr("st_tp.runtime.config.cpu_runs_bfloat16", lambda: True)
    assert dtype_note("auto", torch.bfloat16) == "runs in bfloat16 (dtype auto: this CPU runs bfloat16 natively)"
    assert dtype_note("auto", torch.float16) == "runs in float16 (dtype auto: CUDA)"
    monkeypatch.setattr("st_tp.runtime.config.cpu_runs_bfloat16", lambda: False)
    assert dtype_note("auto", torch.float32) == "runs in float32 (dtype auto: no native bfloat16 here)"
    assert dtype_note("bfloat16", torch.bfloat16) == "runs in bfloat16"


def test_blank_lines_keep_their_rows(saved, tmp_path, capsys):
    """Item 3: row i of the .npy is line i; --skip-empty is opt-in and counted."""
    text = tmp_path / "in.txt"
    text.write_text("A man is playing a guitar.\n\nA woman slices an onion.\n   \n")
    main(["encode", str(saved), "--input", str(text), "--output", str(tmp_path / "all.npy")])
    assert "Read 4 lines" in capsys.readouterr().out
    rows = np.load(tmp_path / "all.npy")
    assert rows.shape == (4, 64) and np.isfinite(rows).all()
    main(["encode", str(saved), "--input", str(text), "--output", str(tmp_path / "some.npy"), "--skip-empty"])
    assert "(2 empty lines skipped); wrote 2 embeddings" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "some.npy"), rows[[0, 2]], atol=1e-5)


def test_output_folder_is_checked_before_encoding(saved, tmp_path, capsys, monkeypatch):
    """Item 4: no work is lost to an unwritable --output."""
    monkeypatch.setattr(SentenceTransformer, "encode", lambda *a, **k: pytest.fail("encoded before checking --output"))
    err = _error(capsys, ["encode", str(saved), "--input", str(SENTENCES), "--output", str(tmp_path / "no" / "dir" / "e")])
    assert f"the folder {tmp_path / 'no' / 'dir'} does not exist; create it first" in err


def test_help_is_fast_and_imports_nothing_heavy():
    """Item 5: `st-tp --help` does not import torch, transformers or mteb."""
    code = ("import sys, time; t = time.perf_counter()\nfrom st_tp.cli import main\ntry: main(['--help'])\n"
            "except SystemExit: pass\nprint('ELAPSED', time.perf_counter() - t, sorted({'torch', 'transformers', 'mteb'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    elapsed, heavy = out.split("ELAPSED ")[1].split(" ", 1)
    assert float(elapsed) < 2 and heavy.strip() == "[]", out


def test_every_option_has_help_and_lists_its_choices():
    """Item 6."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"build", "encode", "sweep", "mteb", "senteval", "cache"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"st-tp {name} {action.option_strings or action.dest} has no help"
    sweep_options = {o: a for a in commands["sweep"]._actions for o in a.option_strings}
    assert "prompteol" in sweep_options["--prompt-method"].choices and "bfloat16" in sweep_options["--dtype"].choices


def test_sweep_rejects_tp_end_past_the_last_layer(tiny_llama, data_dir, tmp_path, capsys):
    """Item 7: a 4-layer model has no tp_end 5..12."""
    err = _error(capsys, ["sweep", tiny_llama, "--dev", str(data_dir / "raw" / "stsb.dev.tsv"), "--tp-end", "2..12",
                          "--limit", "4", "--out", str(tmp_path / "s"), "--device", "cpu"])
    assert "tp_end 12 exceeds the model's 4 decoder layers" in err and "Use tp_end <= 4" in err


def test_readme_says_llama2_is_gated_and_pyproject_uses_spdx():
    """Items 9 and 10."""
    readme = (ROOT / "docs" / "models-and-presets.md").read_text()  # the README links it ("Hub models, gated Llama-2")
    assert "hf auth login" in readme and "gated" in readme
    license_field = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert license_field == "MIT"


# ---- issue 35: what the README's examples do ---------------------------------------------------------------------
def test_mteb_runs_every_comma_separated_task_and_marks_a_slice(saved, tmp_path, data_dir, capsys):
    """`--tasks STSBenchmark,SICK-R` runs both tasks (it was read as one name), and a `--limit` run's summary.md
    says it holds a slice and leaves the paper's full-set figures off."""
    out = tmp_path / "mteb"
    main(["mteb", str(saved), "--tasks", "STSBenchmark,SICK-R", "--local-data", str(data_dir), "--limit", "20",
          "--output-folder", str(out)])
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith(("| STSBenchmark-local", "| SICK-R-local"))]
    assert len(rows) == 2, summary
    assert "A slice: the first 20 test rows of each task" in summary and "Task (first 20 rows)" in summary
    assert "paper" not in summary.split("## Models")[0].replace("the paper's figures are left off", "")
    assert "71.66" not in summary and "80.67" not in summary  # the paper's STS-B figures


def test_mteb_unknown_task_is_one_line(saved, tmp_path, data_dir, capsys, no_network):
    err = _error(capsys, ["mteb", str(saved), "--tasks", "STSBenchmark,SICK-Rr", "--output-folder", str(tmp_path)])
    assert "unknown task 'SICK-Rr' not found. Did you mean: 'SICK-R'?" in err and "retrieval" in err
    err = _error(capsys, ["mteb", "--tasks", "STSBenchmark,NoSuchTask", "--local-data", str(data_dir), "--list"])
    assert "no local file for task(s) NoSuchTask" in err
    err = _error(capsys, ["mteb", str(saved), "--tasks", "STSBenchmark", "--limit", "20", "--output-folder", str(tmp_path)])
    assert "--limit slices the local TSV tasks only: add --local-data DIR" in err  # not a silent full run


def test_mteb_help_lists_every_task_set(capsys):
    from st_tp.evaluation.tasks import TASK_SETS

    with pytest.raises(SystemExit):
        main(["mteb", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in TASK_SETS), [name for name in TASK_SETS if name not in text]


def test_build_takes_a_preset_name_from_any_folder(tiny_llama, tmp_path, monkeypatch, capsys):
    """st_tp.build takes the CLI's preset names (one resolution, st_tp.presets), from any working folder, and a
    typo gets a did-you-mean."""
    import st_tp

    monkeypatch.chdir(tmp_path)  # no configs/ here: the shipped presets answer
    model = st_tp.build(tiny_llama, "install-check", device="cpu")
    assert (model[0].tp_config.tp_end, model[0].tp_config.output_layer) == (3, 3)
    with pytest.raises(ValueError, match="install-chek: no such preset file or name; did you mean install-check?"):
        st_tp.build(tiny_llama, "install-chek")
    err = _error(capsys, ["build", tiny_llama, "--config", "install-chek", "--out", str(tmp_path / "m")])
    assert "--config install-chek: no such preset file or name; did you mean install-check?" in err


def test_presets_ship_as_package_data():
    """A non-editable install carries the presets: they live in the package and pyproject declares them."""
    from st_tp.presets import PRESET_FOLDER, preset_names

    assert PRESET_FOLDER == ROOT / "st_tp" / "presets" and "smollm2-135m-prompteol-tp" in preset_names()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["st_tp"]
    assert "presets/*.yaml" in package_data
    assert (ROOT / "configs").resolve() == PRESET_FOLDER  # the clone's old path still reads the same files
