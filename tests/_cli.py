"""Run the `midtrain` CLI in process: its exit code, stdout and stderr."""

from __future__ import annotations

import sys

import pytest

from midtrain.cli import main


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err
