"""Presets: the published midtraining protocols as complete study files for any checkpoint.

Each preset maps *roles* (the base mix, a FLAN-like source, high-quality web, math, code, QA) to
the user's token stores and writes the protocol's arms, fractions, schedule, seeds, SFT probe and
merge settings, with comments naming the source. A role whose store is absent is left out (said in
the file). The protocols are summarised in docs/presets.md.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midtrain.errors import MidtrainError

ROLES = ("flan", "hq", "math", "code", "qa")
OLMO3_TOKENS_SCALE = 10  # Olmo 3's integration tests ran ~10x the tokens of its microanneals


@dataclass(frozen=True)
class Preset:
    name: str
    protocol: str
    source: str
    needs: tuple[str, ...] = ()  # roles without which the preset is not itself
    sft: bool = False  # an SFT probe is part of the protocol
    then: str = ""  # what the protocol does after the study (a command)


PRESETS = {
    p.name: p
    for p in (
        Preset("marin", "control 100% base; each candidate 70/30 with the base; plus 70/30 "
               "base/FLAN and 70/15/15 base/FLAN/HQ; linear decay from the checkpoint's LR to 0; "
               "decided on tasks", "Marin 8B microannealing experiments (marin.community)",
               needs=("flan",)),
        Preset("olmo2", "each candidate 50/50 with web, linear to 0; the final checkpoint is the "
               "uniform average of 3 runs that differ in data-order seed (merge_seeds)",
               "OLMo 2 (Team OLMo 2024), section 4: mid-training and model souping"),
        Preset("olmo3", "microanneal = equal tokens of candidate and web against a web-only "
               "control of the same total, with a quick SFT probe; then an integration round of "
               "the winners (a third general anchor, code and math at most 20% each, ~10x the "
               "microanneals' tokens) and a merge of 2 seeds", "Olmo 3 (Ai2 2025), midtraining: microanneals and integration tests",
               sft=True, then="midtrain integrate propose OUT --out round-1.toml --anchor-share "
               f"0.33 --budget code=0.2 --budget math=0.2 --tokens-scale {OLMO3_TOKENS_SCALE} "
               "--merge-seeds"),
        Preset("liu2025", "midtraining mixes (code 20%, math 12%, FLAN 5%, knowledge QA 20%, "
               "high-quality web 20%, rest the pretraining data) against continued pretraining on "
               "100% of each for the same tokens; SFT probes with forgetting; with --start, a "
               "timing (starts) x weight (10/30/50/80%) grid of the first role; token proximity "
               "(midtrain similarity)", "Liu, Neubig & Xiong (2025), Midtraining bridges "
               "pretraining and posttraining distributions", sft=True),
        Preset("llama3", "anneal on a small high-quality set: 30% new data / 70% default mix, LR "
               "linearly to 0", "Llama 3 (Dubey et al. 2024), section 3.1.3: annealing data",
               needs=("hq",)),
    )
}  # fmt: skip
LIU_FRACTIONS = {"code": 0.2, "math": 0.12, "flan": 0.05, "qa": 0.2, "hq": 0.2}
GRID_FRACTIONS = [0.1, 0.3, 0.5, 0.8]


def _cand(name: str, store: str, fractions: list[float], **kw: Any) -> dict[str, Any]:
    return {"name": name, "mix": {store: 1.0}, "fractions": fractions, "max_repetition": 4.0, **kw}


def candidates(preset: str, roles: dict[str, str], others: list[str],
               starts: bool) -> list[dict[str, Any]]:  # fmt: skip
    """The preset's arms over the stores playing its roles (and the other candidate stores)."""
    singles = list(dict.fromkeys([*roles.values(), *others]))
    if preset == "marin":
        out = [_cand(s, s, [0.3]) for s in singles]
        if "flan" in roles and "hq" in roles:
            out.append({"name": f"{roles['flan']}+{roles['hq']}", "fractions": [0.3],
                        "mix": {roles["flan"]: 0.5, roles["hq"]: 0.5}, "max_repetition": 4.0})  # fmt: skip
        return out
    if preset in ("olmo2", "olmo3"):
        return [_cand(s, s, [0.5]) for s in singles]
    if preset == "llama3":
        return [_cand(roles["hq"], roles["hq"], [0.3])]
    out = []  # liu2025: each role at its paper share, and its continued-pretraining arm
    for i, (role, store) in enumerate(roles.items()):
        grid = starts and i == 0
        fracs = GRID_FRACTIONS if grid else [LIU_FRACTIONS[role]]
        out.append(_cand(store, store, fracs, continued_pretraining=True))
    return out


def preset_study(preset: str, *, checkpoint: str, stores: dict[str, str], base: str,
                 roles: dict[str, str], tasks: list[str], sft: list[dict[str, str]],
                 starts: list[str], tokens: int) -> dict[str, Any]:  # fmt: skip
    """The study as data (absolute paths); raises MidtrainError when a needed role is absent."""
    p = PRESETS.get(preset)
    if p is None:
        raise MidtrainError(f"--preset {preset!r}: unknown; use one of {', '.join(PRESETS)}")
    missing = [r for r in p.needs if r not in roles]
    if missing:
        raise MidtrainError(f"--preset {preset}: needs a {missing[0]} store; name one with "
                            f"--role {missing[0]}=STORE (or a store called {missing[0]!r})")  # fmt: skip
    if p.sft and not sft:
        raise MidtrainError(f"--preset {preset}: the protocol has an SFT probe; give --sft "
                            "NAME=TRAIN.jsonl[:VAL.jsonl]")  # fmt: skip
    if starts and preset != "liu2025":
        raise MidtrainError("--start: only the liu2025 preset has a timing grid; drop --start")
    used = set(roles.values()) | {base}
    others = [] if preset in ("liu2025", "llama3") else [s for s in stores if s not in used]
    study: dict[str, Any] = {
        "name": preset, "checkpoint": checkpoint, "tokens": tokens,
        "seeds": [0, 1, 2] if preset == "olmo2" else [0, 1],
        "stores": stores, "base": {base: 1.0}, "base_max_repetition": 4.0,
        "candidates": candidates(preset, roles, others, bool(starts)),
        "schedule": {"name": "linear", "final_lr_fraction": 0.0},
        "eval": {"tasks": tasks},
    }  # fmt: skip
    if preset == "olmo2":
        study["merge_seeds"] = True
    if starts:
        study["starts"] = starts
    if p.sft:
        study["sft_probe"] = {"lrs": [1e-5, 3e-5, 1e-4], "epochs": 1, "sets": sft}
    return study


def parse_sft(items: list[str]) -> list[dict[str, str]]:
    out = []
    for i, item in enumerate(items):
        name, sep, files = item.partition("=")
        train, _, val = files.partition(":")
        if not sep or not name.strip() or not train.strip():
            raise MidtrainError(f"--sft[{i}]: {item!r} is not NAME=TRAIN.jsonl[:VAL.jsonl]")
        out.append({"name": name.strip(), "train": train.strip()} | ({"val": val} if val else {}))
    return out


def roles_for(stores: dict[str, str], base: str, items: list[str]) -> dict[str, str]:
    """Role -> store: stores named after a role play it, `--role ROLE=STORE` overrides."""
    roles = {r: r for r in ROLES if r in stores and r != base}
    for i, item in enumerate(items):
        role, sep, store = (x.strip() for x in item.partition("="))
        if not sep or role not in ROLES:
            raise MidtrainError(f"--role[{i}]: {item!r}: write ROLE=STORE with ROLE one of "
                                f"{', '.join(ROLES)}")  # fmt: skip
        if store not in stores:
            raise MidtrainError(f"--role[{i}]: store {store!r} is not one of the --store names")
        roles[role] = store
    return roles


def preset_text(preset: str, study: dict[str, Any], out: Path, roles: dict[str, str]) -> str:
    """The study file: a comment header (protocol, source, roles, next step), then the TOML."""
    import tomli_w

    p = PRESETS[preset]
    here = out.resolve().parent
    data = _relative(study, here)
    absent = [r for r in ROLES if r not in roles]
    head = [f"# midtrain preset {preset}: {p.protocol}.", f"# Source: {p.source}.",
            "# Roles: " + (", ".join(f"{r} = {s}" for r, s in roles.items()) or "none"),
            *(["# Absent roles (no store): " + ", ".join(absent)] if absent else []),
            "# Check it: midtrain study run THIS --out DIR --dry-run (docs/presets.md)."]  # fmt: skip
    if p.then:
        head.append(f"# Then: {p.then}")
    return "\n".join(head) + "\n" + tomli_w.dumps(data)


def _relative(study: dict[str, Any], here: Path) -> dict[str, Any]:
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


def write_preset(preset: str, checkpoint: Path, store_items: list[str], out: Path, *,
                 base: str | None, tasks: str, role_items: list[str], sft_items: list[str],
                 starts: list[Path], tokens: int, start_lr: float | None = None) -> Path:  # fmt: skip
    """Check every input, then write the preset's study file (validated first)."""
    from midtrain.io import atomic_write_text
    from midtrain.study.init import check_init
    from midtrain.train.checkpoint import check_hf_folder

    stores, base = check_init(checkpoint, store_items, out, base)
    for i, s in enumerate(starts):
        check_hf_folder(s, f"--start[{i}]")
    if tokens <= 0:
        raise MidtrainError(f"--tokens {tokens}: must be > 0")
    roles = roles_for(stores, base, role_items)
    sft = parse_sft(sft_items)
    for i, s in enumerate(sft):
        for k in ("train", "val"):
            if s.get(k) and not Path(s[k]).is_file():
                raise MidtrainError(f"--sft[{i}]: {s[k]} is not a file")
    study = preset_study(
        preset, checkpoint=str(checkpoint.resolve()), base=base, roles=roles,
        stores={k: str(Path(v).resolve()) for k, v in stores.items()},
        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
        sft=[{k: (str(Path(v).resolve()) if k != "name" else v) for k, v in s.items()} for s in sft],
        starts=[str(s.resolve()) for s in starts], tokens=tokens,
    )  # fmt: skip
    from midtrain.train.checkpoint import read_trainer_state

    if start_lr is not None:
        study["schedule"]["start_lr"] = start_lr
    text = preset_text(preset, study, out, roles)
    if start_lr is None and read_trainer_state(checkpoint) is None:
        text = ("# REQUIRED: this checkpoint has no midtrain_state, so the LR it was trained at is\n"
                "# unknown: set [schedule] start_lr (or pass --start-lr to study init).\n" + text)  # fmt: skip
    validate_text(text, out)
    return atomic_write_text(out, text)
