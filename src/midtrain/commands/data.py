"""`midtrain data prepare | show | mix` and `midtrain bench mix`: thin wrappers over the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.errors import MidtrainError

console = Console()


def prepare(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Files or folders: .txt, .jsonl, .parquet, save_to_disk, .npy."),
    ],
    name: Annotated[str, typer.Option("--name", help="Source name; the store is OUT/NAME.")],
    out: Annotated[Path, typer.Option("--out", help="Data folder holding the stores.")],
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="An existing HF tokenizer folder.")
    ] = None,
    train_tokenizer: Annotated[
        bool, typer.Option("--train-tokenizer", help="Train a byte-level BPE on the inputs.")
    ] = False,
    vocab_size: Annotated[
        int | None, typer.Option("--vocab-size", help="Vocabulary of --train-tokenizer.")
    ] = None,
    tokenizer_out: Annotated[
        Path | None,
        typer.Option("--tokenizer-out", help="Where --train-tokenizer saves (OUT/tokenizer)."),
    ] = None,
    heldout_fraction: Annotated[
        float, typer.Option(help="Share of whole documents held out for evaluation.")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the held-out choice.")] = 0,
    text_field: Annotated[str, typer.Option(help="jsonl field / parquet column.")] = "text",
    npy_dtype: Annotated[
        str | None, typer.Option(help="uint16|uint32 for headerless .npy (default: by vocab).")
    ] = None,
) -> None:
    """Tokenise INPUT... into the token store OUT/NAME (atomic; same inputs, same bytes)."""
    from midtrain.data.prepare import prepare_data

    if train_tokenizer != (vocab_size is not None):
        raise MidtrainError("--train-tokenizer and --vocab-size N go together; pass both")
    store = prepare_data(
        inputs,
        name=name,
        out=out,
        tokenizer=tokenizer,
        train_vocab_size=vocab_size,
        tokenizer_out=tokenizer_out,
        heldout_fraction=heldout_fraction,
        seed=seed,
        text_field=text_field,
        npy_dtype=npy_dtype,
    )
    console.print(store_table([store]))
    console.print(f"store: {store.path}")


def show(
    stores: Annotated[list[Path], typer.Argument(help="Token store folders.")],
) -> None:
    """Print the manifest summary of token stores."""
    from midtrain.data.store import TokenStore

    console.print(store_table([TokenStore.open(p) for p in stores]))


def mix(
    stores: Annotated[Path, typer.Option("--stores", help="Data folder: one store per subfolder.")],
    components: Annotated[
        list[str],
        typer.Option("--mix", help="SOURCE=RATIO[:MAX_REPETITION], repeated, e.g. web=0.7"),
    ],
    tokens: Annotated[int, typer.Option(help="Token budget of the run.")],
    seq_len: Annotated[int, typer.Option(help="Sequence length.")] = 256,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
) -> None:
    """Check a mix against its stores and print the token table (nothing is trained)."""
    from midtrain.data.store import TokenStore
    from midtrain.mix import MixtureSampler, validate_mix

    if not stores.is_dir():
        raise MidtrainError(f"--stores {stores}: no such folder; run `midtrain data prepare`")
    if seq_len < 1:
        raise MidtrainError(f"--seq-len {seq_len}: must be >= 1, e.g. 256")
    if tokens < seq_len:
        raise MidtrainError(
            f"--tokens {tokens}: less than one sequence of --seq-len {seq_len} tokens; raise it"
        )
    found = {p.name: p for p in sorted(stores.iterdir()) if (p / "manifest.json").is_file()}
    parsed = validate_mix([_parse_component(i, c) for i, c in enumerate(components)], set(found))
    opened = {c.source: TokenStore.open(found[c.source]) for c in parsed}
    sampler = MixtureSampler(opened, parsed, seq_len, tokens // seq_len, seed)
    console.print(sampler.token_table())
    console.print(f"fingerprint {sampler.fingerprint()[:16]}")


def _parse_component(i: int, text: str) -> dict[str, object]:
    src, sep, rest = text.partition("=")
    ratio, _, rep = rest.partition(":")
    try:
        if not sep:
            raise ValueError
        return {"source": src, "ratio": float(ratio), "max_repetition": float(rep or 1.0)}
    except ValueError:
        raise MidtrainError(
            f"mix[{i}]: {text!r} is not SOURCE=RATIO[:MAX_REPETITION], e.g. web=0.7:2"
        ) from None


def bench_mix(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    tokens: Annotated[int, typer.Option(help="Tokens of generated data (>= 100M).")] = 100_000_000,
    seq_len: Annotated[int, typer.Option(min=1, help="Sequence length.")] = 2048,
    batch: Annotated[int, typer.Option(min=1, help="Sequences per call (a trainer batch).")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of data and sampler.")] = 0,
) -> None:
    """Mixer throughput on a generated multi-source mix of memmapped stores."""
    from midtrain.bench.mix import run_bench

    if tokens < seq_len * batch:
        raise MidtrainError(
            f"--tokens {tokens}: less than one batch ({batch} x {seq_len}); pass e.g. 100000000"
        )

    result = run_bench(tokens=tokens, seq_len=seq_len, batch=batch, seed=seed)
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    console.print(
        f"mixer: {result['mixer_tokens_per_s']:,} tokens/s over {result['tokens_read']:,} tokens "
        f"(target {result['target_tokens_per_s']:,}; init {result['init_seconds']}s)"
    )


def store_table(stores: list) -> Table:
    table = Table(title="token stores")
    cols = ("name", "dtype", "train docs", "train tokens", "held-out docs", "content hash")
    for col in cols:
        table.add_column(col, justify="left" if col in ("name", "content hash") else "right")
    for s in stores:
        table.add_row(
            s.name,
            s.manifest["dtype"],
            f"{s.n_train_docs:,}",
            f"{s.n_train_tokens:,}",
            f"{s.n_heldout_docs:,}",
            s.content_hash[:16],
        )
    return table


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the app (see midtrain/cli.py)."""
    groups["data"].command("prepare")(prepare)
    groups["data"].command("show")(show)
    groups["data"].command("mix")(mix)
    groups["bench"].command("mix")(bench_mix)
