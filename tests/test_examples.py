"""Every fenced example in README.md and docs/*.md runs as written: a newcomer who copies one gets what it says.

For each file, in a fresh temporary folder (with `assets/` linked from the repository, and `../shared` linked to the
shared data when there is one), every ```bash and ```python block runs in order:
* bash: lines joined at a trailing backslash, `# comments` dropped, each line split at `&&`. Each `st-tp ...`
  command runs through the real CLI, `st_tp.cli.main(argv)`, in this process, and must exit 0; a `pip install ...`
  command is passed over (the test runs inside the environment those lines build); any other command (cat, ls)
  runs through bash in the folder and must exit 0.
* python: executed in one namespace per file, so a block sees what the blocks above it defined.

Substitutions keep it fast and offline, and change nothing else:
* a base model that is not a local folder (a hub id, `packaged:<name>`) becomes the tiny install-check model
  (assets/tiny-llama-install-check), in `st_tp.build` and in `st-tp build` / `st-tp sweep`; `st-tp build` without a
  BASE gets it too when its preset names no local folder. Its settings are clamped to the tiny model's 4 layers
  (tp_end <= 3, output_layer <= 3), and `st-tp sweep` runs `--tp-end 2..3`;
* a run over a dataset gets a slice: `st-tp mteb ... --local-data` and `st-tp sweep` get `--limit 20` (in place of
  `--sample N` or a larger `--limit`);
* ST_TP_CACHE points into the temporary folder, so no example touches your st_tp cache.

The marker. A block that cannot run here carries, on the line right before its fence,

    <!-- example: skip (WHY) -->

where WHY says what it needs that the test does not have (a GPU, a hub download, a Ray cluster, pip). It shows on
GitHub as nothing and in the Markdown source as a visible line. A marker without a reason, a marker that is not right
above a fence, and a fenced block in another shell dialect (```sh, ```console: it would escape this test) fail.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ROOT / "assets" / "tiny-llama-install-check"
SHARED = ROOT.parent / "shared"
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARKER = re.compile(r"^<!-- example: skip \((?P<why>[^)].*)\) -->$")
RUNNABLE = {"bash", "python"}
ALLOWED = RUNNABLE | {""}  # an unnamed fence is output or a file listing, never a command
SLICE = 20  # rows per dataset run


@dataclass
class Example:
    file: Path
    line: int  # the fence's line number, 1-based
    language: str
    code: str
    skip: str | None  # the marker's reason

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def collect(text: str, file: Path = ROOT / "README.md") -> list[Example]:
    """Every fenced block of `text` in a runnable language, with its skip marker; malformed markers and fences in
    other shell dialects raise AssertionError."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("<!-- example"):
            assert MARKER.match(stripped), f"{file.name}:{i + 1}: a marker reads <!-- example: skip (WHY) -->: {stripped}"
            assert i + 1 < len(lines) and lines[i + 1].startswith("```"), f"{file.name}:{i + 1}: a marker goes right above a fence"
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        language = fence.group(1)
        assert language in ALLOWED, f"{file.name}:{i + 1}: ```{language} is neither bash nor python nor plain output"
        if language in RUNNABLE:
            marker = MARKER.match(lines[i - 1].strip()) if i else None
            found.append(Example(file, i + 1, language, "\n".join(lines[i + 1 : end]), marker and marker.group("why")))
        i = end + 1
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, `&&` chains split."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1 :]
    return [command for command in commands if command]


# ---- substitutions ------------------------------------------------------------------------------------------------
def _is_local(model: str) -> bool:
    return Path(model).is_dir()


def _set_option(argv: list[str], option: str, value: str | None) -> list[str]:
    """argv with `option` removed, then appended with `value` (None: only removed)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == option:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + ([option, value] if value is not None else [])


def _option(argv: list[str], option: str) -> str | None:
    return argv[argv.index(option) + 1] if option in argv else None


def substitute(argv: list[str]) -> list[str]:
    """An st-tp command line made fast and offline (the module docstring lists what changes)."""
    command = argv[0]
    if command in ("build", "sweep"):
        has_base = len(argv) > 1 and not argv[1].startswith("-")
        if has_base and not _is_local(argv[1]):
            argv = [command, str(TINY), *argv[2:]]
        elif not has_base and command == "build":
            from st_tp.presets import find_preset
            from st_tp.runtime.config import load_preset

            preset_base = load_preset(find_preset(_option(argv, "--config")))[0] if "--config" in argv else None
            if preset_base is None or not _is_local(preset_base):
                argv = [command, str(TINY), *argv[1:]]
    if command == "sweep":
        argv = _set_option(_set_option(argv, "--tp-end", "2..3"), "--sample", None)
        argv = _set_option(argv, "--limit", str(min(int(_option(argv, "--limit") or SLICE), SLICE)))
    if command == "mteb" and "--local-data" in argv and "--list" not in argv:
        argv = _set_option(argv, "--limit", str(min(int(_option(argv, "--limit") or SLICE), SLICE)))
    return argv


def _clamped(config, overrides: dict):
    """The TPConfig a preset (name, path, TPConfig or None) and overrides give, fitted to the tiny model's 4 layers."""
    from st_tp.presets import find_preset
    from st_tp.runtime.config import TPConfig, load_preset

    if config is None:
        config = TPConfig()
    elif not isinstance(config, TPConfig):
        config = load_preset(find_preset(config))[1]
    config = config.replace(**overrides)
    output_layer = min(config.output_layer, 3)
    tp_end = min(config.tp_end, 3)
    resume = config.tp_resume_layer if config.tp_resume_layer is None or config.tp_resume_layer < 3 else None
    return config.replace(output_layer=output_layer, tp_end=tp_end, tp_start=min(config.tp_start, tp_end - 1),
                          tp_resume_layer=resume)


@pytest.fixture
def tiny_builds(monkeypatch):
    """st_tp.build (and the CLI's build) with a non-local base model replaced by the tiny model, fitted to it."""
    import st_tp
    import st_tp.builder

    real = st_tp.builder.build

    def build(base_model, config=None, *, gguf_file=None, model_kwargs=None, **overrides):
        if _is_local(str(base_model)) and Path(base_model).resolve() != TINY.resolve():
            return real(base_model, config, gguf_file=gguf_file, model_kwargs=model_kwargs, **overrides)
        return real(str(TINY), _clamped(config, overrides), model_kwargs=model_kwargs)

    monkeypatch.setattr(st_tp.builder, "build", build)
    monkeypatch.setattr(st_tp, "build", build, raising=False)


# ---- running ------------------------------------------------------------------------------------------------------
def run_shell(example: Example) -> None:
    from st_tp.cli import main

    for words in shell_commands(example.code):
        if words[:2] == ["pip", "install"]:
            continue
        if words[0] == "st-tp":
            argv = substitute(words[1:])
            try:
                main(argv)
            except SystemExit as error:
                if error.code not in (0, None):
                    pytest.fail(f"{example.where}: `{shlex.join(words)}` (run as st-tp {shlex.join(argv)}) exited "
                                f"{error.code}; its error is in the captured stderr above")
            continue
        done = subprocess.run(["bash", "-c", shlex.join(words)], capture_output=True, text=True)
        assert done.returncode == 0, f"{example.where}: `{shlex.join(words)}` exited {done.returncode}: {done.stderr}"


def run_python(example: Example, namespace: dict) -> None:
    exec(compile(example.code, example.where, "exec"), namespace)


# docs/evaluation.md runs 20 MTEB evaluations (two models on the 8 local STS sets, 20 rows each): about 50 s here.
SLOW = {"docs/evaluation.md"}


@pytest.mark.parametrize("file", [
    pytest.param(f, id=str(f.relative_to(ROOT)), marks=[pytest.mark.slow] if str(f.relative_to(ROOT)) in SLOW else [])
    for f in FILES
])
def test_every_example_runs(file, tmp_path, monkeypatch, tiny_builds):
    examples = collect(file.read_text(encoding="utf-8"), file)
    runnable = [e for e in examples if e.skip is None]
    if not runnable:
        pytest.skip(f"{file.name}: no fenced bash or python block to run (any skipped block says why)")
    needs_shared = [e.where for e in runnable if "../shared" in e.code]
    if needs_shared and not SHARED.is_dir():
        pytest.skip(f"{', '.join(needs_shared)} read ../shared, which is absent beside this clone")
    work = tmp_path / "work"
    work.mkdir()
    (work / "assets").symlink_to(ROOT / "assets")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(work)
    monkeypatch.setenv("ST_TP_CACHE", str(tmp_path / "st_tp-cache"))
    namespace: dict = {"__name__": "__example__"}
    for example in runnable:
        if example.language == "bash":
            run_shell(example)
        else:
            run_python(example, namespace)


def test_markers_and_fences_are_well_formed():
    """Every skip names its reason, and no example hides in a fence the test would not run."""
    skipped = []
    for file in FILES:
        for example in collect(file.read_text(encoding="utf-8"), file):
            if example.skip:
                assert len(example.skip.split()) >= 2, f"{example.where}: say why it is skipped, not just '{example.skip}'"
                skipped.append(example.where)
    assert len(skipped) < sum(len(collect(f.read_text(encoding="utf-8"), f)) for f in FILES) / 2, skipped
    with pytest.raises(AssertionError, match="neither bash nor python"):
        collect("```sh\nst-tp build\n```\n")
    with pytest.raises(AssertionError, match="a marker reads"):
        collect("<!-- example: skip -->\n```bash\nst-tp build\n```\n")


def test_the_readme_commands_get_substituted_as_documented():
    """The substitutions the docstring promises, on the README's own lines."""
    assert substitute(["build", "--config", "smollm2-135m-prompteol-tp", "--out", "runs/x"])[:2] == ["build", str(TINY)]
    assert substitute(["build", "--config", "install-check", "--out", "runs/x"]) == ["build", "--config", "install-check", "--out", "runs/x"]
    sweep = substitute(["sweep", "meta-llama/Llama-2-7b-hf", "--dev", "d.tsv", "--sample", "400", "--tp-end", "2..12"])
    assert sweep[1] == str(TINY) and "--sample" not in sweep and _option(sweep, "--tp-end") == "2..3"
    assert _option(sweep, "--limit") == "20"
    assert _option(substitute(["mteb", "m", "--local-data", "d", "--limit", "200"]), "--limit") == "20"
    assert shell_commands("pip install -e . && st-tp build \\\n --out x  # a comment") == [
        ["pip", "install", "-e", "."], ["st-tp", "build", "--out", "x"]]
    assert os.fspath(TINY) in substitute(["sweep", "packaged:smollm2-135m", "--dev", "d"])
