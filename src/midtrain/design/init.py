"""`midtrain study init`: a commented starter study for a checkpoint and its token stores.

Values are written by `tomli_w` (never by string formatting); each field is preceded by its
description from the schema, so the starter documents itself. `tokens`, `seeds` and `seq_len` are
sized to the checkpoint and the stores, so the starter passes its own `--dry-run` as written
(given a start LR: the checkpoint's midtrain_state or --start-lr). The file is validated as a
study before it is written.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w
from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_text
from midtrain.study.config import Candidate, EvalSpec, StudyConfig, parse_study
from midtrain.train.config import ScheduleConfig

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore

TOP = ("name", "checkpoint", "tokens", "seeds", "fractions", "seq_len", "batch_tokens",
       "full_run_tokens")  # fmt: skip


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


@dataclass(frozen=True)
class Sizing:
    """What `study init` sizes to the checkpoint and stores."""

    tokens: int
    seeds: list[int]
    seq_len: int | None  # None: the schema's default fits the model
    batch_tokens: int | None  # None: the schema's default fits the stores
    note: str  # the comment above `tokens`: how it was chosen


def starter(checkpoint: Path, stores: dict[str, str], base: dict[str, float], tasks: list[str],
            out: Path, size: Sizing, include: Path | None = None, start_lr: float | None = None,
            full_run_tokens: int | None = None) -> str:  # fmt: skip
    """The text of a starter study (paths relative to the file's folder).

    Top-level values first, then the candidates (an inline array), then the tables: TOML puts
    every key after a table header into that table.
    """
    from midtrain.train.checkpoint import read_trainer_state

    here = out.parent.resolve()
    top = {
        "name": out.stem, "checkpoint": os.path.relpath(checkpoint.resolve(), here),
        "tokens": size.tokens, "seeds": size.seeds, "fractions": [0.3], "seq_len": size.seq_len,
        "batch_tokens": size.batch_tokens, "full_run_tokens": full_run_tokens,
    }  # fmt: skip
    text = ["# A midtrain study (docs/studies.md; every field: docs/config.md).", ""]
    for k in TOP:
        if top[k] is not None:
            text += [f"# {size.note}"] if k == "tokens" else []
            text.append(_entry(StudyConfig, k, top[k]))
    cands = [{"name": n, "mix": {n: 1.0}} for n in stores if n not in base]
    text.append(_comment(Candidate, "mix").replace("# ", "# candidates: ", 1))
    text.append(_entry(StudyConfig, "candidates", cands))
    text.append("[stores]  " + _comment(StudyConfig, "stores"))
    text.append(
        tomli_w.dumps({k: os.path.relpath(Path(v).resolve(), here) for k, v in stores.items()})
    )
    text.append("[base]  " + _comment(StudyConfig, "base"))
    text.append(tomli_w.dumps(base))
    text.append("[schedule]")
    text.append(_entry(ScheduleConfig, "name", "linear"))
    text.append(_entry(ScheduleConfig, "final_lr_fraction", 0.0))
    state = read_trainer_state(checkpoint)
    if start_lr is not None:
        text.append(_entry(ScheduleConfig, "start_lr", start_lr))
    elif state is None:
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
    if include is not None:
        text.append(_entry(EvalSpec, "include_path", os.path.relpath(include.resolve(), here)))
    else:
        text.append('# include_path = "tasks"   # a folder of your own lm-eval task YAMLs\n')
    return "\n".join(text)


def sizing(
    checkpoint: Path, stores: dict[str, str], base: dict[str, float], tokens: int | None
) -> Sizing:
    """`tokens` (default: 100M, or a round number a bit under what the stores hold within one
    epoch, base_max_repetition = 1), the seeds (3 with one candidate, 2 with more: at least 2
    degrees of freedom for the run-to-run noise), seq_len (when the model's positions are fewer
    than the default's) and batch_tokens (when the stores hold less than 4 default steps)."""
    from midtrain.data.store import open_store
    from midtrain.study.plan import study_max_tokens

    seeds = [0, 1, 2] if len(stores) - len(base) == 1 else [0, 1]
    seq_len = _seq_len(checkpoint)
    draft = {"checkpoint": str(checkpoint), "stores": stores, "base": base,
             "candidates": [{"name": n, "mix": {n: 1.0}} for n in stores if n not in base],
             "tokens": 10**12} | ({"seq_len": seq_len} if seq_len else {})  # fmt: skip
    cfg = parse_study(draft, source="--store")
    opened = {n: open_store(p, f"--store {n}") for n, p in stores.items()}
    limit = study_max_tokens(cfg, opened)
    if tokens is not None:
        note = f"Given by --tokens; the stores hold {limit:,} per run within their caps."
        return Sizing(tokens, seeds, seq_len, None, note)
    batch = None
    if limit < MIN_STEPS * cfg.batch_tokens:  # small stores: smaller steps, a few of them
        batch = _small_batch(cfg, opened)
        cfg = cfg.model_copy(update={"batch_tokens": batch})
        limit = study_max_tokens(cfg, opened)
    note = (f"Sized to the stores: every arm's sources hold {limit:,} tokens per run within "
            "their caps (base_max_repetition, max_repetition).")  # fmt: skip
    return Sizing(starter_tokens(limit, cfg.batch_tokens), seeds, seq_len, batch, note)


MIN_STEPS = 4  # the fewest optimizer steps a starter's runs take


def _small_batch(cfg: StudyConfig, stores: dict[str, TokenStore]) -> int:
    """The largest power-of-two number of sequences per step that leaves MIN_STEPS steps in 90%
    of what the stores hold (a one-line error when not even one sequence per step does)."""
    from midtrain.study.plan import study_max_tokens

    seqs = study_max_tokens(cfg.model_copy(update={"batch_tokens": cfg.seq_len}), stores)
    per_step = int(0.9 * seqs / cfg.seq_len) // MIN_STEPS
    if per_step < 1:
        small = min(stores, key=lambda n: stores[n].n_train_tokens)
        raise MidtrainError(
            f"--store {small}: the stores hold {seqs:,} anneal tokens per run within one epoch "
            f"of each source, too few for {MIN_STEPS} steps of one {cfg.seq_len}-token sequence; "
            f"add data (the smallest, {small}, holds {stores[small].n_train_tokens:,} tokens)"
        )
    return cfg.seq_len * 2 ** (per_step.bit_length() - 1)


DEFAULT_TOKENS = 100_000_000


def starter_tokens(limit: int, batch_tokens: int) -> int:
    """100M when `limit` allows it, else a round number (one significant digit) at most 90% of
    `limit`, and at least one step."""
    if limit >= DEFAULT_TOKENS:
        return DEFAULT_TOKENS
    room = int(limit * 0.9)
    mag = 10 ** (len(str(room)) - 1)
    return max(room // mag * mag, batch_tokens)


def _seq_len(checkpoint: Path) -> int | None:
    """A power of two within the model's positions when they are fewer than seq_len's default."""
    from transformers import AutoConfig

    from midtrain import env

    env.quiet_transformers()
    try:
        limit = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None)
    except (OSError, ValueError, KeyError) as e:
        raise MidtrainError(f"CHECKPOINT: cannot read {checkpoint}/config.json: {e}") from None
    default = StudyConfig.model_fields["seq_len"].default
    if not isinstance(limit, int) or limit >= default:
        return None
    return 2 ** (limit.bit_length() - 1)


def parse_tasks(items: list[str]) -> list[str]:
    """--tasks values: repeated and/or comma-separated lm-eval names, each once, in order."""
    names = [t.strip() for item in items for t in item.split(",") if t.strip()]
    return list(dict.fromkeys(names))


def check_task_names(names: list[str], include_path: Path | None) -> None:
    """Every task name is known to lm-eval (a typo fails here). Whether its data loads offline
    is left to the study's own checks (`--dry-run`): it may be fetched after the file is made."""
    if not names:
        return
    from midtrain.eval.lmeval import task_manager

    known = set(task_manager(include_path).all_tasks)
    for name in names:
        if name not in known:
            where = f" in {include_path} or lm-eval" if include_path else " (give --include-path)"
            raise MidtrainError(f"--tasks: {name!r} is not a task{where}; check the name")


def check_init(
    checkpoint: Path, store_items: list[str], out: Path, base: str | None
) -> tuple[dict[str, str], dict[str, float]]:
    """The inputs every `study init` checks first: (stores by name, the base mix)."""
    from midtrain.data.store import open_store
    from midtrain.train.checkpoint import check_hf_folder

    check_hf_folder(checkpoint, "CHECKPOINT")
    stores = _parse_stores(store_items)
    sizes = {name: open_store(path, f"--store {name}").n_train_tokens
             for name, path in stores.items()}  # fmt: skip
    mix = parse_base(base or next(iter(stores)), sizes)
    if out.exists():
        raise MidtrainError(f"--out {out} exists; pick a new file name (init never overwrites)")
    return stores, mix


def parse_base(text: str, sizes: dict[str, int]) -> dict[str, float]:
    """--base: one store, or several as NAME:RATIO,... (ratios summing to 1) or NAME,NAME
    (shares proportional to the stores' training tokens: the stores' data concatenated).
    At least one store stays out of it, as a candidate."""
    pairs = [(n.strip(), sep, r) for n, sep, r in (p.partition(":") for p in text.split(","))]
    names = [n for n, _, _ in pairs]
    for n in names:
        if n not in sizes:
            raise MidtrainError(f"--base {text}: {n!r} is not one of the --store names "
                                f"({', '.join(sizes)}); name a store")  # fmt: skip
        if names.count(n) > 1:
            raise MidtrainError(f"--base {text}: {n!r} is named twice; name each store once")
    if len(names) == len(sizes):
        raise MidtrainError(f"--base {text}: every store is in the base mix; leave at least one "
                            "--store out of it as a candidate")  # fmt: skip
    if not any(sep for _, sep, _ in pairs):
        total = sum(sizes[n] for n in names) or 1
        return {n: sizes[n] / total for n in names}
    return _base_ratios(text, pairs)


def _base_ratios(text: str, pairs: list[tuple[str, str, str]]) -> dict[str, float]:
    from midtrain.mix.spec import check_ratios

    if not all(sep for _, sep, _ in pairs):
        raise MidtrainError(f"--base {text}: some stores have a ratio and some not; give every "
                            "store a ratio or none")  # fmt: skip
    try:
        ratios = {n: float(r) for n, _, r in pairs}
    except ValueError:
        raise MidtrainError(f"--base {text}: a ratio is not a number; write NAME:RATIO,"
                            "NAME:RATIO, e.g. web:0.7,books:0.3") from None  # fmt: skip
    try:
        check_ratios(ratios)
    except ValueError as e:
        raise MidtrainError(f"--base {text}: {e}") from None
    return ratios


def write_starter(checkpoint: Path, store_items: list[str], out: Path, *, base: str | None,
                  tasks: list[str], include_path: Path | None = None, tokens: int | None = None,
                  start_lr: float | None = None,
                  full_run_tokens: int | None = None) -> Path:  # fmt: skip
    """Check every input, size the study to the stores, validate the text, then write it."""
    stores, base = check_init(checkpoint, store_items, out, base)
    if tokens is not None and tokens <= 0:
        raise MidtrainError(f"--tokens {tokens}: must be > 0")
    if full_run_tokens is not None and full_run_tokens <= 0:
        raise MidtrainError(f"--full-run-tokens {full_run_tokens}: must be > 0")
    if include_path is not None and not include_path.is_dir():
        raise MidtrainError(f"--include-path {include_path}: not a folder of task YAMLs")
    names = parse_tasks(tasks)
    check_task_names(names, include_path)
    size = sizing(checkpoint, stores, base, tokens)
    text = starter(
        checkpoint, stores, base, names, out, size, include_path, start_lr, full_run_tokens
    )
    parse_study(tomllib.loads(text), source=str(out), base_dir=out.parent.resolve())
    return atomic_write_text(out, text)
