"""`midtrain study init`: a commented starter study for a checkpoint and its token stores.

Values are written by `tomli_w` (never by string formatting); each field is preceded by its
description from the schema, so the starter documents itself. The file is validated as a study
before it is written.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_text
from midtrain.study.config import Candidate, EvalSpec, StudyConfig, parse_study
from midtrain.train.config import ScheduleConfig

TOP = ("name", "checkpoint", "tokens", "seeds", "fractions")


def _comment(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    unit = (
        (f.json_schema_extra or {}).get("unit") if isinstance(f.json_schema_extra, dict) else None
    )
    return f"# {f.description}" + (f" [{unit}]" if unit else "")


def _entry(model: type[BaseModel], key: str, value: Any) -> str:
    return f"{_comment(model, key)}\n{tomli_w.dumps({key: value}).strip()}\n"


def _parse_stores(items: list[str]) -> dict[str, str]:
    stores: dict[str, str] = {}
    for i, item in enumerate(items):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise MidtrainError(f"--store[{i}]: {item!r} is not NAME=STORE_DIR, e.g. web=data/web")
        if name.strip() in stores:
            raise MidtrainError(
                f"--store[{i}]: {name.strip()!r} is given twice; name each store once"
            )
        stores[name.strip()] = path.strip()
    if len(stores) < 2:
        raise MidtrainError(
            "--store: give the base mix's store and at least one candidate store, "
            "e.g. --store web=data/web --store math=data/math"
        )
    return stores


def starter(
    checkpoint: Path, stores: dict[str, str], base: str, tasks: list[str], out: Path
) -> str:
    """The text of a starter study (paths relative to the file's folder).

    Top-level values first, then the candidates (an inline array), then the tables: TOML puts
    every key after a table header into that table.
    """
    from midtrain.train.checkpoint import read_trainer_state

    here = out.parent.resolve()
    top = {
        "name": out.stem, "checkpoint": os.path.relpath(checkpoint.resolve(), here),
        "tokens": 100_000_000, "seeds": [0, 1, 2], "fractions": [0.3],
    }  # fmt: skip
    text = ["# A midtrain study (docs/studies.md; every field: docs/config.md).", ""]
    text += [_entry(StudyConfig, k, top[k]) for k in TOP]
    cands = [{"name": n, "mix": {n: 1.0}} for n in stores if n != base]
    text.append(_comment(Candidate, "mix").replace("# ", "# candidates: ", 1))
    text.append(_entry(StudyConfig, "candidates", cands))
    text.append("[stores]  " + _comment(StudyConfig, "stores"))
    text.append(
        tomli_w.dumps({k: os.path.relpath(Path(v).resolve(), here) for k, v in stores.items()})
    )
    text.append("[base]  " + _comment(StudyConfig, "base"))
    text.append(tomli_w.dumps({base: 1.0}))
    text.append("[schedule]")
    text.append(_entry(ScheduleConfig, "name", "linear"))
    text.append(_entry(ScheduleConfig, "final_lr_fraction", 0.0))
    state = read_trainer_state(checkpoint)
    if state is None:
        text.append(
            "# REQUIRED: this checkpoint has no midtrain_state, so the LR it was trained at is\n"
            "# unknown; set it here (the cooldown starts from it).\n# start_lr = 3e-4\n"
        )
    else:
        text.append(f"# start_lr omitted: the checkpoint's own LR ({state.lr:.4g}) is used.\n")
    text.append("[eval]")
    text.append(_entry(EvalSpec, "tasks", tasks))
    if not tasks:
        text.append("# Without tasks a study reports per-domain loss but gives no verdict.\n")
    text.append('# include_path = "tasks"   # a folder of your own lm-eval task YAMLs\n')
    return "\n".join(text)


def check_init(
    checkpoint: Path, store_items: list[str], out: Path, base: str | None
) -> tuple[dict[str, str], str]:
    """The inputs every `study init` checks first: (stores by name, the base store's name)."""
    from midtrain.data.store import open_store
    from midtrain.train.checkpoint import check_hf_folder

    check_hf_folder(checkpoint, "CHECKPOINT")
    stores = _parse_stores(store_items)
    for name, path in stores.items():
        open_store(path, f"--store {name}")
    base = base or next(iter(stores))
    if base not in stores:
        raise MidtrainError(f"--base {base!r}: not one of the --store names ({', '.join(stores)})")
    if out.exists():
        raise MidtrainError(f"--out {out} exists; pick a new file name (init never overwrites)")
    return stores, base


def write_starter(
    checkpoint: Path, store_items: list[str], out: Path, *, base: str | None, tasks: str
) -> Path:
    stores, base = check_init(checkpoint, store_items, out, base)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    text = starter(checkpoint, stores, base, names, out)
    parse_study(tomllib.loads(text), source=str(out), base_dir=out.parent.resolve())
    return atomic_write_text(out, text)
