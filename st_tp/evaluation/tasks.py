"""The paper's appendix task sets (Tables 7-12, Table 1), pinned to the mteb task versions the paper used."""

from __future__ import annotations

import mteb

# Names as in mteb 1.x, which the paper (Dec 2024) evaluated; mteb 2 keeps them and adds ".v2" successors.
TASK_SETS: dict[str, list[str]] = {
    "classification": [
        "AmazonCounterfactualClassification", "AmazonPolarityClassification", "AmazonReviewsClassification",
        "Banking77Classification", "EmotionClassification", "ImdbClassification", "MassiveIntentClassification",
        "MassiveScenarioClassification", "MTOPDomainClassification", "MTOPIntentClassification",
        "ToxicConversationsClassification", "TweetSentimentExtractionClassification",
    ],
    "pair-classification": ["SprintDuplicateQuestions", "TwitterSemEval2015", "TwitterURLCorpus"],
    "reranking": ["AskUbuntuDupQuestions", "MindSmallReranking", "SciDocsRR", "StackOverflowDupQuestions"],
    "clustering": [
        "ArxivClusteringP2P", "ArxivClusteringS2S", "BiorxivClusteringP2P", "BiorxivClusteringS2S",
        "MedrxivClusteringP2P", "MedrxivClusteringS2S", "RedditClustering", "RedditClusteringP2P",
        "StackExchangeClustering", "StackExchangeClusteringP2P", "TwentyNewsgroupsClustering",
    ],
    "summarization": ["SummEval"],
    "sts": ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R", "BIOSSES"],
}
TASK_SETS["appendix"] = [name for names in TASK_SETS.values() for name in names]
# Beyond the paper: small English BEIR retrieval tasks; queries and documents use the model's query/document templates.
TASK_SETS["retrieval"] = ["SciFact", "NFCorpus", "ArguAna"]

# Multilingual tasks: the English subset only, as on the MTEB English leaderboard the paper reports.
ENGLISH_SUBSET = {
    "AmazonCounterfactualClassification": "en", "AmazonReviewsClassification": "en",
    "MassiveIntentClassification": "en", "MassiveScenarioClassification": "en",
    "MTOPDomainClassification": "en", "MTOPIntentClassification": "en",
}

# Llama-2-7B, PromptEOL vs PromptEOL+TP, x100 (paper Tables 7-12; STS12-SICK-R from Table 1).
PAPER_SCORES: dict[str, tuple[float, float]] = {
    "AmazonCounterfactualClassification": (70.83, 71.71), "AmazonPolarityClassification": (88.48, 94.57),
    "AmazonReviewsClassification": (46.03, 47.77), "Banking77Classification": (78.94, 82.24),
    "EmotionClassification": (48.35, 51.05), "ImdbClassification": (79.10, 81.44),
    "MassiveIntentClassification": (72.49, 75.22), "MassiveScenarioClassification": (75.41, 78.69),
    "MTOPDomainClassification": (90.49, 93.63), "MTOPIntentClassification": (81.48, 83.16),
    "ToxicConversationsClassification": (64.51, 68.68), "TweetSentimentExtractionClassification": (60.55, 61.15),
    "SprintDuplicateQuestions": (43.02, 51.61), "TwitterSemEval2015": (65.61, 67.70), "TwitterURLCorpus": (78.97, 80.90),
    "AskUbuntuDupQuestions": (53.88, 57.02), "MindSmallReranking": (29.97, 29.89), "SciDocsRR": (71.38, 77.49),
    "StackOverflowDupQuestions": (40.63, 43.19),
    "ArxivClusteringP2P": (34.87, 43.57), "ArxivClusteringS2S": (31.19, 39.82), "BiorxivClusteringP2P": (19.56, 25.75),
    "BiorxivClusteringS2S": (24.34, 31.92), "MedrxivClusteringP2P": (27.65, 26.41), "MedrxivClusteringS2S": (34.53, 35.98),
    "RedditClustering": (24.69, 31.69), "RedditClusteringP2P": (48.52, 48.54), "StackExchangeClustering": (42.16, 44.90),
    "StackExchangeClusteringP2P": (33.56, 33.03), "TwentyNewsgroupsClustering": (27.61, 36.98),
    "SummEval": (28.88, 30.11), "BIOSSES": (62.66, 69.73),
    "STS12": (58.81, 66.90), "STS13": (77.01, 83.12), "STS14": (66.34, 74.31), "STS15": (73.22, 79.87),
    "STS16": (73.56, 80.03), "STSBenchmark": (71.66, 80.67), "SICK-R": (69.64, 75.40),
}


def task_names(spec: str | list[str]) -> list[str]:
    """'sts', 'appendix', 'sts,STS12' or a list: set names expand, other names pass through, order kept."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip() for p in parts if p.strip()):
        for name in TASK_SETS.get(part, [part]):
            if name not in names:
                names.append(name)
    return names


def resolve_tasks(spec: str | list[str]) -> list[mteb.AbsTask]:
    """mteb task objects (metadata only; nothing is downloaded until a task runs)."""
    tasks = []
    for name in task_names(spec):
        subset = ENGLISH_SUBSET.get(name)
        try:
            tasks.append(mteb.get_task(name, hf_subsets=[subset] if subset else None, eval_splits=["test"]))
        except KeyError as error:  # mteb's own message holds its did-you-mean; add ours: the set names
            hint = str(error.args[0] if error.args else error).removeprefix("KeyError: ")
            raise ValueError(f"unknown task {hint} Task sets: {', '.join(TASK_SETS)}; or comma-separated mteb "
                             "task names.") from None
    return tasks


def describe(task: mteb.AbsTask) -> str:
    """One line: name, type, main score, pinned dataset revision, subsets, and any newer version we skip."""
    meta = task.metadata
    newer = getattr(meta, "superseded_by", None)
    subsets = ",".join(task.hf_subsets) if meta.is_multilingual else "default"
    line = f"{meta.name:40s} {meta.type:18s} {meta.main_score:32s} rev {str(meta.dataset.get('revision'))[:8]} subset {subsets}"
    line += f"  (paper's version; mteb also has {newer})" if newer else ""
    copy, taken = getattr(task, "local_copy", None), getattr(task, "slice_note", None)  # local tasks only
    line += f"  ({taken})" if taken else ""
    return line + (f"  (differs from mteb: {copy.differs})" if copy is not None and not copy.comparable else "")
