"""`midtrain study init --preset NAME`: check the inputs, then write the preset's study file.

The file opens with comments: the protocol and its source, the published scale beside this
study's token budget (the protocol's share of `--full-run-tokens`), the roles, the base mix, the
guards, where the checkpoint sits in the run, and the commands to run it and (where the protocol
goes on) its next step. The TOML after them is validated as a study before it is written.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from midtrain.design.presets import ROLES, preset, preset_study, protocol_tokens
from midtrain.errors import MidtrainError
from midtrain.study.tables import StudyTable

FULL_RUN_FIX = ("give the tokens of the whole pretraining run, e.g. --full-run-tokens "
                "4000000000000 (the protocol's token budget is a share of it)")  # fmt: skip


def parse_sft(items: list[str]) -> list[dict[str, str]]:
    out = []
    for i, item in enumerate(items):
        name, sep, files = item.partition("=")
        train, _, val = files.partition(":")
        if not sep or not name.strip() or not train.strip():
            raise MidtrainError(f"--sft[{i}]: {item!r} is not NAME=TRAIN.jsonl[:VAL.jsonl]")
        out.append({"name": name.strip(), "train": train.strip()} | ({"val": val} if val else {}))
    return out


def roles_for(stores: dict[str, str], base: dict[str, float], items: list[str]) -> dict[str, str]:
    """Role -> store: stores named after a role play it, `--role ROLE=STORE` overrides; a store
    of the base mix plays none."""
    roles = {r: r for r in ROLES if r in stores and r not in base}
    for i, item in enumerate(items):
        role, sep, store = (x.strip() for x in item.partition("="))
        if not sep or role not in ROLES:
            raise MidtrainError(f"--role[{i}]: {item!r}: write ROLE=STORE with ROLE one of "
                                f"{', '.join(ROLES)}")  # fmt: skip
        if store not in stores:
            raise MidtrainError(f"--role[{i}]: store {store!r} is not one of the --store names")
        if store in base:
            raise MidtrainError(f"--role[{i}]: store {store!r} is in the base mix (--base); "
                                "name a candidate store")  # fmt: skip
        roles[role] = store
    return roles


def budget_notes(name: str, tokens: int | None, full: int,
                 seen: int | None) -> tuple[int, list[str]]:  # fmt: skip
    """(tokens per run, the header's lines on them and on the checkpoint's place in the run)."""
    from midtrain.study.config import AnalysisSpec

    p, derived = preset(name), protocol_tokens(name, full, seen)
    if tokens is not None:
        how = f"given by --tokens (the protocol's would be {derived:,})"
    elif p.to_end and seen is not None and derived == full - seen:
        how = f"the rest of the run after the checkpoint's {seen:,} (it midtrains to the end)"
    else:
        how = f"the protocol's {p.scale.share:.3%} of full_run_tokens {full:,}"
    notes = [f"# Published: {p.scale.note}.", f"# Tokens per run: {tokens or derived:,}, {how}."]
    least = AnalysisSpec.model_fields["min_checkpoint_progress"].default
    start = f" (the protocol starts at {p.scale.start:.0%} of the run)" if p.scale.start else ""
    if seen is None:
        notes += [f"# Checkpoint: no midtrain_state, so the tokens it has seen are unknown{start}.",
                  f"# Set checkpoint_tokens so that checkpoint-too-early (below {least:.0%} of the "
                  "full run) can fire:", "# checkpoint_tokens = ...   # the tokens it has seen"]  # fmt: skip
    else:
        notes.append(f"# Checkpoint: has seen {seen:,} tokens, {seen / full:.0%} of the full run "
                     f"(checkpoint-too-early below {least:.0%}){start}.")  # fmt: skip
    return tokens or derived, notes


def preset_text(name: str, study: StudyTable, out: Path, roles: dict[str, str],
                notes: list[str] | None = None) -> str:  # fmt: skip
    """The study file: a comment header (protocol, source, scale, roles, guards, commands), then
    the TOML."""
    import tomli_w

    from midtrain.integrate.guards import describe

    p = preset(name)
    absent = [r for r in ROLES if r not in roles]
    base = ", ".join(f"{s} {r:.0%}" for s, r in study["base"].items())
    folder = str(out.with_suffix(""))
    head = [f"# midtrain preset {name}: {p.protocol}.", f"# Source: {p.source}.", *(notes or []),
            "# Roles: " + (", ".join(f"{r} = {s}" for r, s in roles.items()) or "none"),
            *(["# Roles without a candidate store: " + ", ".join(absent)] if absent else []),
            f"# Base mix: {base}. Guards: {describe(study.get('guards', []))}.",
            f"# Check it: midtrain study run {out} --out {folder} --dry-run (docs/presets.md)."]  # fmt: skip
    if p.then:
        head.append(f"# Then: {p.then.format(dir=folder)}")
    return "\n".join(head) + "\n" + tomli_w.dumps(_relative(study, out.resolve().parent))


def _relative(study: StudyTable, here: Path) -> StudyTable:
    def rel(x: str) -> str:
        return os.path.relpath(Path(x).resolve(), here)

    out = dict(study, checkpoint=rel(study["checkpoint"]),
               stores={k: rel(v) for k, v in study["stores"].items()})  # fmt: skip
    if "starts" in out:
        out["starts"] = [rel(s) for s in out["starts"]]
    if "sft_probe" in out:
        sets = [dict(s, train=rel(s["train"])) | ({"val": rel(s["val"])} if s.get("val") else {})
                for s in out["sft_probe"]["sets"]]  # fmt: skip
        out["sft_probe"] = dict(out["sft_probe"], sets=sets)
    return out


def validate_text(text: str, out: Path) -> None:
    from midtrain.study.config import parse_study

    parse_study(tomllib.loads(text), source=str(out), base_dir=out.resolve().parent)


def _check_scale(name: str, full: int, tokens: int | None, seen: int | None) -> int:
    from midtrain.study.config import StudyConfig

    if full <= 0:
        raise MidtrainError(f"--full-run-tokens {full}: must be > 0; {FULL_RUN_FIX}")
    if seen is not None and seen >= full:
        raise MidtrainError(f"--full-run-tokens {full}: the checkpoint has already seen {seen:,} "
                            f"tokens (its midtrain_state); {FULL_RUN_FIX}")  # fmt: skip
    if tokens is not None and tokens <= 0:
        raise MidtrainError(f"--tokens {tokens}: must be > 0")
    step = StudyConfig.model_fields["batch_tokens"].default
    if tokens is None and (derived := protocol_tokens(name, full, seen)) < step:
        raise MidtrainError(f"--full-run-tokens {full}: the protocol's share is {derived:,} "
                            f"tokens, less than one step ({step:,}); {FULL_RUN_FIX}, or --tokens")  # fmt: skip
    return full


def write_preset(name: str, checkpoint: Path, store_items: list[str], out: Path, *,
                 base: str | None, tasks: str, role_items: list[str], sft_items: list[str],
                 starts: list[Path], full_run_tokens: int | None, tokens: int | None = None,
                 start_lr: float | None = None, grid_role: str | None = None) -> Path:  # fmt: skip
    """Check every input, then write the preset's study file (validated first)."""
    from midtrain.design.init import check_init
    from midtrain.io import atomic_write_text
    from midtrain.train.checkpoint import check_hf_folder, read_trainer_state

    preset(name)
    if full_run_tokens is None:
        raise MidtrainError(f"--full-run-tokens: required with --preset; {FULL_RUN_FIX}")
    stores, base_mix = check_init(checkpoint, store_items, out, base)
    state = read_trainer_state(checkpoint)
    seen = state.tokens_seen if state is not None else None
    full = _check_scale(name, full_run_tokens, tokens, seen)
    for i, s in enumerate(starts):
        check_hf_folder(s, f"--start[{i}]")
    roles = roles_for(stores, base_mix, role_items)
    sft = _sft_files(sft_items)
    chosen, notes = budget_notes(name, tokens, full, seen)
    mode, mode_notes = starts_mode(starts, seen, full)
    study = preset_study(
        name, checkpoint=str(checkpoint.resolve()), base=base_mix, roles=roles,
        stores={k: str(Path(v).resolve()) for k, v in stores.items()},
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        sft=sft, starts=[str(s.resolve()) for s in starts], tokens=chosen, full_run_tokens=full,
        grid=grid_role, starts_mode=mode,
    )  # fmt: skip
    if start_lr is not None:
        study["schedule"]["start_lr"] = start_lr
    text = preset_text(name, study, out, roles, notes + mode_notes)
    if start_lr is None and state is None:
        text = ("# REQUIRED: this checkpoint has no midtrain_state, so the LR it was trained at is\n"
                "# unknown: set [schedule] start_lr (or pass --start-lr to study init).\n" + text)  # fmt: skip
    validate_text(text, out)
    return atomic_write_text(out, text)


def starts_mode(starts: list[Path], seen: int | None, full: int) -> tuple[str, list[str]]:
    """liu2025's starts run to the end of the full run (starts_mode = "to_end", as the paper ran
    them) when every start and the checkpoint say how many tokens they have seen; else each runs
    the study's cooldown, and the header says why. A start at or past the full run's end (less
    than one step before it) is an error."""
    from midtrain.study.config import StudyConfig
    from midtrain.train.checkpoint import read_trainer_state

    if not starts:
        return "cooldown", []
    step, unknown = StudyConfig.model_fields["batch_tokens"].default, []
    for i, s in enumerate(starts):
        state = read_trainer_state(s)
        if state is None:
            unknown.append(f"--start {s}")
        elif full - state.tokens_seen < step:
            raise MidtrainError(f"--start[{i}]: {s} has seen {state.tokens_seen:,} tokens, no "
                                f"step before --full-run-tokens {full:,}; drop it or {FULL_RUN_FIX}")  # fmt: skip
    if seen is None:
        unknown.insert(0, "the checkpoint")
    if not unknown:
        return "to_end", ["# Starts: each trains to the end of the full run, its own tokens seen "
                          'subtracted (starts_mode = "to_end", as the paper ran them).']  # fmt: skip
    has = "has" if len(unknown) == 1 else "have"
    why = f"# Starts: {', '.join(unknown)} {has} no midtrain_state (tokens seen unknown),"
    return "cooldown", [f"{why} so each start runs the study's cooldown; the paper ran each to the "
                        'end of the run: starts_mode = "to_end" (docs/studies.md).']  # fmt: skip


def _sft_files(items: list[str]) -> list[dict[str, str]]:
    """--sft sets with absolute paths; each file must exist."""
    sft = parse_sft(items)
    for i, s in enumerate(sft):
        for k in ("train", "val"):
            if s.get(k) and not Path(s[k]).is_file():
                raise MidtrainError(f"--sft[{i}]: {s[k]} is not a file")
    return [{k: (str(Path(v).resolve()) if k != "name" else v) for k, v in s.items()} for s in sft]
