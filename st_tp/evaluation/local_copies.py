"""The one table of what st_tp knows about local copies of mteb tasks: which are the same rows as mteb's, and how
the others differ (from ../shared/data/SOURCES.md, which holds the provenance and the checks behind each line).

A differing copy is scored with mteb's own settings all the same, but its score is not the one mteb would report,
so summary.md gives it a note and never puts the paper's figure beside it; a copy not in this table gets the same
treatment, since nothing says it is mteb's data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalCopy:
    """One known local copy of an mteb task."""

    differs: str | None = None  # how it differs from mteb's version, in a few words; None: the same rows as mteb's
    # Label names in the order of mteb's integer label ids, where mteb's dataset holds ids (None: the names, sorted).
    label_ids: tuple[str, ...] | None = None

    @property
    def comparable(self) -> bool:
        """Whether its score may stand beside the paper's figure for mteb's version."""
        return self.differs is None


_SAME = LocalCopy()
LOCAL_COPIES: dict[str, LocalCopy] = {
    # classification (mteb/<name>/ folders and banking77.{train,test}.tsv)
    "AmazonCounterfactualClassification": _SAME,  # en subset
    "Banking77Classification": _SAME,
    "EmotionClassification": LocalCopy(label_ids=("sadness", "joy", "love", "anger", "fear", "surprise")),
    "MassiveIntentClassification": _SAME,  # en subset; mteb's labels are the intent names
    "MassiveScenarioClassification": _SAME,  # en subset; mteb's labels are the scenario names
    "TweetSentimentExtractionClassification": LocalCopy(
        differs="train is 1 row short (27,480 rows, mteb 27,481: Kaggle's one empty text), so mteb's seeded draw "
                "of training texts differs",
        label_ids=("negative", "neutral", "positive"),
    ),
    # pair classification, clustering, summarization
    "TwitterURLCorpus": LocalCopy(differs="the original test split only (9,334 pairs); mteb scores train and test "
                                          "together (51,534 pairs)"),
    "TwentyNewsgroupsClustering": LocalCopy(differs="one set, the 7,532 subject lines of the 20news-bydate test "
                                                    "split; mteb scores 10 sets of its own (59,545 texts)"),
    "SummEval": LocalCopy(differs="the 4 extractive systems' summaries are a retokenized variant (548,093 "
                                  "characters, mteb 548,510); the expert scores are equal"),
    # STS (<stem>.test.tsv)
    **dict.fromkeys(["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R", "BIOSSES"], _SAME),
}

UNKNOWN_COPY = LocalCopy(differs="not a copy st_tp knows (st_tp.evaluation.local_copies): compare with care")


def local_copy(name: str) -> LocalCopy:
    """What is known of a local copy of the mteb task `name` (UNKNOWN_COPY for any other name)."""
    return LOCAL_COPIES.get(name, UNKNOWN_COPY)
