"""A store already at the destination of `data prepare`: read it, refuse it, keep it when preparing
again would write the same store, and say what replacing it changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from midtrain.data import readers
from midtrain.data.store import FORMAT, ManifestRecord, TokenStore
from midtrain.data.tokenizer import tokenizer_hash
from midtrain.data.writer import PrepareOptions
from midtrain.errors import MidtrainError
from midtrain.io import hash_file


def existing_manifest(dest: Path, name: str) -> ManifestRecord | None:
    """The manifest of the store at `dest` ({} when unreadable), None when there is none.

    Not checked against `StoreManifest` (it may be damaged or old): read it with `.get`."""
    if not dest.exists():
        return None
    if not (dest / "manifest.json").is_file():
        raise MidtrainError(
            f"--name {name}: {dest} exists and is not a token store; choose another --name "
            "or move it away"
        )
    try:
        man = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return man if isinstance(man, dict) else {}


def exists_error(name: str, dest: Path, old: ManifestRecord) -> MidtrainError:
    made = (
        f"made with tokenizer {str(old.get('tokenizer_hash'))[:12]} from inputs "
        f"{str(old.get('input_hash'))[:12]}"
        + (" with --allow-special-text" if old.get("special_text") else "")
        if old
        else "its manifest.json is unreadable"
    )
    return MidtrainError(
        f"--name {name}: the store {dest} already exists ({made}); pass --force to replace it "
        "(studies and runs that used it will recompute) or choose another --name"
    )


def identical_store(
    dest: Path, old: ManifestRecord, tok: Any, resolved: list[readers.Input], opts: PrepareOptions
) -> TokenStore | None:
    """The store at `dest` when preparing it again would write the same store, else None."""
    want: ManifestRecord = {  # the keys that must match
        "format": FORMAT,
        "tokenizer_hash": tokenizer_hash(tok),
        "seed": opts.seed,
        "heldout_fraction": opts.heldout_fraction,
    }
    if any(i.kind == "megatron" for i in resolved):
        if len(resolved) != 1:
            return None
        from midtrain.data.megatron import megatron_input_hash, read_index

        ix = read_index(resolved[0].path.resolve())
        want["input_hash"] = megatron_input_hash(ix, hash_file(ix.bin))
        if old.get("train", {}).get("file") not in ("train.bin", str(ix.bin)):
            return None  # read in place from a .bin elsewhere
    elif any(i.kind == "npy" for i in resolved):
        if len(resolved) != 1 or (opts.npy_dtype and old.get("dtype") != opts.npy_dtype):
            return None
        from midtrain.data.npy import npy_input_hash

        path = resolved[0].path.resolve()
        want["input_hash"] = npy_input_hash(path, hash_file(path))
        if old.get("train", {}).get("file") != str(path):
            return None
    else:
        want["input_hash"] = readers.input_hash(resolved, opts.text_field)
        want["text_field"] = opts.text_field
    if old.get("special_text") and not opts.allow_special_text:
        return None
    if any(old.get(k) != v for k, v in want.items()):
        return None
    try:
        return TokenStore.open(dest)
    except MidtrainError:  # damaged files: only --force can rebuild it
        return None


def replaced_warnings(dest: Path, old: ManifestRecord | None, store: TokenStore) -> tuple[str, ...]:
    """The warning for a store replaced with --force by one of other content."""
    if old is None or old.get("content_hash") == store.content_hash:
        return ()
    old_tok = str(old.get("tokenizer_hash"))
    what = "its content changed"
    if old_tok != store.tokenizer_hash:
        what = (
            f"it was made with tokenizer {old_tok[:12]}, now with {store.tokenizer_hash[:12]} "
            "(checkpoints of the old tokenizer cannot train or evaluate on it)"
        )
    return (
        f"replaced {dest}: {what}; this invalidates the content keys of every study and run "
        "that used it (they name stores by content hash): their runs will not be reused and "
        "evaluations recompute",
    )
