"""`midtrain data prepare | tokenizer | show | mix` and `midtrain bench mix`: thin wrappers over the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.console import safe
from midtrain.data.tokenizer import DEFAULT_VOCAB
from midtrain.errors import MidtrainError

if TYPE_CHECKING:
    from midtrain.data.prepare import PrepareResult

console = Console()


def prepare(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Files or folders: .txt, .jsonl, .parquet, save_to_disk, .npy, Megatron PREFIX.idx."
        ),
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
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing store OUT/NAME.")
    ] = False,
    allow_special_text: Annotated[
        bool,
        typer.Option(
            "--allow-special-text",
            help="Keep text that holds the tokenizer's special tokens (e.g. <|endoftext|>).",
        ),
    ] = False,
) -> None:
    """Tokenise INPUT... into the token store OUT/NAME (atomic; same inputs, same bytes)."""
    from midtrain.data.prepare import prepare_data

    if train_tokenizer != (vocab_size is not None):
        raise MidtrainError("--train-tokenizer and --vocab-size N go together; pass both")
    res = prepare_data(
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
        force=force,
        allow_special_text=allow_special_text,
    )
    _print_prepared(res)


def _print_prepared(res: PrepareResult) -> None:
    store = res.store
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {safe(w)}", soft_wrap=True)
    console.print(store_table([store]))
    if found := store.manifest.get("special_text"):
        counts = ", ".join(f"{t} x{n:,}" for t, n in found.items())
        console.print(
            f"special tokens kept as text: {safe(counts)} (manifest special_text)", soft_wrap=True
        )
    if res.identical:
        console.print(
            f"already prepared, identical: {safe(store.path)} (same inputs, tokenizer and "
            "options; nothing written; --force rebuilds it)",
            soft_wrap=True,
        )
        return
    console.print(f"store: {safe(store.path)}", soft_wrap=True)
    if res.tokenizer_dir is not None:
        console.print(
            f"tokenizer: {safe(res.tokenizer_dir)} (trained on this source only; prepare the "
            f"other sources with --tokenizer {safe(res.tokenizer_dir)}, or train one over several "
            "sources with `midtrain data tokenizer`)",
            soft_wrap=True,
        )


def tokenizer(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Files or folders of every source: .txt, .jsonl, .parquet, save_to_disk."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="New folder for the HF tokenizer.")],
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Vocabulary size.")
    ] = DEFAULT_VOCAB,
    text_field: Annotated[str, typer.Option(help="jsonl field / parquet column.")] = "text",
) -> None:
    """Train one byte-level BPE over INPUT... (several sources) and save it to OUT."""
    from midtrain.data.tokenizer import train_tokenizer_on_inputs

    res = train_tokenizer_on_inputs(inputs, out, vocab_size, text_field)
    console.print(
        f"tokenizer: {safe(res.path)} ({len(res.tokenizer):,} tokens, trained on "
        f"{res.n_docs:,} documents of {res.n_files:,} inputs)",
        soft_wrap=True,
    )
    console.print(
        f"prepare each source with: midtrain data prepare ... --tokenizer {safe(res.path)}",
        soft_wrap=True,
    )


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
    groups["data"].command("tokenizer")(tokenizer)
    groups["data"].command("show")(show)
    groups["data"].command("mix")(mix)
    groups["bench"].command("mix")(bench_mix)
