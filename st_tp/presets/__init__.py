"""The presets: YAML files of TPConfig keys (plus the `base_model` they were made for) shipped with st_tp.

A preset is given by name (`install-check`, `smollm2-135m-prompteol-tp`) or as a path to a YAML file. The files live
in this folder, as package data, so a name resolves in an editable install, in a plain `pip install`, and from any
working directory; the repository's `configs/` is a link to this folder, so `configs/<name>.yaml` paths keep working
in a clone. A `configs/<name>.yaml` in the current folder (your own presets) is found by name too, before these.
`st_tp.build` and `st-tp build --config` both resolve names here.
"""

from __future__ import annotations

import difflib
from pathlib import Path

PRESET_FOLDER = Path(__file__).resolve().parent


def _folders() -> list[Path]:
    return [Path.cwd() / "configs", PRESET_FOLDER]


def preset_names() -> list[str]:
    """Every preset name found (the current folder's configs/ and the shipped presets), sorted."""
    return sorted({p.stem for folder in _folders() if folder.is_dir() for p in folder.glob("*.yaml")})


def find_preset(name_or_path: str | Path) -> Path:
    """The YAML file of a preset given by path or by name; a ValueError naming the closest name otherwise."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    name = Path(name_or_path).name.removesuffix(".yaml")
    for folder in _folders():
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    available = preset_names()
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "."
    raise ValueError(f"{name_or_path}: no such preset file or name{hint} Presets: {', '.join(available) or 'none found'}.")
