"""A study's candidate data is plain text: a candidate's store may not hold special tokens.

OLMo 3 keeps midtraining data plain text: chat-template tokens in its midtraining data took
GSM8K from 49.4 to 0 (`sft/formatcheck.py`). So before anything is created, `study run` (and its
`--dry-run`) counts the tokenizer's special tokens in every store a candidate's mix names (the
manifest's `special_text` record, else a scan of the store's ids: `data/special.py`) and refuses
a store that holds any, in one line naming the candidate's field, unless the candidate sets
`allow_special_tokens = true`; then it warns. The base mix's stores are the control's own data
and are not checked. A store tokenised with another tokenizer than the checkpoint's is not
scanned here: the run planner refuses it with its own error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from midtrain.console import err_console, safe
from midtrain.data.special import SpecialCounts, store_special_counts
from midtrain.errors import MidtrainError

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore


def check_candidate_stores(cfg: Any, stores: dict[str, TokenStore]) -> list[str]:
    """Refuse a candidate's store holding special tokens unless the candidate allows them; print
    and return one warning per store that holds some and is allowed."""
    counts = _Counts(cfg.checkpoint, stores)
    warnings = []
    for i, cand in enumerate(cfg.candidates):
        for src in (s for s, r in cand.mix.items() if r > 0):
            found = counts.get(src)
            if found is None or not found.total:
                continue
            what = (f"candidates[{i}].mix.{src}: store {stores[src].path} holds the tokenizer's "
                    f"special tokens {found.text()}")  # fmt: skip
            if not cand.allow_special_tokens:
                raise MidtrainError(
                    f"{what}; midtraining data should be plain text (docs/studies.md): remove "
                    f"them and prepare the store again, or set allow_special_tokens = true in "
                    f"candidates[{i}] ({cand.name}) to train on them"
                )
            warnings.append(f"{what}, allowed by allow_special_tokens")
    for line in warnings:
        err_console.print(f"warning: {safe(line)}", highlight=False)
    return warnings


class _Counts:
    """Each store's special-token counts, found once; the checkpoint's tokenizer is loaded only
    when a store without a manifest record has to be scanned."""

    def __init__(self, checkpoint: str, stores: dict[str, TokenStore]):
        self.checkpoint, self.stores = checkpoint, stores
        self.found: dict[str, SpecialCounts | None] = {}
        self.tok: Any = None

    def get(self, src: str) -> SpecialCounts | None:
        if src not in self.found:
            store, tok = self.stores[src], None
            if "special_text" not in store.manifest:
                tok = self.tokenizer()
                if tok[1] != store.tokenizer_hash:  # its ids mean other tokens; the planner
                    tok = None  # refuses the store with its own error
            self.found[src] = store_special_counts(store, tok[0] if tok else None)
        return self.found[src]

    def tokenizer(self) -> tuple[Any, str]:
        """(the checkpoint's tokenizer, its hash), loaded once."""
        if self.tok is None:
            from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

            tok = load_tokenizer(self.checkpoint)
            self.tok = (tok, tokenizer_hash(tok))
        return self.tok
