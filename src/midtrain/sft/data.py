"""SFT rows: read JSONL, render with the plain-text template, tokenise with a response mask.

A row is `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}` with at
least one assistant message. Rendering gives segments (text, is_response); each segment is
tokenised on its own (no special tokens added) and the tokenizer's EOS id follows every response.
Bad rows are one-line errors naming the file and line; nothing is skipped silently.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.sft.config import SftConfig, SftTemplate

EOS = None  # the segment that stands for the tokenizer's EOS token
Segment = tuple[str | None, bool]  # (text or EOS, is part of a response)
ROW_FIX = 'write rows as {"prompt": ..., "response": ...} or {"messages": [{"role", "content"}]}'


@dataclass(frozen=True)
class Example:
    ids: np.ndarray  # int64 token ids
    response: np.ndarray  # bool: the token is part of a response (or its EOS)
    response_bytes: int  # UTF-8 bytes of the response text (EOS counts 0)


@dataclass
class Examples:
    """Tokenised examples of one file, with what the seq-len policy did to them."""

    examples: list[Example]
    rows: int
    truncated: int = 0
    dropped: int = 0
    where: str = ""
    sources: list[tuple[str, str]] = field(default_factory=list)  # (where, rendered text)


def read_rows(
    path: str | Path, what: str
) -> Iterator[tuple[str, dict[str, Any]]]:  # a user's JSONL rows (`render` checks each)
    """(`file line N`, row) for every non-blank line of a JSONL file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise MidtrainError(f"{what} {path}: no such file; pass a JSONL file of SFT rows")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise MidtrainError(f"{where}: not valid UTF-8; re-encode the file") from None
            except json.JSONDecodeError as e:
                raise MidtrainError(f"{where}: invalid JSON ({e.msg}); fix or remove it") from None
            yield where, row


def render(row: Any, where: str, t: SftTemplate) -> list[Segment]:
    """The row as plain-text segments; raises on a row of neither shape or an empty response."""
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        return _render_messages(row["messages"], where, t)
    if isinstance(row, dict) and {"prompt", "response"} <= set(row):
        prompt, response = (_text(row, k, where) for k in ("prompt", "response"))
        _nonempty(response, where, "response")
        return [(t.prompt.format(prompt=prompt), False), *_response(response, t)]
    has = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
    raise MidtrainError(f'{where}: no "prompt"/"response" or "messages" (has: {has}); {ROW_FIX}')


def _render_messages(messages: list[Any], where: str, t: SftTemplate) -> list[Segment]:
    segs: list[Segment] = []
    for i, m in enumerate(messages):
        at = f"{where} message {i}"
        if not isinstance(m, dict):
            raise MidtrainError(f"{at}: not an object; {ROW_FIX}")
        role, content = _text(m, "role", at), _text(m, "content", at)
        if role not in t.roles:
            known = ", ".join(t.roles)
            raise MidtrainError(f"{at}: unknown role {role!r}; use one of {known} or add it to "
                                "template.roles")  # fmt: skip
        name = t.roles[role]
        if role == "assistant":
            _nonempty(content, at, "assistant content")
            segs += [(t.assistant.format(role=name), False), *_response(content, t)]
            if i < len(messages) - 1:
                segs.append(("\n", False))
        else:
            segs.append((t.message.format(role=name, content=content), False))
    if not any(r for _, r in segs):
        raise MidtrainError(f"{where}: no assistant message, so nothing to train on; {ROW_FIX}")
    return segs


def _response(text: str, t: SftTemplate) -> list[Segment]:
    return [(t.response.format(response=text), True), (EOS, True)]


def _text(obj: dict[str, Any], key: str, where: str) -> str:  # a user's JSONL row or message
    if key not in obj:
        raise MidtrainError(f'{where}: no "{key}" field; {ROW_FIX}')
    if not isinstance(obj[key], str):
        raise MidtrainError(f'{where}: "{key}" must be a string, not {type(obj[key]).__name__}; '
                            "write it as a JSON string")  # fmt: skip
    return obj[key]


def _nonempty(text: str, where: str, what: str) -> None:
    if not text.strip():
        raise MidtrainError(f"{where}: empty {what}; fill it in or remove the row")


def tokenise(segs: list[Segment], tok: Any) -> Example:
    texts = [s for s, _ in segs if s is not EOS]
    enc = iter(tok(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    ids: list[int] = []
    resp: list[bool] = []
    n_bytes = 0
    for text, is_resp in segs:
        piece = [tok.eos_token_id] if text is EOS else next(enc)
        ids += piece
        resp += [is_resp] * len(piece)
        if is_resp and text is not EOS:
            n_bytes += len(text.encode("utf-8"))
    return Example(np.asarray(ids, np.int64), np.asarray(resp, bool), n_bytes)


def fit(ex: Example, seq_len: int, policy: str) -> Example | None:
    """Apply the seq-len policy: the example, its prompt cut from the left, or None (dropped)."""
    n = len(ex.ids)
    if n <= seq_len:
        return ex
    cut = n - seq_len
    first = int(np.argmax(ex.response))  # the first response token
    if policy == "drop" or first <= cut:  # the response (with one token before it) must fit
        return None
    return Example(ex.ids[cut:], ex.response[cut:], ex.response_bytes)


def load_examples(path: str, what: str, cfg: SftConfig, tok: Any, seq_len: int) -> Examples:
    """Read, render, tokenise and fit every row of `path` (errors name the line)."""
    out = Examples([], 0, where=f"{what} {path}")
    for where, row in read_rows(path, what):
        segs = render(row, where, cfg.template)
        out.rows += 1
        out.sources.append((where, "".join(s for s, _ in segs if s is not EOS)))
        ex = tokenise(segs, tok)
        fitted = fit(ex, seq_len, cfg.overlong)
        if fitted is None:
            out.dropped += 1
            continue
        out.truncated += fitted is not ex
        out.examples.append(fitted)
    if out.rows == 0:
        raise MidtrainError(f"{what} {path}: no rows; {ROW_FIX}")
    if not out.examples:
        raise MidtrainError(
            f"{what} {path}: all {out.rows} rows are longer than seq_len {seq_len} "
            "(responses included); raise seq_len or shorten the rows"
        )
    return out


def split(ex: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(train, val): a seeded share of the rows held out when no validation file is given."""
    n = len(ex.examples)
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise MidtrainError(
            f"{ex.where}: {n} usable rows cannot be split into train and val; "
            "add rows or pass --val VAL.jsonl"
        )
    order = np.random.default_rng([seed, 1]).permutation(n)
    val_idx, train_idx = set(order[:n_val].tolist()), order[n_val:]
    pick = [ex.examples[i] for i in sorted(train_idx.tolist())]
    val = [e for i, e in enumerate(ex.examples) if i in val_idx]
    train = Examples(pick, ex.rows - n_val, ex.truncated, ex.dropped, ex.where, ex.sources)
    return train, Examples(val, n_val, where=f"{ex.where} (held out)")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training examples in `epoch` (a seeded permutation per epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def micro_batches(batch: list[Example], micro: int) -> list[list[Example]]:
    """A step's examples sorted by length, then cut into micro batches: less padding, and the
    step's gradient is the same (a sum over its examples)."""
    ordered = sorted(batch, key=lambda e: len(e.ids))
    return [ordered[i : i + micro] for i in range(0, len(ordered), micro)]


def pad_fraction(examples: list[Example], batch_size: int, micro: int, seed: int) -> float:
    """Share of padding in the first epoch's micro batches."""
    lens = np.array([len(e.ids) for e in examples])
    order, padded = epoch_order(len(lens), seed, 0), 0
    for k in range(0, len(order), batch_size):
        step = np.sort(lens[order[k : k + batch_size]])
        padded += sum(len(c) * int(c.max()) for c in np.split(step, range(micro, len(step), micro)))
    return 1 - float(lens.sum()) / padded if padded else 0.0


def collate(batch: list[Example], pad_id: int, train_on_prompt: bool) -> tuple[Any, Any]:
    """(ids, labels) tensors, right-padded to the longest example; labels -100 where untrained.

    Right padding needs no attention mask: with causal attention, real tokens never see the pads
    after them, and pads carry no label.
    """
    import torch

    width = max(len(e.ids) for e in batch)
    ids = np.full((len(batch), width), pad_id, np.int64)
    labels = np.full((len(batch), width), -100, np.int64)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = e.ids
        keep = np.ones_like(e.response) if train_on_prompt else e.response
        labels[i, : len(e.ids)] = np.where(keep, e.ids, -100)
    labels[:, 0] = -100  # the first token is never predicted
    return torch.from_numpy(ids), torch.from_numpy(labels)


def n_targets(batch: list[Example], train_on_prompt: bool) -> int:
    """Predicted tokens of a batch (the loss is their mean over the optimizer step)."""
    if train_on_prompt:
        return sum(len(e.ids) - 1 for e in batch)
    return sum(int(e.response[1:].sum()) for e in batch)
