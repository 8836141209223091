"""The `midtrain` command line: thin wrappers over the Python API.

Each command group lives in `midtrain/commands/<group>.py` and exposes `register(app, groups)`.
A `MidtrainError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from midtrain import __version__, env
from midtrain.errors import MidtrainError

env.setup()

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
        "config": "The config schema: docs/config.md.",
    }.items()
}
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"midtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Microanneal studies: which data belongs in the final phase of pretraining?"""


def _register_all() -> None:
    from midtrain.commands import config, data, demo, evaluate, study, train, trust

    for module in (data, train, evaluate, study, demo, config, trust):
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
