"""Corpus embedding (issue 24): streaming Parquet/JSONL/CSV/TSV/txt in, a Parquet dataset out, resume after a
crash, bad rows, the Ray engine (a local cluster of 2 actors); and issue 25 item 2: inputs that are not UTF-8.

The tiny random Llama keeps every run to a second or two; the Ray tests share one local cluster."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

import st_tp
from st_tp.cli import main
from st_tp.corpus import embed_corpus
from tests.conftest import ROOT

ROWS = 150


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("st-tp: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "tiny-tp"
    st_tp.build(tiny_llama, tp_end=3, output_layer=3, dtype="float32", device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def rows():
    """Texts of many lengths, ids that are not row numbers, a kept column of another type."""
    base = (ROOT / "assets" / "sentences.txt").read_text().splitlines()
    texts = [f"{base[i % len(base)]} {'and more words ' * (i % 7)}{i}" for i in range(ROWS)]
    return [{"doc_id": f"doc-{i:04d}", "text": t, "year": 1990 + i % 30} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def reference(model_dir, rows):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    return dict(zip([r["doc_id"] for r in rows], model.encode([r["text"] for r in rows], batch_size=16), strict=True))


@pytest.fixture(scope="module")
def inputs(rows, tmp_path_factory):
    """The same rows as a Parquet folder (3 files), JSONL, CSV, TSV and txt."""
    folder = tmp_path_factory.mktemp("inputs")
    table = pa.Table.from_pylist(rows)
    (folder / "parquet").mkdir()
    for i, start in enumerate(range(0, ROWS, 60)):
        pq.write_table(table.slice(start, 60), folder / "parquet" / f"part-{i}.parquet")
    (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pcsv.write_csv(table, folder / "in.csv")
    (folder / "in.tsv").write_text("doc_id\ttext\tyear\n" + "".join(f"{r['doc_id']}\t{r['text']}\t{r['year']}\n" for r in rows))
    (folder / "in.txt").write_text("".join(r["text"] + "\n" for r in rows))
    return folder


def read_output(folder) -> pa.Table:
    return pds.dataset(folder).to_table().sort_by("id")


def embeddings(table: pa.Table) -> np.ndarray:
    return np.stack(table["embedding"].to_numpy(zero_copy_only=False))


def check_against_reference(table: pa.Table, rows, reference, id_of=lambda i: i) -> None:
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(id_of(i) for i in range(len(rows))), "every input id exactly once"
    expected = np.stack([reference[rows[i]["doc_id"]] for i in range(len(rows))])
    by_id = {id_of(i): i for i in range(len(rows))}
    got = embeddings(table)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected[[by_id[i] for i in ids]], atol=1e-5)


# ---- one process ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["parquet", "in.jsonl", "in.csv", "in.tsv"])
def test_every_format_streams_to_the_same_embeddings_as_model_encode(name, inputs, model_dir, rows, reference, tmp_path):
    out = tmp_path / "out"
    summary = embed_corpus(inputs / name, out, model_dir, id_column="doc_id", keep_columns=["year"], shard_size=64,
                           progress=False)
    table = read_output(out)
    assert table.column_names == ["id", "embedding", "year"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    check_against_reference(table, rows, reference, id_of=lambda i: rows[i]["doc_id"])
    assert dict(zip(table["id"].to_pylist(), table["year"].to_pylist(), strict=True)) == {r["doc_id"]: r["year"] for r in rows}
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == {"read": ROWS, "written": ROWS, "bad_skipped": 0}
    assert manifest["model"]["path"] == str(model_dir.resolve()) and manifest["model"]["st_tp_config"]["tp_end"] == 3
    assert (summary.rows_written, summary.dim, summary.shards) == (ROWS, 64, 3)


def test_txt_ids_are_row_numbers_and_float16_halves_the_embedding(inputs, model_dir, rows, reference, tmp_path, capsys):
    main(["encode", str(model_dir), "--input", str(inputs / "in.txt"), "--output", f"{tmp_path}/out/",
          "--shard-size", "100", "--output-dtype", "float16", "--device", "cpu"])
    assert f"Read {ROWS} rows from {inputs / 'in.txt'}; wrote {ROWS} embeddings of dimension 64" in capsys.readouterr().out
    table = read_output(tmp_path / "out")
    assert table["id"].to_pylist() == list(range(ROWS)) and table.schema.field("embedding").type.value_type == pa.float16()
    expected = np.stack([reference[r["doc_id"]] for r in rows])
    np.testing.assert_allclose(embeddings(table).astype(np.float32), expected, atol=2e-3 * np.abs(expected).max())


def test_jsonl_to_npy_keeps_input_order(inputs, model_dir, rows, reference, tmp_path, capsys):
    main(["encode", str(model_dir), "--input", str(inputs / "in.jsonl"), "--output", str(tmp_path / "e.npy")])
    assert f"Read {ROWS} rows from" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), np.stack([reference[r["doc_id"]] for r in rows]), atol=1e-5)


KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from st_tp.corpus import embed_corpus
embed_corpus(sys.argv[1], sys.argv[2], sys.argv[3], id_column="doc_id", keep_columns=["year"], shard_size=40,
             progress=False, on_shard=lambda meta: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_killed_run_resumes_to_the_uninterrupted_dataset(inputs, model_dir, tmp_path):
    """kill -9 right after the first shard, then the same command again: the finished shard is kept (not
    re-embedded), a temp file of a torn write is cleaned up, and the dataset equals an uninterrupted run's."""
    source, out, clean = inputs / "in.jsonl", tmp_path / "resumed", tmp_path / "clean"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_SHARD, str(source), str(out), str(model_dir)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet"]
    assert not json.loads((out / "_manifest.json").read_text())["complete"]
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    (out / ".part-00001.parquet.tmp999").write_bytes(b"a torn write")
    settings = dict(id_column="doc_id", keep_columns=["year"], shard_size=40, progress=False)
    summary = embed_corpus(source, out, model_dir, **settings)
    assert summary.shards_skipped == 1 and (out / "part-00000.parquet").stat().st_mtime_ns == first
    assert not list(out.glob(".*tmp*"))
    embed_corpus(source, clean, model_dir, **settings)
    assert read_output(out).equals(read_output(clean))
    for part in clean.glob("part-*.parquet"):  # shard for shard, the same files
        assert pq.read_table(out / part.name).equals(pq.read_table(part))
    resumed, uninterrupted = (json.loads((d / "_manifest.json").read_text()) for d in (out, clean))
    assert resumed["rows"] == uninterrupted["rows"] and resumed["shards"] == uninterrupted["shards"]


def test_resume_with_another_model_or_setting_refuses(inputs, model_dir, tmp_path, capsys):
    out = f"{tmp_path}/out/"
    argv = ["encode", str(model_dir), "--input", str(inputs / "in.txt"), "--output", out, "--shard-size", "100"]
    main(argv)
    other = tmp_path / "other-model"
    shutil.copytree(model_dir, other)
    err = _error(capsys, ["encode", str(other), *argv[2:]])
    assert f"holds a run with another model folder: was '{model_dir.resolve()}', now '{other.resolve()}'" in err
    assert "or write to a new output folder" in err
    assert "setting normalize: was False, now True" in _error(capsys, [*argv, "--normalize"])
    assert "setting shard_size: was 100, now 50" in _error(capsys, [*argv[:-1], "50"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert "not an st_tp corpus output" in _error(capsys, [*argv[:5], f"{tmp_path}/taken/"])


def test_bad_rows_are_named_or_skipped_and_counted(model_dir, tmp_path, capsys):
    lines = [{"id": "a", "text": "fine"}, {"id": "b", "text": None}, {"id": "c", "text": 7}, {"id": "d", "text": "  "},
             {"id": "e", "text": "also fine"}]
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    argv = ["encode", str(model_dir), "--input", str(source), "--id-column", "id", "--output", f"{tmp_path}/out/"]
    err = _error(capsys, argv)
    assert "row 1 (id 'b') has a text (column 'text') that is null" in err and "--on-bad-row skip" in err
    main([*argv, "--on-bad-row", "skip"])
    assert "(3 bad rows skipped, counted in _manifest.json); wrote 2 embeddings" in capsys.readouterr().out
    assert read_output(tmp_path / "out")["id"].to_pylist() == ["a", "e"]
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["rows"] == {"read": 5, "written": 2, "bad_skipped": 3}
    (tmp_path / "nonstring.jsonl").write_text('{"id": "x", "text": 7}\n')
    err = _error(capsys, ["encode", str(model_dir), "--input", str(tmp_path / "nonstring.jsonl"), "--id-column", "id",
                          "--output", f"{tmp_path}/out2/"])
    assert "the text column 'text' (--text-column) holds int64 values from row 0 on, not strings" in err
    (tmp_path / "blank.txt").write_text("one\n\nthree\n")
    err = _error(capsys, ["encode", str(model_dir), "--input", str(tmp_path / "blank.txt"), "--output", f"{tmp_path}/out3/"])
    assert "blank.txt: line 2 (row id 1) is an empty line" in err


def test_input_mistakes_are_one_line_errors(inputs, model_dir, tmp_path, capsys):
    out = f"{tmp_path}/out/"
    err = _error(capsys, ["encode", str(model_dir), "--input", str(inputs / "in.jsonl"), "--output", out, "--text-column", "body"])
    assert "no column 'body' (--text-column); its columns are doc_id, text, year" in err
    err = _error(capsys, ["encode", str(model_dir), "--input", str(inputs / "in.txt"), "--output", out, "--id-column", "x"])
    assert "a .txt file has one text per line and no columns" in err
    err = _error(capsys, ["encode", str(model_dir), "--input", str(tmp_path / "*.parquet"), "--output", out])
    assert "the glob matches no file" in err
    err = _error(capsys, ["encode", str(model_dir), "--input", str(inputs / "in.txt"), "--output", str(tmp_path / "e.npy"),
                          "--engine", "ray"])
    assert "--engine ray writes a Parquet dataset: give --output a folder ending in /" in err


def test_import_st_tp_and_help_import_neither_ray_nor_pyarrow():
    code = ("import sys, st_tp\nfrom st_tp.cli import main\ntry: main(['encode', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted({'ray', 'pyarrow', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "--keep-columns" in out and out.strip().endswith("[]"), out


def test_engine_ray_without_ray_names_the_pip_command(inputs, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    err = _error(capsys, ["encode", str(model_dir), "--input", str(inputs / "in.txt"), "--output", f"{tmp_path}/o/",
                          "--engine", "ray"])
    assert err == 'st-tp: error: --engine ray needs Ray Data, which is not installed: pip install -e ".[ray]" (or: pip install "ray[data]>=2.40,<3")'


# ---- issue 25 item 2: text inputs that are not UTF-8 -------------------------------------------------------------
NOT_UTF8 = {
    "utf16": ("A man is playing a guitar.\nA woman slices an onion.\n".encode("utf-16"),
              "line 1: not UTF-8; it looks like UTF-16 (a byte-order mark). st_tp reads UTF-8 text only: convert it "
              "with: iconv -f UTF-16 -t UTF-8 {path} > {stem}.utf8{suffix}"),
    "latin1": ("Un caf\xe9 noir.\nLa cr\xe8me br\xfbl\xe9e.\n".encode("latin-1"),
               "line 1: not UTF-8 (invalid continuation byte 0xe9). st_tp reads UTF-8 text only; such bytes usually mean "
               "Latin-1 (ISO-8859-1) or Windows-1252: convert it with: iconv -f LATIN1 -t UTF-8 {path} > {stem}.utf8{suffix}"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
               "line 1: not UTF-8 (invalid start byte 0x89); it contains NUL bytes, so it is probably a binary file, not text. "
               "st_tp reads UTF-8 text files only (.txt, .jsonl, .csv, .tsv; Parquet for binary columnar data)."),
}


@pytest.mark.parametrize("case", sorted(NOT_UTF8))
@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".tsv"])
def test_encode_input_that_is_not_utf8_names_file_line_and_fix(case, suffix, model_dir, tmp_path, capsys):
    data, message = NOT_UTF8[case]
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    err = _error(capsys, ["encode", str(model_dir), "--input", str(path), "--output", str(tmp_path / "e.npy")])
    assert err == f"st-tp: error: {path} " + message.format(path=path, stem=tmp_path / "in", suffix=suffix)


def test_not_utf8_line_number_is_exact_and_a_utf8_bom_is_accepted(model_dir, tmp_path, capsys):
    late = tmp_path / "late.txt"
    late.write_bytes(b"fine\n" * 300_000 + "caf\xe9\n".encode("latin-1"))  # past the first 1 MiB piece
    err = _error(capsys, ["encode", str(model_dir), "--input", str(late), "--output", str(tmp_path / "e.npy")])
    assert f"{late} line 300001: not UTF-8" in err
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("A man is playing a guitar.\nA man plays the guitar.\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    for name in (plain, bom):
        main(["encode", str(model_dir), "--input", str(name), "--output", str(tmp_path / f"{name.stem}.npy")])
    assert "Read 2 lines" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "bom.npy"), np.load(tmp_path / "plain.npy"))
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "A man plays the guitar."}\n')
    main(["encode", str(model_dir), "--input", str(tmp_path / "bom.jsonl"), "--output", f"{tmp_path}/jsonl/"])
    assert "wrote 1 embeddings" in capsys.readouterr().out


def test_sweep_dev_and_mteb_local_data_that_are_not_utf8(model_dir, tiny_llama, tmp_path, capsys):
    dev = tmp_path / "dev.tsv"
    dev.write_bytes("score\tsentence1\tsentence2\n4.0\tUn caf\xe9.\tUn caf\xe9 noir.\n".encode("latin-1"))
    err = _error(capsys, ["sweep", tiny_llama, "--dev", str(dev), "--tp-end", "2", "--out", str(tmp_path / "s"),
                          "--device", "cpu"])
    assert f"{dev} line 2: not UTF-8 (invalid continuation byte 0xe9)" in err and "iconv -f LATIN1 -t UTF-8" in err
    local = tmp_path / "local"
    local.mkdir()
    (local / "stsb.test.tsv").write_bytes("score\tsentence1\tsentence2\n4.0\ta\tb\n".encode("utf-16"))
    err = _error(capsys, ["mteb", "--tasks", "sts", "--local-data", str(local), "--list"])
    assert f"{local / 'stsb.test.tsv'} line 1: not UTF-8; it looks like UTF-16" in err


# ---- Ray ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]" runs the Ray engine tests')
    pytest.importorskip("ray.data", reason='Ray Data is not installed: pip install -e ".[ray]"')
    # 2 actors x 1 CPU, and a logical CPU more for Ray's readers (they would wait for a free CPU forever otherwise)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


def test_ray_engine_matches_one_process_and_model_encode(ray_cluster, inputs, model_dir, rows, reference, tmp_path):
    settings = dict(id_column="doc_id", keep_columns=["year"], shard_size=64, batch_size=8, progress=False)
    summary = embed_corpus(inputs / "parquet", tmp_path / "ray", model_dir, engine="ray", actors=2, **settings)
    embed_corpus(inputs / "parquet", tmp_path / "local", model_dir, **settings)
    by_ray, local = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    check_against_reference(by_ray, rows, reference, id_of=lambda i: rows[i]["doc_id"])
    assert by_ray.schema.equals(local.schema) and by_ray.drop_columns(["embedding"]).equals(local.drop_columns(["embedding"]))
    np.testing.assert_allclose(embeddings(by_ray), embeddings(local), atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ray").glob("part-*")) == sorted(p.name for p in (tmp_path / "local").glob("part-*"))
    manifest = json.loads((tmp_path / "ray" / "_manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["complete"] and manifest["files_rows"] == [60, 60, 30]
    assert summary.rows_written == ROWS
    # the Python API for one's own pipeline: a Ray Dataset with an embedding column, every column passed through
    ds = st_tp.embed_dataset(str(inputs / "in.jsonl"), model_dir, batch_size=8, actors=1)
    got = pa.concat_tables(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert sorted(got["doc_id"].to_pylist()) == sorted(r["doc_id"] for r in rows)
    np.testing.assert_allclose(embeddings(got), np.stack([reference[i] for i in got["doc_id"].to_pylist()]), atol=1e-5)


def _map_workers():
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if "MapWorker" in " ".join(p.cmdline())]


def test_ray_run_survives_a_killed_actor(ray_cluster, inputs, model_dir, rows, tmp_path):
    """SIGKILL one of the 2 actors after the first shard: Ray restarts it and retries its batches; every id once."""
    killed = []

    def kill_one_actor(meta):
        if not killed:
            workers = _map_workers()
            assert workers, "no Ray actor process found"
            workers[0].send_signal(signal.SIGKILL)
            killed.append(workers[0].pid)

    source = tmp_path / "many.jsonl"
    source.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows * 4))
    embed_corpus(source, tmp_path / "out", model_dir, engine="ray", actors=2, batch_size=8, shard_size=40,
                 progress=False, on_shard=kill_one_actor)
    assert killed
    table = read_output(tmp_path / "out")
    assert table["id"].to_pylist() == list(range(4 * ROWS))
    assert np.isfinite(embeddings(table)).all()


# ---- issue 33 under Ray: the same one line, resume in rows, a cluster we started is shut down --------------------
def test_ray_names_a_malformed_jsonl_line_in_the_last_line(ray_cluster, model_dir, tmp_path, capsys):
    source = tmp_path / "broken.jsonl"
    lines = [json.dumps({"text": f"sentence {i}"}) for i in range(20)]
    lines[10] = '{"text": "no closing brace"'
    source.write_text("\n".join(lines) + "\n")
    argv = ["encode", str(model_dir), "--input", str(source), "--output", f"{tmp_path}/{{}}/"]
    local = _error(capsys, [*argv[:-1], argv[-1].format("local")])
    by_ray = _error(capsys, [*argv[:-1], argv[-1].format("ray"), "--engine", "ray"])
    assert by_ray == local and f"{source} line 11: not JSON" in by_ray, by_ray


def interrupt_after_shard(last: int, *args, **settings) -> None:
    """`embed_corpus(*args, **settings)` stopped by an exception once shard `last` is written (as a crash would)."""

    class Stop(Exception):
        pass

    def stop(meta):
        if meta["shard"] == last:
            raise Stop

    with pytest.raises(Stop):
        embed_corpus(*args, on_shard=stop, **settings)


def test_ray_resume_inside_one_file_embeds_only_the_unfinished_rows(ray_cluster, model_dir, tmp_path):
    source = tmp_path / "one.jsonl"
    source.write_text("".join(json.dumps({"text": f"sentence number {i} {'word ' * (i % 9)}"}) + "\n" for i in range(200)))
    settings = dict(engine="ray", actors=2, batch_size=8, shard_size=40, progress=False)
    interrupt_after_shard(2, source, tmp_path / "out", model_dir, **settings)
    summary = embed_corpus(source, tmp_path / "out", model_dir, **settings)
    assert (summary.shards_skipped, summary.rows_embedded, summary.rows_written) == (3, 80, 200)
    table = read_output(tmp_path / "out")
    assert table["id"].to_pylist() == list(range(200)) and np.isfinite(embeddings(table)).all()


def test_a_ray_cluster_this_run_started_is_shut_down_after_an_error(model_dir, tmp_path, monkeypatch):
    import st_tp.corpus.ray_engine as ray_engine

    class FakeRay:
        running = True

        def is_initialized(self):
            return self.running

        def shutdown(self):
            self.running = False

    fake = FakeRay()

    def fails(self, *args):
        self.ray, self.started = fake, True
        raise ValueError("the Ray job failed")
        yield

    monkeypatch.setattr(ray_engine.RayEngine, "shards", fails)
    source = tmp_path / "in.txt"
    source.write_text("one\n")
    with pytest.raises(ValueError, match="the Ray job failed"):
        embed_corpus(source, tmp_path / "out", model_dir, engine="ray", progress=False)
    assert not fake.running and not (tmp_path / "out" / ".lock").exists()
