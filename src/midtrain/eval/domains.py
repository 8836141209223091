"""Per-domain bits-per-byte (Paloma-style) on a token store's held-out documents.

Every held-out document is scored with the EOS token as its only context, so every token of the
document is predicted once. Documents longer than the model's context are cut into windows that
overlap by one token (each window restarts its context).
bpb = summed NLL (nats) / (ln 2 x UTF-8 bytes of the original text).
"""

from __future__ import annotations

import numpy as np

from midtrain.data.store import TokenStore
from midtrain.eval.results import LN2, DomainExample


def context_length(model) -> int:
    """The model's context window (1024 when its config does not say)."""
    n = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    return int(n or 1024)


def domain_records(
    model, store: TokenStore, *, name: str | None = None, batch_size: int = 32,
    max_len: int | None = None,
) -> list[DomainExample]:  # fmt: skip
    """Per held-out document: nll (nats), tokens, bytes, bpb. Windows of <= max_len tokens.

    `name` labels the records (default: the store's own name).
    """
    import torch

    name = name or store.name
    docs, nbytes = store.heldout_docs(), store.heldout_bytes()
    max_len = max_len or context_length(model)
    windows: list[tuple[int, np.ndarray]] = []  # (doc index, ids incl. one context token)
    for i, doc in enumerate(docs):
        seq = np.concatenate([[store.eos_id], np.asarray(doc, dtype=np.int64)])
        for start in range(0, len(seq) - 1, max_len - 1):
            windows.append((i, seq[start : start + max_len]))
    nll = np.zeros(len(docs), dtype=np.float64)
    order = sorted(range(len(windows)), key=lambda k: len(windows[k][1]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            chunk = [windows[k] for k in order[b : b + batch_size]]
            width = max(len(w) for _, w in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, w) in enumerate(chunk):
                ids[r, : len(w)] = torch.from_numpy(w)
                mask[r, : len(w)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
            sums = (-tok_lp.sum(dim=1)).double().cpu().numpy()
            for r, (doc_i, _) in enumerate(chunk):
                nll[doc_i] += sums[r]
    return [
        DomainExample(domain=name, doc_id=i, nll=float(nll[i]), tokens=int(len(docs[i])),
                      bytes=int(nbytes[i]),
                      bpb=float(nll[i] / (LN2 * nbytes[i])) if nbytes[i] else float("nan"))
        for i in range(len(docs))
    ]  # fmt: skip
