"""`midtrain similarity`: token-unigram similarity of data sets, proximity advantage of mixes, and
a finished study's proximity advantage against its SFT gains (docs/similarity.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from midtrain.console import err_console, safe
from midtrain.errors import MidtrainError
from midtrain.similarity import TOP_K, Comparison
from midtrain.unigram import DEFAULT, DOCS, get_mode

console = Console()
GENERIC_STEMS = {"train", "val", "validation", "test", "data"}


def similarity(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="SOURCE sets: NAME=PATH or PATH (a token store folder, or a "
            "text/jsonl file with --tokenizer).",
            show_default=False,
            metavar="SOURCE",
        ),
    ] = None,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="A TARGET set, like SOURCE (repeat).", metavar="TARGET"),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Checkpoint or tokenizer folder for raw text/jsonl."),
    ] = None,
    docs: Annotated[int, typer.Option(help="Documents sampled per set.")] = DOCS,
    top_k: Annotated[int, typer.Option(help="Token types compared (top by p + q).")] = TOP_K,
    seed: Annotated[int, typer.Option(help="Seed of the document sample.")] = 0,
    mode: Annotated[
        str,
        typer.Option(
            help="default, or paper: the paper's protocol (JS in nats, a document's first 512 "
            "tokens, mixes by document count)."
        ),
    ] = DEFAULT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG (heatmap; --study: scatter).")
    ] = None,
    mix: Annotated[
        list[str] | None,
        typer.Option("--mix", help="NAME=SRC:RATIO,SRC:RATIO over SOURCE names (repeat)."),
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="The pretraining mix, e.g. web:1.0.")
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option("--study", help="A finished study with an SFT probe: proximity vs SFT gain."),
    ] = None,
) -> None:
    """Token-unigram similarity (Liu et al. 2025) of SOURCE sets to --to TARGET sets."""
    _check_numbers(docs, top_k, mode)
    _check_plot(plot)
    if study is not None:
        if sources or to or mix or base or tokenizer:
            raise MidtrainError("--study: takes no SOURCE, --to, --mix, --base or --tokenizer; "
                                "drop them (the study names its mixes and SFT sets)")  # fmt: skip
        return _study(study, docs, top_k, seed, mode, as_json, plot)
    if not sources or not to:
        raise MidtrainError("similarity: give SOURCE... and at least one --to TARGET (or --study "
                            "DIR); see `midtrain similarity --help`")  # fmt: skip
    src = _named(sources, "SOURCE")
    tgt = _named(to, "--to")
    for name, path in tgt.items():
        if name in src and src[name].resolve() != path.resolve():
            raise MidtrainError(f"--to {path}: the name {name!r} is taken by SOURCE {src[name]}; "
                                f"name one of them, e.g. --to {name}-sft={path}")  # fmt: skip
    mixes = _mixes(mix or [], base, set(src))
    result = compare(src, tgt, mixes, tokenizer=tokenizer, docs=docs, top_k=top_k, seed=seed,
                     mode=mode)  # fmt: skip
    if plot is not None:
        from midtrain.commands.similarity_views import heatmap

        _write_plot(plot, heatmap(result))
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    _print_comparison(result)


def _print_comparison(result: Comparison) -> None:
    """The sets, the similarity matrix, the settings and each mix's proximity advantage."""
    from midtrain.commands.similarity_views import (
        matrix_table,
        proximity_view,
        sets_table,
        settings_line,
    )

    console.print(sets_table(result["sets"]))
    console.print(matrix_table(result))
    console.print(settings_line(result), highlight=False)
    if result["proximity"]:
        console.print(proximity_view(result))


def compare(
    src: dict[str, Path], tgt: dict[str, Path], mixes: dict[str, dict[str, float]], *,
    tokenizer: Path | None, docs: int, top_k: int, seed: int, mode: str = DEFAULT,
) -> Comparison:  # fmt: skip
    """Count every set once, then the matrix and each mix's advantage over `base`, as JSON data."""
    from midtrain.data.tokenizer import load_tokenizer
    from midtrain.similarity import matrix, mixture, proximity_advantage, similarity
    from midtrain.unigram import load_set

    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    loaded = {}
    for where, named in (("SOURCE", src), ("--to", tgt)):
        for name, path in named.items():
            if name not in loaded:
                loaded[name] = load_set(name, path, f"{where} {name}", tok, docs, seed,
                                        mode=mode)  # fmt: skip
    grid = matrix([loaded[n] for n in src], [loaded[n] for n in tgt], top_k)
    out: Comparison = {
        "settings": {
            "docs": docs,
            "top_k": top_k,
            "seed": seed,
            "mode": mode,
            "score": "0.4 cosine + 0.3 jaccard + 0.3 / (1 + js)",
        },  # fmt: skip
        "sets": {n: u.summary() for n, u in loaded.items()},
        "matrix": {s: {t: v.to_dict() for t, v in row.items()} for s, row in grid.items()},
        "proximity": {},
    }
    if mixes:
        parts = {n: loaded[n] for n in src}
        base = mixture(parts, mixes["base"], "base")
        out["base"] = base.where
        for name, ratios in ((n, r) for n, r in mixes.items() if n != "base"):
            m = mixture(parts, ratios, name)
            out["proximity"][name] = {
                "mix": ratios,
                "targets": {t: {"advantage": proximity_advantage(m, base, loaded[t], top_k),
                                "mix_score": similarity(m, loaded[t], top_k).score,
                                "base_score": similarity(base, loaded[t], top_k).score}
                            for t in tgt},
            }  # fmt: skip
    return out


def _check_numbers(docs: int, top_k: int, mode: str = DEFAULT) -> None:
    get_mode(mode)
    if docs < 1:
        raise MidtrainError(f"--docs {docs}: must be >= 1; e.g. --docs {DOCS}")
    if top_k < 1:
        raise MidtrainError(f"--top-k {top_k}: must be >= 1; e.g. --top-k {TOP_K}")


def _check_plot(plot: Path | None) -> None:
    if plot is None:
        return
    if plot.suffix.lower() != ".png":
        raise MidtrainError(f"--plot {plot}: not a .png file name; e.g. --plot similarity.png")
    if not plot.parent.resolve().is_dir():
        raise MidtrainError(f"--plot {plot}: folder {plot.parent} does not exist; create it")


def _named(specs: list[str], where: str) -> dict[str, Path]:
    """{name: path} from NAME=PATH or PATH (the name: the file's stem, or parent/stem for a
    generic stem such as train or data); a name given twice is an error."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            p = Path(spec)
            name, path = _stem(p), spec
            name = f"{p.parent.name}/{name}" if name in GENERIC_STEMS and p.parent.name else name
        if name in out and out[name] != Path(path):
            raise MidtrainError(f"{where} {spec}: the name {name!r} is taken by {out[name]}; "
                                "name the sets, e.g. web=PATH")  # fmt: skip
        out[name] = Path(path)
    return out


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".gz", ".jsonl", ".txt", ".parquet"):
        name = name.removesuffix(suffix)
    return name or str(p)


def _mixes(specs: list[str], base: str | None, sources: set[str]) -> dict[str, dict[str, float]]:
    """{name: ratios} of every --mix, plus "base"; both or neither of --mix and --base."""
    if bool(specs) != (base is not None):
        raise MidtrainError("--mix and --base go together: the advantage is sim(mix, target) - "
                            "sim(base, target); pass both, e.g. --mix m=web:0.7,math:0.3 "
                            "--base web:1.0")  # fmt: skip
    out = {}
    for where, spec in [*(("--mix", s) for s in specs), *([("--base", base)] if base else [])]:
        name, sep, body = spec.partition("=")
        name, body = (name, body) if sep else (spec, spec)
        name = "base" if where == "--base" else name
        if name in out:
            raise MidtrainError(f"{where} {spec}: the mix name {name!r} is used twice; rename it")
        out[name] = _ratios(body, f"{where} {spec}", sources)
    return out


def _ratios(body: str, where: str, sources: set[str]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for part in body.split(","):
        src, sep, r = part.partition(":")
        try:
            if not sep:
                raise ValueError
            ratios[src.strip()] = ratios.get(src.strip(), 0.0) + float(r)
        except ValueError:
            raise MidtrainError(
                f"{where}: {part!r} is not SOURCE:RATIO; e.g. web:0.7,math:0.3"
            ) from None
        if src.strip() not in sources:
            raise MidtrainError(f"{where}: {src.strip()!r} is not a SOURCE; use one of "
                                f"{', '.join(sorted(sources))}")  # fmt: skip
    return ratios


def _write_plot(path: Path, data: bytes) -> None:
    from midtrain.io import atomic_write_bytes

    atomic_write_bytes(path, data)
    err_console.print(f"plot: {safe(path)}", highlight=False)


def _study(
    study: Path, docs: int, top_k: int, seed: int, mode: str, as_json: bool, plot: Path | None
) -> None:
    from midtrain.commands.similarity_views import scatter, study_tables
    from midtrain.stats.proximity import proximity_table

    table = proximity_table(study, docs=docs, top_k=top_k, seed=seed, mode=mode)
    if plot is not None:
        _write_plot(plot, scatter(table))
    if as_json:
        print(json.dumps(table.to_dict(), sort_keys=True))
        return
    for t in study_tables(table):
        console.print(t)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's command to the app (see midtrain/cli.py)."""
    app.command("similarity")(similarity)
