"""The SentEval transfer tasks' files, read exactly as SentEval reads them (facebookresearch/SentEval,
`senteval/{binary,sst,trec,mrpc}.py`, the `loadFile` of each task), so that every sentence is the same token list.

* MR, CR, SUBJ, MPQA: Latin-1, the whole file split with `str.splitlines` (which also breaks at \\x0b, \\x0c, \\x1c-\\x1e
  and \\x85), each line split on whitespace; the label is the file.
* SST-2: UTF-8, `sentence<TAB>label` a line (the line stripped first).
* TREC: Latin-1, `COARSE:fine question` a line; the label is the coarse class (6), the fine one is dropped.
* MRPC: UTF-8, a header line (the train file starts with a byte-order mark, which SentEval keeps on that dropped
  line), then `Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String`.

Where SentEval would stop on a bad line with a bare IndexError or assertion, these readers raise `TaskDataError`:
one line that names the file, the line and the format expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from st_tp.data import check_utf8

TREC_CLASSES = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}  # SentEval's tgt2idx
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"


class TaskDataError(ValueError):
    """A task's data is missing or malformed; `task` names the task (the run goes on with the others)."""

    def __init__(self, task: str, message: str) -> None:
        super().__init__(f"{task}: {message}")
        self.task = task


@dataclass
class RawSplit:
    """One split in file order: a token list per example (two for a pair task) and its label."""

    examples: list[tuple[list[str], ...]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def _existing(task: str, path: Path, layout: str) -> Path:
    if not path.is_file():
        what = "folder" if not path.parent.is_dir() else "file"
        missing = path.parent if what == "folder" else path
        raise TaskDataError(task, f"no {what} {missing} (expected SentEval's data/downstream layout: {layout})")
    return path


def _bad_line(task: str, path: Path, line: int, problem: str, expected: str) -> TaskDataError:
    return TaskDataError(task, f"{path} line {line}: {problem}; expected {expected}")


def read_labelled_lines(task: str, folder: Path, files: tuple[tuple[str, int], ...]) -> RawSplit:
    """MR, CR, SUBJ, MPQA (SentEval's BinaryClassifierEval.loadFile): the files' lines in order, each file's label."""
    layout = " and ".join(f"{folder.name}/{name}" for name, _ in files) + ", one sentence a line"
    examples, labels = [], []
    for name, label in files:
        path = _existing(task, folder / name, layout)
        with open(path, encoding="latin-1") as f:  # = io.open; every byte decodes: such a file cannot be malformed
            lines = f.read().splitlines()
        if not lines:
            raise TaskDataError(task, f"{path} is empty; expected one sentence a line")
        examples += [(line.split(),) for line in lines]
        labels += [label] * len(lines)
    return RawSplit(examples, labels)


def read_sst(task: str, path: Path) -> RawSplit:
    """SST-2 (SentEval's SSTEval.loadFile, nclasses=2)."""
    expected = "'sentence<TAB>label' with label 0 or 1, one example a line"
    _existing(task, path, "SST/binary/sentiment-{train,dev,test}, 'sentence<TAB>label' a line")
    _utf8(task, path)
    examples, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.strip().split("\t")
            if len(fields) < 2:
                raise _bad_line(task, path, number, f"no tab in {line.strip()[:60]!r}", expected)
            label = _int(fields[1])
            if label not in (0, 1):
                raise _bad_line(task, path, number, f"label {fields[1][:20]!r}", expected)
            examples.append((fields[0].split(),))
            labels.append(label)
    if not labels:
        raise TaskDataError(task, f"{path} is empty; expected {expected}")
    return RawSplit(examples, labels)


def read_trec(task: str, path: Path) -> RawSplit:
    """TREC (SentEval's TRECEval.loadFile): the coarse class before ':', the question after the fine label."""
    expected = f"'COARSE:fine question' with COARSE one of {', '.join(TREC_CLASSES)}"
    _existing(task, path, "TREC/train_5500.label and TREC/TREC_10.label, 'COARSE:fine question' a line")
    examples, labels = [], []
    with open(path, encoding="latin-1") as f:
        for number, line in enumerate(f, 1):
            target, colon, rest = line.strip().partition(":")
            fine, space, question = rest.partition(" ")
            if not colon or not space:
                raise _bad_line(task, path, number, f"{line.strip()[:60]!r}", expected)
            if target not in TREC_CLASSES:
                raise _bad_line(task, path, number, f"class {target[:20]!r}", expected)
            examples.append((question.split(),))
            labels.append(TREC_CLASSES[target])
    if not labels:
        raise TaskDataError(task, f"{path} is empty; expected {expected}")
    return RawSplit(examples, labels)


def read_mrpc(task: str, path: Path) -> RawSplit:
    """MRPC (SentEval's MRPCEval.loadFile): the header line dropped, then label and the two sentences of each pair."""
    expected = f"5 tab-separated fields '{MRPC_HEADER.replace(chr(9), '<TAB>')}' with Quality 0 or 1"
    _existing(task, path, "MRPC/msr_paraphrase_{train,test}.txt, a header line then one pair a line")
    _utf8(task, path)
    examples, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.strip().split("\t")
            if number == 1:  # SentEval drops the first line unread; a file without the header would lose a pair
                if fields[0].lstrip("\ufeff") != "Quality":
                    raise _bad_line(task, path, 1, f"no header line ({line.strip()[:40]!r})",
                                    f"the header '{MRPC_HEADER.replace(chr(9), '<TAB>')}' first")
                continue
            if len(fields) < 5:
                raise _bad_line(task, path, number, f"{len(fields)} field{'s' * (len(fields) != 1)}", expected)
            label = _int(fields[0])
            if label not in (0, 1):
                raise _bad_line(task, path, number, f"Quality {fields[0][:20]!r}", expected)
            examples.append((fields[3].split(), fields[4].split()))
            labels.append(label)
    if not labels:
        raise TaskDataError(task, f"{path} holds no pair after its header line; expected {expected}")
    return RawSplit(examples, labels)


def _int(text: str) -> int | None:
    try:
        return int(text)  # what SentEval calls, so ' 1' and '+1' read as it reads them
    except ValueError:
        return None


def _utf8(task: str, path: Path) -> None:
    try:
        check_utf8(path)
    except ValueError as error:
        raise TaskDataError(task, str(error)) from None
