"""The model card a saved st_tp model carries: training-free TP over a named base, its settings, and install and load
lines that work as written: the folder carries its runtime code, so it needs only sentence-transformers and
transformers (`trust_remote_code=True`), instead of sentence-transformers' "finetuned from" card."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, metadata, requires
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import Requirement
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

# What loading a saved folder needs (its runtime imports these and torch, which sentence-transformers brings).
FOLDER_NEEDS = ("sentence-transformers", "transformers")

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from st_tp.base_model import BaseModel
    from st_tp.runtime.config import TPConfig


@dataclass
class TPModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data plus what a TP card shows; `base_model` (the card's YAML) is set only for a hub
    id, so a local path never becomes a link."""

    tp_base_model: str = ""
    tp_base_model_hub: str | None = None
    tp_settings: dict[str, Any] = field(default_factory=dict)
    tp_templates: dict[str, str] = field(default_factory=dict)
    tp_base_requires: str | None = None
    tp_repository: str | None = None
    tp_folder_needs: list[str] = field(default_factory=list)
    template_path: Path = field(default=Path(__file__).parent / "templates" / "model_card.md", init=False, repr=False)


def attach_model_card(model: SentenceTransformer, base: BaseModel, tp_config: TPConfig, licence: str | None) -> None:
    """Give `model` a TP model card (written by `model.save`)."""
    settings = {key: value for key, value in tp_config.to_dict().items() if key not in ("device", "templates")}
    card = TPModelCardData(
        model_name=f"Token Prepending over {base.hub_id or Path(base.name).name}",
        license=licence,
        tags=["sentence-transformers", "feature-extraction", "token-prepending", "st_tp", f"prompt-{tp_config.prompt_method}"],
        tp_base_model=base.name,
        tp_base_model_hub=base.hub_id,
        tp_settings=settings,
        tp_templates=dict(tp_config.templates or {}),
        tp_base_requires=base.requires,
        tp_repository=repository_url(),
        tp_folder_needs=folder_requirements(),
    )
    card.base_model = base.hub_id
    model.model_card_data = card
    card.register_model(model)


def repository_url() -> str | None:
    """Where st_tp's source lives, if the installed package declares it (a `Repository` or `Source` entry of
    [project.urls]); None otherwise, and the card names no repository."""
    try:
        urls = metadata("st_tp").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("repository", "source") and url.strip():
            return url.strip()
    return None


def folder_requirements() -> list[str]:
    """pip requirement strings for what a saved folder needs, with the version ranges st_tp declares for them."""
    try:
        declared = {req.name: req for req in map(Requirement, requires("st_tp") or []) if not req.marker}
    except PackageNotFoundError:
        declared = {}
    def pinned(name: str) -> str:  # lower bound first: "transformers>=5.21,<6"
        specifiers = sorted(declared[name].specifier, key=lambda spec: spec.operator.startswith("<")) if name in declared else []
        return name + ",".join(map(str, specifiers))

    return [pinned(name) for name in FOLDER_NEEDS]
