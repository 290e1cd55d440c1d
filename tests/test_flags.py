"""Only the CLI speaks in flags (issue 32 item 3): library messages name settings (`text_column`), and the CLI
maps them to flags in one table (st_tp.cli.SETTING_FLAGS) when it prints a library error."""

import ast
import re

from st_tp.cli import SETTING_FLAGS, build_parser, flag_message
from tests.conftest import ROOT

CLI_FILES = {"st_tp/cli.py", "st_tp/evaluation/cli.py"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (documentation, not messages)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _message_strings(path) -> list[str]:
    """Every string constant of a module outside docstrings (f-string pieces included)."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_no_cli_flag_is_spelled_outside_the_cli():
    """pip command lines are the one exception (`pip install --no-deps ...` is what a user types)."""
    found = []
    for path in sorted((ROOT / "st_tp").rglob("*.py")):
        name = str(path.relative_to(ROOT))
        if name in CLI_FILES:
            continue
        for text in _message_strings(path):
            if "pip install" in text:
                continue
            found += [f"{name}: {flag} in {text[:70]!r}" for flag in FLAG.findall(text)]
    assert not found, "CLI flags outside the CLI:\n" + "\n".join(found)


def test_every_setting_in_the_table_is_a_flag_of_its_command():
    """The table names only flags that exist, and every corpus setting the CLI takes is in it."""
    from dataclasses import fields

    from st_tp.corpus import CorpusOptions

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    known = {flag for command in commands.values() for action in command._actions for flag in action.option_strings}
    assert set(SETTING_FLAGS.values()) <= known, set(SETTING_FLAGS.values()) - known
    encode = {flag for action in commands["encode"]._actions for flag in action.option_strings}
    for field in fields(CorpusOptions):
        flag = "--" + field.name.replace("_", "-")
        if flag in encode:
            assert SETTING_FLAGS.get(field.name) == flag, field.name


def test_flag_message_speaks_in_flags():
    assert flag_message("shard_size must be at least 1, got 0.") == "--shard-size must be at least 1, got 0."
    assert (flag_message("input a.jsonl: no column 'body' (text_column); rerun with on_bad_row='skip'.")
            == "--input a.jsonl: no column 'body' (--text-column); rerun with --on-bad-row skip.")
    assert flag_message("or set keep_duplicate_ids=True to") == "or set --keep-duplicate-ids to"
    assert flag_message("device='cuda' with engine='ray'") == "--device cuda with --engine ray"
    assert flag_message("holds a run with another setting shard_size: was 100") == "holds a run with another setting shard_size: was 100"
    assert flag_message("model x: the input is empty") == "model x: the input is empty"
