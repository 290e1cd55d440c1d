"""The runtime a saved model carries: the entry file its modules.json names (token_prepending.py) and every runtime
file that file imports, found the way transformers' dynamic modules find them when the folder is loaded (relative
imports, followed recursively), so what is written is exactly what a load without st_tp needs.

config.json also gets an `auto_map` entry for AutoModelForSequenceClassification, the class CrossEncoder loads a
folder with: under `trust_remote_code=True` it resolves to a class that refuses in one line, instead of a classifier
head nobody trained on top of the pruned decoder. (st_tp's own AutoModel load does not consult it.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

ENTRY_FILE = "token_prepending.py"
ENTRY_CLASS = f"{Path(ENTRY_FILE).stem}.TokenPrepending"  # the class reference a saved modules.json holds
REFUSED_AUTO_CLASSES = {"AutoModelForSequenceClassification": f"{Path(ENTRY_FILE).stem}.NotACrossEncoder"}


def runtime_files() -> list[Path]:
    """The entry file and the runtime files it needs. Read from this file's own folder: st_tp/runtime when st_tp is
    installed, the folder's copy (in transformers' module cache) when the shipped runtime is running."""
    entry = Path(__file__).with_name(ENTRY_FILE)
    return [entry, *sorted(Path(path) for path in get_relative_import_files(entry))]


def ship_runtime(folder: str | Path) -> None:
    folder = Path(folder)
    for path in runtime_files():
        shutil.copyfile(path, folder / path.name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**(config.get("auto_map") or {}), **REFUSED_AUTO_CLASSES}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
