"""Issue 33 (corpus hardening), the one-process engine: valid CSVs read whole, ids of two types, one writer per
folder, duplicate ids, resume counted in rows, disk errors that name the path, one-line errors for whole columns
and null ids; and issue 35 item 5: Ctrl-C ends in one line, exit 130, and the same command resumes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from st_tp.cli import main
from st_tp.corpus import embed_corpus
from st_tp.corpus.ids import DigestSet, digests
from st_tp.corpus.inputs import CorpusInput
from st_tp.corpus.readers import iter_input
from tests.conftest import ROOT
from tests.test_corpus import _error, interrupt_after_shard, model_dir, read_output  # noqa: F401  (model_dir: a fixture)


def test_csv_with_a_quoted_newline_in_every_row_is_read_whole(tmp_path):
    """5 MB, a quoted newline in every row: rows cross pyarrow's 4 MiB read blocks, and each must stay whole."""
    import csv

    path = tmp_path / "notes.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        for i in range(4226):
            writer.writerow([i, f"row {i} first line, with a comma\nsecond line {'x' * (1100 + i % 300)}"])
    assert path.stat().st_size > 5_000_000
    with open(path, newline="") as f:
        expected = [row["text"] for row in csv.DictReader(f)]
    source = CorpusInput.resolve(path)
    got = [t for _, table in iter_input(source, ["text", "id"]) for t in table["text"].to_pylist()]
    assert len(got) == 4226 and got == expected


def test_ids_of_two_types_across_files_are_one_line(model_dir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "two-types"
    folder.mkdir()
    pq.write_table(pa.table({"doc_id": pa.array([1, 2], pa.int64()), "text": ["a b", "c d"]}), folder / "a.parquet")
    pq.write_table(pa.table({"doc_id": ["x", "y"], "text": ["e f", "g h"]}), folder / "b.parquet")
    for engine in ("local", "ray"):  # refused before any engine starts, so alike in both
        err = _error(capsys, ["encode", str(model_dir), "--input", str(folder), "--id-column", "doc_id",
                              "--output", f"{tmp_path}/out-{engine}/", "--engine", engine])
        assert (f"column 'doc_id' (--id-column) is int64 in {folder / 'a.parquet'} but string in {folder / 'b.parquet'}; "
                "give it one type in every file") in err
        assert not (tmp_path / f"out-{engine}").exists()


def test_an_id_that_changes_type_between_shards_is_one_line(model_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    """JSON ids: integers in the first shard, floats later, one of them 2**53 + 1 (no float holds it). JSONL is
    parsed in pieces of READ_ROWS lines, each typed on its own: 2 lines a piece puts the float in a later one."""
    monkeypatch.setattr("st_tp.corpus.readers.READ_ROWS", 2)
    source = tmp_path / "ids.jsonl"
    lines = [{"id": 2**53 + 1, "text": "first"}, {"id": 2, "text": "second"}, {"id": 3.5, "text": "third"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    err = _error(capsys, ["encode", str(model_dir), "--input", str(source), "--id-column", "id", "--shard-size", "2",
                          "--output", f"{tmp_path}/out/", "--device", "cpu"])
    assert "column 'id' (--id-column) holds int64 in the first rows written but double in a later shard" in err
    assert "give it one type in every row and file" in err


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(model_dir, tmp_path):  # noqa: F811
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\nthree\nfour\n")
    refused = []

    def second_run(meta):
        with pytest.raises(ValueError) as error:
            embed_corpus(source, tmp_path / "out", model_dir, shard_size=2, progress=False)
        refused.append(str(error.value))

    embed_corpus(source, tmp_path / "out", model_dir, shard_size=2, progress=False, on_shard=second_run)
    holder = f"pid {os.getpid()} on host {socket.gethostname()}"
    assert refused and refused[0] == (f"output {tmp_path / 'out'}: another run ({holder}) is writing to this folder; "
                                      "wait for it to end, or give another output folder.")
    assert not (tmp_path / "out" / ".lock").exists()  # gone when the run ends
    assert embed_corpus(source, tmp_path / "out", model_dir, shard_size=2, progress=False).shards_skipped == 2


def test_duplicate_ids_are_refused_naming_both_rows_unless_kept(model_dir, tmp_path, capsys):  # noqa: F811
    source = tmp_path / "dups.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": f"text {n}"}) + "\n"
                              for n, i in enumerate("a,b,a,c,b,d".split(","))))
    argv = ["encode", str(model_dir), "--input", str(source), "--id-column", "id", "--device", "cpu"]
    err = _error(capsys, [*argv, "--output", f"{tmp_path}/one-shard/"])
    assert ("the id 'a' (column 'id', --id-column) appears twice, at rows 0 and 2 (0-based); a join on the output "
            "would double its rows. Make the ids unique, or set --keep-duplicate-ids to write them as they are.") in err
    err = _error(capsys, [*argv, "--output", f"{tmp_path}/across-shards/", "--shard-size", "2"])
    assert "the id 'a' (column 'id', --id-column) appears twice, at rows 0 and 2" in err  # row 0 is in part-00000
    main([*argv, "--output", f"{tmp_path}/kept/", "--keep-duplicate-ids"])
    assert read_output(tmp_path / "kept")["id"].to_pylist() == sorted("abacbd")


def test_the_digest_set_finds_every_repeat_and_no_other():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, 50_000, dtype=np.int64).view(np.uint64)
    seen = DigestSet()
    for start in range(0, 40_000, 1_000):
        seen.add(values[start:start + 1_000])
    assert len(seen.runs) <= 8 and len(seen) == 40_000 and seen.nbytes() == 8 * 40_000
    assert seen.contains(values[:40_000]).all() and not seen.contains(values[40_000:]).any()
    assert (digests(pa.array(["1", "1.0"])) != digests(pa.array([1, 1]))).all()


def test_resume_inside_a_single_file_reads_only_the_unfinished_rows(model_dir, tmp_path):  # noqa: F811
    source = tmp_path / "one.jsonl"
    source.write_text("".join(json.dumps({"text": f"sentence number {i}"}) + "\n" for i in range(100)))
    interrupt_after_shard(1, source, tmp_path / "out", model_dir, shard_size=30, progress=False)
    summary = embed_corpus(source, tmp_path / "out", model_dir, shard_size=30, progress=False)
    assert (summary.shards_skipped, summary.rows_embedded, summary.rows_written) == (2, 40, 100)
    embed_corpus(source, tmp_path / "clean", model_dir, shard_size=30, progress=False)
    for part in sorted((tmp_path / "clean").glob("part-*.parquet")):
        assert pq.read_table(tmp_path / "out" / part.name).equals(pq.read_table(part))


def test_a_full_disk_names_the_path_says_a_rerun_resumes_and_leaves_no_temp_file(model_dir, tmp_path, monkeypatch,  # noqa: F811
                                                                                 capsys):
    import st_tp.corpus.store as store

    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\nthree\n")
    real_replace, calls = os.replace, []

    def full_disk(src, dst):
        calls.append(dst)
        if str(dst).endswith("_manifest.json") and len(calls) > 2:  # room for a part, none for the manifest
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", full_disk)
    out = tmp_path / "out"
    err = _error(capsys, ["encode", str(model_dir), "--input", str(source), "--output", f"{out}/", "--shard-size", "2"])
    assert err == (f"st-tp: error: --output {out}: cannot write {out / '_manifest.json'} (No space left on device); free "
                   "some space or make the folder writable, then run the same command again: it resumes (1 finished "
                   "shards kept).")
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000.parquet"]  # no tmp, no lock
    monkeypatch.setattr(store.os, "replace", real_replace)
    main(["encode", str(model_dir), "--input", str(source), "--output", f"{out}/", "--shard-size", "2"])
    assert "(2 shards; 1 finished shards kept from an earlier run)" in capsys.readouterr().out


def test_whole_column_and_null_id_messages(model_dir, tmp_path, capsys):  # noqa: F811
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), numbers)
    err = _error(capsys, ["encode", str(model_dir), "--input", str(numbers), "--output", f"{tmp_path}/o1/"])
    assert err == (f"st-tp: error: --input {numbers}: the text column 'text' (--text-column) holds int64, not strings; "
                   "name the column that holds the texts, or cast it to string.")
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"id": "a", "text": "fine"}\n{"id": null, "text": "no id"}\n')
    err = _error(capsys, ["encode", str(model_dir), "--input", str(nulls), "--id-column", "id", "--output", f"{tmp_path}/o2/"])
    assert f"--input {nulls}: row 1 (0-based, over all input files) has a null id (column 'id', --id-column)." in err
    assert "its id in the output" not in err
    err = _error(capsys, ["encode", str(model_dir), "--input", str(nulls), "--output", f"{tmp_path}/o3/", "--shard-size", "0"])
    assert err == "st-tp: error: --shard-size must be at least 1, got 0."


ENCODE = [sys.executable, "-m", "st_tp.cli", "encode"]


def _interrupt_after_first_shard(argv: list[str], out, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `st-tp encode` in a subprocess, send SIGINT once its first part file exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not (out / "part-00000.parquet").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_ctrl_c_ends_in_one_line_exit_130_and_the_same_command_resumes(model_dir, tmp_path):  # noqa: F811
    source, out = tmp_path / "many.txt", tmp_path / "out"
    source.write_text("".join(f"sentence {i} {'word ' * (i % 40)}\n" for i in range(3000)))
    argv = [*ENCODE, str(model_dir), "--input", str(source), "--output", f"{out}/", "--shard-size", "100",
            "--device", "cpu"]
    done = _interrupt_after_first_shard(argv, out)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    kept = len(list(out.glob("part-*.parquet")))
    assert done.stderr.strip().splitlines()[-1] == (f"st-tp: interrupted: {kept} shards kept in {out}; run the same "
                                                    "command again to resume")
    assert not list(out.glob(".*")), "no temporary file or lock left behind"
    assert 1 <= kept < 30
    resumed = subprocess.run([*argv[:-2], "--shard-size", "100"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} finished shards kept from an earlier run" in resumed.stdout
    assert read_output(out)["id"].to_pylist() == list(range(3000))


@pytest.mark.slow
def test_ctrl_c_under_ray_is_the_same_one_line_without_ray_noise(model_dir, tmp_path):  # noqa: F811
    """A local Ray cluster started by the run (about a minute on 2 cores): SIGINT after the first shard."""
    pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[ray]"')
    source, out = tmp_path / "many.txt", tmp_path / "out"
    source.write_text("".join(f"sentence {i} {'word ' * (i % 40)}\n" for i in range(40000)))
    done = _interrupt_after_first_shard([*ENCODE, str(model_dir), "--input", str(source), "--output", f"{out}/",
                                         "--shard-size", "100", "--engine", "ray", "--batch-size", "8"], out)
    assert done.returncode == 130, done.stderr
    kept = len(list(out.glob("part-*.parquet")))
    assert done.stderr.strip().splitlines()[-1] == (f"st-tp: interrupted: {kept} shards kept in {out}; run the same "
                                                    "command again to resume")
    for noise in ("Traceback", "actor is dead", "KeyboardInterrupt", " INFO ", "Token authentication",
                  "Progress bars disabled"):
        assert noise not in done.stderr, done.stderr


def test_a_jsonl_integer_no_double_holds_is_never_rounded_silently(tmp_path):
    """pyarrow's JSON reader types 2**53 + 1 beside 3.5 as a double 2**53; the line-by-line path refuses it."""
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"id": 2**53 + 1, "text": "a"}, {"id": 3.5, "text": "b"}]))
    with pytest.raises(ValueError) as error:
        list(iter_input(CorpusInput.resolve(path), ["text", "id"]))
    assert str(error.value).startswith(f"{path} lines 1-2: column 'id' holds float and int values (Integer value "
                                       "9007199254740993 is outside")
    path.write_text('{"id": 1, "text": "a", "score": 0.5}\n{"id": 2, "text": "b", "score": 1}\n')
    (_, table), = iter_input(CorpusInput.resolve(path), ["text", "id", "score"])
    assert table["id"].to_pylist() == [1, 2] and table["score"].to_pylist() == [0.5, 1.0]
