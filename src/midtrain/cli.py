"""The `midtrain` command line: thin wrappers over the Python API.

Each command group lives in `midtrain/commands/<group>.py` and exposes `register(app, groups)`.
A `MidtrainError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import typer

from midtrain import __version__, env
from midtrain.errors import MidtrainError

# Bad options and arguments: typer's BadParameter derives from its click's UsageError.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

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
        "data": "Prepare token stores: text, jsonl, parquet, HF datasets, .npy, Megatron .idx.",
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
    from midtrain.commands import (
        bench_io,  # midtrain bench eval | prepare
        config,
        data,
        demo,
        evaluate,
        export,  # midtrain study export
        gpu,
        integrate,
        memory,
        merge,
        optimize,
        sft,
        similarity,
        study,
        study_import,  # midtrain study import
        train,
        trust,
    )

    modules = (
        data,
        train,
        sft,
        evaluate,
        study,
        export,
        study_import,
        integrate,
        merge,
        optimize,
        similarity,
        demo,
        config,
        trust,
        gpu,
        memory,
        bench_io,
    )
    for module in modules:
        module.register(app, GROUPS)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: every error is one line on stderr (`error: <where>: <what>; <fix>`).

    Exit codes: 0 done, 1 some runs of a study failed, 2 bad input, 3 a run diverged,
    130 interrupted (SIGINT or SIGTERM; run the same command to resume).
    """
    from midtrain.env import die_with_launcher

    die_with_launcher()  # a rank of a study's N-process run dies with its chain
    if not sys.stdout.isatty():  # piped or logged: tables at their width, not cut to 80 columns
        os.environ.setdefault("COLUMNS", "200")
    with _interrupt_on_signals():
        code = _run(argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun rank whose process group is torn down and whose files are written: leave
        # without interpreter finalization, where gloo objects still referenced by the wrapped
        # model can abort the process ("terminate called without an active exception")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
_signals: list[int] = []


@contextlib.contextmanager
def _interrupt_on_signals() -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt once, wherever the command is: each
    stage's handler marks its run or probe "interrupted", then the command exits 130 with one
    line. A second signal while that runs is ignored, so the statuses get written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signals.clear()
    before = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _on_signal(signum: int, frame: Any) -> None:
    if _signals:
        return
    _signals.append(signum)
    raise KeyboardInterrupt


def _run(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)  # an Exit comes back as its code
    except MidtrainError as e:
        return _fail(str(e), e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except UsageError as e:  # bad options, missing arguments, bad values
        where = " ".join(e.ctx.command_path.split()[1:]) if e.ctx else "midtrain"
        fix = f"see `{e.ctx.command_path if e.ctx else 'midtrain'} --help`"
        message = " ".join(e.format_message().split()).rstrip(".")
        return _fail(f"{where or 'midtrain'}: {message}; {fix}", 2)
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    if code == INTERRUPTED and _signals:  # typer turns a KeyboardInterrupt into Exit(130)
        return _interrupted()
    return code if isinstance(code, int) else 0


def _interrupted() -> int:
    if os.environ.get("RANK", "0") == "0":
        print("interrupted; run the same command to resume", file=sys.stderr, flush=True)
    return INTERRUPTED


def _fail(message: str, code: int) -> int:
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: rank 0 says it
        print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    main()
