"""Format check: chat special tokens written as text in candidates or SFT data.

Olmo 3 saw GSM8K fall from 49.4 to 0 when chat-template tokens were in its midtraining data, so
midtrain renders SFT data in plain text and warns when the data itself holds such tokens. The
scanner works on any iterator of (where, text); it looks for the markers of common chat templates
(ChatML, Llama 2/3, Zephyr/Phi, Gemma, GPT-style `<|endoftext|>`), any other `<|name|>` token, and
a tokenizer's own special tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

COMMON = (
    "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    "<|endoftext|>", "<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>",
)  # fmt: skip
GENERIC = r"<\|[A-Za-z0-9_\-]{1,40}\|>"  # any other `<|name|>`
MAX_EXAMPLES = 5
SNIPPET = 40
MAX_STORE_DOCS = 100_000  # documents decoded per token store


class FormatReportRecord(TypedDict):
    """`FormatReport.to_dict()`."""

    texts: int
    counts: dict[str, int]  # most frequent first
    examples: list[list[str]]  # [where, snippet]


@dataclass
class FormatReport:
    """Counts of each special token found, and the first few places it was seen."""

    texts: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)  # (where, snippet)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def warnings(self, what: str) -> list[str]:
        """One line per token (most frequent first), and where the first ones were seen."""
        if not self.total:
            return []
        n_texts = f"{self.texts:,} texts"
        lines = [
            f"{what}: chat special token {tok!r} written as text {n:,} times in {n_texts}; "
            "render the data in plain text (docs/sft.md: format check)"
            for tok, n in self.counts.most_common()
        ]
        lines += [f"  e.g. {where}: {snippet!r}" for where, snippet in self.examples]
        return lines

    def summary(self, what: str) -> str | None:
        """One line: every token with its count, and the first place one was seen."""
        if not self.total:
            return None
        found = ", ".join(f"{t!r} x{n:,}" for t, n in self.counts.most_common())
        where, snippet = self.examples[0]
        return (f"{what}: chat special tokens written as text in {self.texts:,} texts: {found} "
                f"(first: {where}: {snippet!r}); render the data in plain text")  # fmt: skip

    def to_dict(self) -> FormatReportRecord:
        return {"texts": self.texts, "counts": dict(self.counts.most_common()),
                "examples": [list(e) for e in self.examples]}  # fmt: skip


def special_tokens(tokenizer: Any | None) -> list[str]:
    """The markers to look for: the common ones plus `tokenizer`'s own special tokens."""
    own = list(getattr(tokenizer, "all_special_tokens", []) or []) if tokenizer else []
    added = getattr(tokenizer, "added_tokens_decoder", {}) if tokenizer else {}
    own += [t.content for t in added.values() if getattr(t, "special", False)]
    return sorted({*COMMON, *(t for t in own if t.strip())}, key=lambda t: (-len(t), t))


def pattern(tokenizer: Any | None = None) -> re.Pattern[str]:
    literals = "|".join(re.escape(t) for t in special_tokens(tokenizer))
    return re.compile(f"{literals}|{GENERIC}")


def scan(texts: Iterable[tuple[str, str]], tokenizer: Any | None = None) -> FormatReport:
    """Count special-token markers in (where, text) pairs; keep the first few occurrences."""
    rx, report = pattern(tokenizer), FormatReport()
    for where, text in texts:
        report.texts += 1
        for m in rx.finditer(text):
            report.counts[m.group(0)] += 1
            if len(report.examples) < MAX_EXAMPLES:
                lo, hi = max(0, m.start() - SNIPPET), m.end() + SNIPPET
                report.examples.append((where, text[lo:hi]))
    return report


def file_texts(
    path: str, text_field: str | None = None, tokenizer: Any | None = None
) -> Iterable[tuple[str, str]]:
    """(where, text) of a data file or folder: every string of each JSONL row (prompt, response,
    messages, text...), or with `text_field` and for other kinds the documents `data prepare`
    would read; a token store's documents decoded with `tokenizer`."""
    from pathlib import Path

    from midtrain.data import readers
    from midtrain.sft.data import read_rows

    if (Path(path) / "manifest.json").is_file():
        yield from store_texts(path, tokenizer)
        return
    for inp in readers.resolve_inputs([Path(path)]):
        if inp.kind == "jsonl" and text_field is None:
            for where, row in read_rows(inp.path, "check-format"):
                yield where, "\n".join(_strings(row))
            continue
        for i, text in enumerate(readers.iter_texts([inp], text_field or "text")):
            yield f"{inp.path} document {i}", text


def store_texts(
    path: str, tokenizer: Any | None, max_docs: int = MAX_STORE_DOCS
) -> Iterable[tuple[str, str]]:
    """A token store's first `max_docs` training documents, decoded (stores keep no text).

    A marker that the tokenizer maps to its EOS id (e.g. `<|endoftext|>` when it is the EOS)
    cannot be told from a document boundary; every other marker decodes back to its text.
    """
    import numpy as np

    from midtrain.data.store import open_store
    from midtrain.data.tokenizer import tokenizer_hash
    from midtrain.errors import MidtrainError

    store = open_store(path, str(path))
    if tokenizer is None or tokenizer_hash(tokenizer) != store.tokenizer_hash:
        raise MidtrainError(f"{path}: a token store; pass --tokenizer, the tokenizer it was "
                            f"prepared with (hash {store.tokenizer_hash[:12]}), to decode it")  # fmt: skip
    ids, start, n = store.train_tokens(), 0, 0
    for lo in range(0, len(ids), 1 << 22):
        for end in np.flatnonzero(ids[lo : lo + (1 << 22)] == store.eos_id) + lo:
            if n >= max_docs:
                return
            yield f"{path} document {n}", tokenizer.decode(ids[start:end].tolist())
            start, n = int(end) + 1, n + 1


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
