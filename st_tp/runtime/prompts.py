"""Embedding prompts, sentence preprocessing, and tokenization around the <PST> marker.

Token ids follow the official pipeline exactly: the TP prompt's ids are the vanilla prompt's ids with the
<PST> id(s) inserted where the marker stood. No token is added to the tokenizer: the <PST> slot holds a
placeholder id and its input vector is written in embedding space by the TP forward, so nothing in the
vocabulary is resized and a user's literal "<PST>" text stays ordinary text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prompts are read by the CLI's --help, which must not wait for transformers to import
    from transformers import PreTrainedTokenizerBase

    from .config import TPConfig

PST = "<PST>"
TEXT = "{text}"

_EOL = ' this sentence : <PST> "{text}" '
PROMPTS: dict[str, tuple[str, ...]] = {
    # PromptEOL (Jiang et al., 2023)
    "prompteol": ('This sentence : <PST> "{text}" means in one word:"',),
    # Pretended CoT and Knowledge Enhancement (Zhang et al., 2024)
    "cot": ('After thinking step by step ,' + _EOL + 'means in one word:"',),
    "ke": (
        "The essence of a sentence is often captured by its main subjects and actions, while descriptive terms "
        "provide additional but less central details. With this in mind ," + _EOL + 'means in one word:"',
    ),
    # MetaEOL (Lei et al., 2024): 8 meta-task prompts, embeddings averaged
    "metaeol": (
        "In this task, you're presented with a text excerpt. Your task is to categorize the excerpt into a broad "
        "category such as 'Education', 'Technology', 'Health', 'Business', 'Environment', 'Politics', or 'Culture'. "
        "These categories help in organizing content for better accessibility and targeting. For this task,"
        + _EOL + 'should be classified under one general category in one word:"',
        "In this task, you're given a statement and you need to determine whether it's presenting an 'Opinion' or "
        "a 'Fact'. This distinction is vital for information verification, educational purposes, and content "
        "analysis. For this task," + _EOL + 'discriminates between opinion and fact in one word:"',
        "In this task, you're given a review from an online platform. Your task is to generate a rating for the "
        "product based on the review on a scale of 1-5, where 1 means 'extremely negative' and 5 means "
        "'extremely positive'. For this task," + _EOL + 'reflects the sentiment in one word:"',
        "In this task, you're reading a personal diary entry. Your task is to identify the predominant emotion "
        "expressed, such as joy, sadness, anger, fear, or love. For this task," + _EOL + 'conveys the emotion in one word:"',
        "In this task, you're presented with two sentences. Your task is to assess whether the sentences convey "
        "the same meaning. Use 'identical', 'similar', 'different', or 'unrelated' to describe the relationship. "
        "To enhance the performance of this task," + _EOL + 'means in one word:"',
        "In this task, you're given a sentence and a phrase. Your task is to determine if the phrase can be a "
        "contextual synonym within the given sentence. Options include 'yes', 'no', or 'partially'. To enhance "
        "the performance of this task," + _EOL + 'means in one word:"',
        "In this task, you're examining a news article. Your task is to extract the most critical fact from the "
        "article. For this task," + _EOL + 'encapsulates the key fact in one word:"',
        "In this task, you're reviewing a scientific abstract. Your task is to identify the main entities (e.g., "
        "proteins, diseases) and their relations (e.g., causes, treats). For this task,"
        + _EOL + 'highlights the primary entity or relation in one word:"',
    ),
    # The paper's appendix A.3 prompts A-D
    "prompt_a": ("The representative word for sentence <PST> '{text}' is:",),
    "prompt_b": ("Summarize sentence <PST> '{text}' in one word.",),
    "prompt_c": ("Given the keyword <PST>, this sentence: '{text}' means in one word.",),
    "prompt_d": ("This sentence: <PST> and '{text}' means in one word.",),
    # Appendix A.7: no prompt, <PST> right before the sentence
    "none": ("<PST> {text}",),
}
PROMPTS["pretended_cot"] = PROMPTS["cot"]
PROMPTS["knowledge"] = PROMPTS["ke"]


def check_template(template: str, tp: bool) -> None:
    """A template holds '{text}' where the sentence goes and, for TP, a '<PST>' marker."""
    if TEXT not in template:
        raise ValueError(f"template {template!r} has no '{{text}}' placeholder; add one where the sentence goes.")
    if tp and PST not in template:
        raise ValueError(
            f"tp=True needs a '<PST>' marker in the template {template!r}; add '<PST>' (e.g. before the "
            "sentence) or set tp=False."
        )


def resolve_templates(prompt_method: str, template: str | list[str] | None) -> tuple[str, ...]:
    if template is not None:
        return (template,) if isinstance(template, str) else tuple(template)
    return PROMPTS[prompt_method]


def templates_for(config: TPConfig, prompt: str | None = None, task: str | None = None) -> tuple[str, ...]:
    """The templates one call embeds with (MetaEOL has 8, the others one).

    `prompt` is what sentence-transformers passes for `prompt=` / `prompt_name=` / `encode_query`: a template (it
    holds '{text}') replaces the model's prompt; a plain instruction goes before the template, never inside its
    quotes. Without a prompt, `task` ("query"/"document", from encode_query/encode_document) picks a named template
    of `config.templates` when the model has one; otherwise the model's prompt applies."""
    named = config.templates or {}
    base = (named[task],) if task in named else resolve_templates(config.prompt_method, config.template)
    if not prompt:
        return base
    if TEXT in prompt:
        check_template(prompt, config.tp)
        return (prompt,)
    return tuple(prompt + template for template in base)


def preprocess_sentence(sentence: str) -> str:
    """The reference code's preprocessing, in its order: append '.' unless the text ends in . ? " ',
    then '"' -> "'", then a trailing '?' -> '.'. (Stripping happens on the filled prompt.)"""
    if not sentence or sentence[-1] not in ".?\"'":
        sentence += "."
    sentence = sentence.replace('"', "'")
    if sentence.endswith("?"):
        sentence = sentence[:-1] + "."
    return sentence


def remove_pst(template: str) -> str:
    """The vanilla twin of a TP template: the marker goes, with one space next to it."""
    head, sep, tail = template.partition(PST)
    if not sep:
        return template
    if tail.startswith(" "):
        tail = tail[1:]
    elif head.endswith(" "):
        head = head[:-1]
    return remove_pst(head + tail)  # any further markers (a template may carry several)


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    pst_positions: list[int]  # empty without TP
    shared_prefix: int  # how many leading ids equal the template's prefix_ids (usually all of them)


class PromptEncoder:
    """Turns a sentence into the token ids of one template, with <PST> slots and a cacheable prefix.

    For each template, the split point is where the marker stands (or, without a marker, where the sentence
    starts). The ids before it are the same for every sentence: the `prefix_ids` a KV cache can reuse. A sentence
    may merge with the prefix's last token (vanilla '"' + "'" -> '"\''); it then shares only the ids before it.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template: str,
        *,
        tp: bool,
        num_pst: int = 1,
        preprocess: bool = True,
        max_seq_length: int = 512,
        placeholder_id: int = 0,
        parse_special_tokens: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.parse_special_tokens = parse_special_tokens
        if not parse_special_tokens:
            specials = sorted({t for t in tokenizer.all_special_tokens if t and t in template})
            if specials:
                raise ValueError(
                    f"The template {template!r} contains special-token text {specials}, which st_tp tokenizes as plain "
                    "text by default. Set parse_special_tokens=True to turn such text into control tokens."
                )
        self.tp = tp
        self.num_pst = num_pst
        self.preprocess = preprocess
        self.max_seq_length = max_seq_length
        self.placeholder_id = placeholder_id
        self.template = template
        self.vanilla_template = remove_pst(template)
        # Where <PST> goes in the vanilla prompt: the marker's place after the marker and one space are removed.
        marker_at = template.find(PST)
        self.split_char = len(remove_pst(template[:marker_at] + PST)) if marker_at >= 0 else self.vanilla_template.find(TEXT)
        text_at = self.vanilla_template.find(TEXT)
        self.split_char = min(self.split_char, text_at)
        # The cacheable prefix is what every prompt shares and nothing sentence-dependent can reach under causal
        # attention: the text before <PST> with TP (TP writes sentence states into <PST>), before the sentence without.
        prefix_end = self.split_char if tp else text_at
        self.prefix_ids = self._tokenize(self.vanilla_template[:prefix_end].strip(), special=True)

    def _tokenize(self, text: str, special: bool, offsets: bool = False):
        # User text stays text: "<bos>" in a sentence is not a control token (unless parse_special_tokens, as the
        # official code does). `special` adds the tokenizer's own BOS/EOS around the prompt.
        encoded = self.tokenizer(
            text, add_special_tokens=special, split_special_tokens=not self.parse_special_tokens,
            return_offsets_mapping=offsets,
        )
        return encoded["offset_mapping"] if offsets else encoded["input_ids"]

    def fill(self, sentence: str) -> str:
        """The exact prompt string of the official pipeline (vanilla or TP, marker kept)."""
        sentence = preprocess_sentence(sentence) if self.preprocess else sentence
        template = self.template if self.tp else self.vanilla_template
        return template.replace(TEXT, sentence, 1).strip()

    def encode(self, sentence: str) -> EncodedPrompt:
        if self.preprocess:
            sentence = preprocess_sentence(sentence)
        encoded = self._encode(sentence)
        if len(encoded.input_ids) > self.max_seq_length:
            encoded = self._truncate(sentence)
        return encoded

    def _encode(self, sentence: str) -> EncodedPrompt:
        """Ids of the prompt around an already preprocessed sentence."""
        vanilla = self.vanilla_template.replace(TEXT, sentence, 1)
        lead = len(vanilla) - len(vanilla.lstrip())
        vanilla = vanilla.strip()
        split = max(self.split_char - lead, 0)
        ids = self._tokenize(vanilla, special=True)
        pst_positions: list[int] = []
        if self.tp:
            head = self._tokenize(vanilla[:split].rstrip(), special=True)
            if ids[: len(head)] != head:
                # The split point falls inside a token (e.g. '"<PST>A'): tokenize both sides on their own.
                ids = head + self._tokenize(vanilla[len(vanilla[:split].rstrip()) :], special=False)
            pst_positions = list(range(len(head), len(head) + self.num_pst))
            ids = ids[: len(head)] + [self.placeholder_id] * self.num_pst + ids[len(head) :]
        shared = 0  # leading ids in common with the prefix
        while shared < min(len(ids), len(self.prefix_ids)) and ids[shared] == self.prefix_ids[shared]:
            shared += 1
        return EncodedPrompt(ids, pst_positions, shared_prefix=shared)

    def _truncate(self, sentence: str) -> EncodedPrompt:
        """The longest head of the sentence (cut at one of its token boundaries, never in the template) whose prompt
        fits, found by bisection on the prompt as it is really tokenized: counting the sentence's tokens on their own
        would miss how they merge with the quotes around them."""
        fitting = self._encode("")
        if len(fitting.input_ids) > self.max_seq_length:
            raise ValueError(
                f"max_seq_length={self.max_seq_length} is shorter than the prompt template alone "
                f"({len(fitting.input_ids)} tokens with an empty sentence); raise max_seq_length."
            )
        starts = [start for start, _ in self._tokenize(sentence, special=False, offsets=True)]
        low, high = 0, min(len(starts) - 1, self.max_seq_length)  # keep `low` tokens: always fits; `high` may not
        while low < high:
            keep = (low + high + 1) // 2
            candidate = self._encode(sentence[: starts[keep]].rstrip())
            if len(candidate.input_ids) <= self.max_seq_length:
                low, fitting = keep, candidate
            else:
                high = keep - 1
        return fitting


class PromptEncoderCache:
    """The PromptEncoders of one model, per (form, templates): built on first use and kept (the oldest set is
    forgotten after `max_sets`, for callers that pass many distinct instructions)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, placeholder_id: int, max_sets: int = 64, **settings) -> None:
        self.tokenizer, self.placeholder_id, self.max_sets = tokenizer, placeholder_id, max_sets
        self.settings = settings  # PromptEncoder keywords: num_pst, preprocess, max_seq_length, parse_special_tokens
        self._sets: dict[tuple[bool, tuple[str, ...]], list[PromptEncoder]] = {}

    def get(self, tp: bool, templates: tuple[str, ...]) -> list[PromptEncoder]:
        key = (tp, tuple(templates))
        if key not in self._sets:
            if len(self._sets) >= self.max_sets:
                self._sets.pop(next(iter(self._sets)))
            self._sets[key] = [PromptEncoder(self.tokenizer, template, tp=tp, placeholder_id=self.placeholder_id,
                                             **self.settings) for template in templates]
        return self._sets[key]
