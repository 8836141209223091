"""The `midtrain` command line: thin wrappers over the Python API.

Each command group lives in `midtrain/commands/<group>.py` and exposes `register(app, groups)`.
A `MidtrainError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from midtrain.errors import MidtrainError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

app = typer.Typer(
    name="midtrain",
    help="Microanneal studies: which data belongs in the final phase of pretraining?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
GROUPS: dict[str, typer.Typer] = {
    name: typer.Typer(help=help_, no_args_is_help=True)
    for name, help_ in {
        "data": "Prepare token stores from text, jsonl, parquet, HF datasets or .npy tokens.",
        "study": "Run and analyse microanneal studies defined in one TOML file.",
        "bench": "Benchmarks that report ratios measured in one process.",
    }.items()
}
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)


def _register_all() -> None:
    from midtrain.commands import data, demo, evaluate, study, train

    for module in (data, train, evaluate, study, demo):
        module.register(app, GROUPS)


_register_all()


def main() -> None:
    if not sys.stdout.isatty():  # piped or logged: tables at their width, not cut to 80 columns
        os.environ.setdefault("COLUMNS", "200")
    try:
        app()
    except MidtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
