"""Presets: the published midtraining protocols as complete study files for any checkpoint.

Each preset maps *roles* (the base mix, a FLAN-like source, high-quality web, math, code, QA) to
the user's token stores and writes the protocol's arms, fractions, schedule, seeds, SFT probe,
merges and guards, with comments naming the source. Token budgets are the protocol's share of the
user's full run (`--full-run-tokens`), as published: `Scale`. A role whose store is absent is left
out (said in the file). The protocols are summarised in docs/presets.md; the file is written by
`preset_file.write_preset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from midtrain.errors import MidtrainError
from midtrain.integrate.guards import auto_guards
from midtrain.study.tables import CandidateTable, StudyTable

ROLES = ("flan", "hq", "math", "code", "qa")
OLMO3_TOKENS_SCALE = 10  # Olmo 3's integration tests ran ~10x the tokens of its microanneals
OLMO2_TOKENS_SCALE = 5  # OLMo 2 7B's final midtraining runs: 50B tokens, 5x its 10B microanneals
FINAL_MIX = "final-mix"  # olmo2: the arm of every candidate together, whose seeds are merged


@dataclass(frozen=True)
class Scale:
    """The published run's tokens: one anneal (a microanneal or a midtraining run), the whole
    run, and where in the run the anneal started (a share; None: not a protocol position)."""

    anneal: float
    full: float
    start: float | None
    note: str

    @property
    def share(self) -> float:
        return self.anneal / self.full


@dataclass(frozen=True)
class Preset:
    name: str
    protocol: str
    source: str
    scale: Scale
    needs: tuple[str, ...] = ()  # roles without which the preset is not itself
    sft: bool = False  # an SFT probe is part of the protocol
    then: str = ""  # what the protocol does after the study: a command, {dir} = the study folder
    to_end: bool = False  # the anneal runs to the end of the full run (from the checkpoint)


PRESETS = {
    p.name: p
    for p in (
        Preset("marin", "control 100% base; each candidate 70/30 with the base; plus 70/30 "
               "base/FLAN and 70/15/15 base/FLAN/HQ; linear decay from the checkpoint's LR to 0; "
               "decided on tasks", "Marin 8B microannealing experiments (marin.community)",
               Scale(50e9, 12.75e12, None, "50B-token anneals (Marin's experiments/"
                     "anneal_config.py default) in an 8B run of 12.75T tokens"),
               needs=("flan",)),
        Preset("olmo2", "each candidate 50/50 with web, linear to 0; the final mix (every "
               "candidate together, 50/50 with web) in 3 data-order seeds whose uniform average "
               "is the final checkpoint (merge_seeds on that arm only)",
               "OLMo 2 (Team OLMo 2024), section 4: mid-training and model souping",
               Scale(10e9, 4e12, None, "10B-token microanneals (5B candidate + 5B web) of the "
                     "7B, pretrained on 4T tokens; its final mid-training runs: 50B x 3 seeds"),
               then="midtrain integrate propose {dir} --out {dir}-final.toml --anchor-share 0.5 "
               f"--tokens-scale {OLMO2_TOKENS_SCALE} --merge-seeds"),
        Preset("olmo3", "microanneal = equal tokens of candidate and web against a web-only "
               "control of the same total, with a quick SFT probe; then an integration round of "
               "the winners (a third general anchor, code and math at most 20% each, ~10x the "
               "microanneals' tokens) and a merge of 2 seeds",
               "Olmo 3 (Ai2 2025), midtraining: microanneals and integration tests",
               Scale(10e9, 5.9e12, None, "microanneals of 5B candidate + 5B web tokens of the "
                     "7B, pretrained on ~5.9T tokens; integration tests ~100B (10x)"),
               sft=True, then="midtrain integrate propose {dir} --out {dir}-round-1.toml "
               "--anchor-share 0.33 --budget code=0.2 --budget math=0.2 --tokens-scale "
               f"{OLMO3_TOKENS_SCALE} --merge-seeds"),
        Preset("liu2025", "midtraining mixes (code 20%, math 12%, FLAN 5%, knowledge QA 20%, "
               "high-quality web 20%, rest the pretraining data) against continued pretraining on "
               "100% of each for the same tokens; SFT probes with forgetting; with --start, a "
               "timing (starts, each to the end of the run) x weight (10/30/50/80%) grid of the "
               "code role (--grid-role); token proximity "
               "(midtrain similarity)", "Liu, Neubig & Xiong (2025), Midtraining bridges "
               "pretraining and posttraining distributions",
               Scale(21_035, 61_035, 40_000 / 61_035, "midtraining from step 40,000 to the end "
                     "of a 61,035-step (128B-token) run (the paper's configs)"),
               sft=True, to_end=True),
        Preset("llama3", "anneal on a small high-quality set: 30% new data / 70% default mix, LR "
               "linearly to 0", "Llama 3 (Dubey et al. 2024), section 3.1.3: annealing data",
               Scale(40e9, 15e12, 0.5, "40B tokens from the 50%-trained 8B of a ~15T-token run"),
               needs=("hq",)),
    )
}  # fmt: skip
LIU_FRACTIONS = {"code": 0.2, "math": 0.12, "flan": 0.05, "qa": 0.2, "hq": 0.2}
GRID_FRACTIONS = [0.1, 0.3, 0.5, 0.8]
GRID_ROLE = "code"  # liu2025's timing x weight grid: the paper's case study is code


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MidtrainError(f"--preset {name!r}: unknown; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def protocol_tokens(name: str, full_run_tokens: int, seen: int | None = None) -> int:
    """Anneal tokens per run: the protocol's share of the full run; a protocol that anneals to
    the end of the run (liu2025) takes the rest of it after `seen` when the checkpoint says."""
    p = preset(name)
    if p.to_end and seen is not None and 0 < seen < full_run_tokens:
        return full_run_tokens - seen
    return round(p.scale.share * full_run_tokens)


def _cand(name: str, store: str, fractions: list[float], **kw: Any) -> CandidateTable:
    return {"name": name, "mix": {store: 1.0}, "fractions": fractions, "max_repetition": 4.0, **kw}


def candidates(name: str, roles: dict[str, str], others: list[str], starts: bool,
               grid_role: str = GRID_ROLE) -> list[CandidateTable]:  # fmt: skip
    """The preset's arms over the stores playing its roles (and the other candidate stores)."""
    singles = list(dict.fromkeys([*roles.values(), *others]))
    if name == "marin":
        out = [_cand(s, s, [0.3]) for s in singles]
        if "flan" in roles and "hq" in roles:
            out.append({"name": f"{roles['flan']}+{roles['hq']}", "fractions": [0.3],
                        "mix": {roles["flan"]: 0.5, roles["hq"]: 0.5}, "max_repetition": 4.0})  # fmt: skip
        return out
    if name in ("olmo2", "olmo3"):
        out = [_cand(s, s, [0.5]) for s in singles]
        if name == "olmo2" and len(singles) > 1:
            out.append({"name": FINAL_MIX, "mix": {s: 1 / len(singles) for s in singles},
                        "fractions": [0.5], "max_repetition": 4.0})  # fmt: skip
        return out
    if name == "llama3":
        return [_cand(roles["hq"], roles["hq"], [0.3])]
    out = []  # liu2025: each role at its paper share, and its continued-pretraining arm
    for role, store in roles.items():
        fracs = GRID_FRACTIONS if starts and role == grid_role else [LIU_FRACTIONS[role]]
        out.append(_cand(store, store, fracs, continued_pretraining=True))
    return out


def _check_roles(p: Preset, roles: dict[str, str], sft: list[dict[str, str]],
                 starts: list[str]) -> None:  # fmt: skip
    missing = [r for r in p.needs if r not in roles]
    if missing:
        raise MidtrainError(f"--preset {p.name}: needs a {missing[0]} store; name one with "
                            f"--role {missing[0]}=STORE (or a store called {missing[0]!r})")  # fmt: skip
    if p.sft and not sft:
        raise MidtrainError(f"--preset {p.name}: the protocol has an SFT probe; give --sft "
                            "NAME=TRAIN.jsonl[:VAL.jsonl]")  # fmt: skip
    if starts and p.name != "liu2025":
        raise MidtrainError("--start: only the liu2025 preset has a timing grid; drop --start")


def grid_role(roles: dict[str, str], starts: list[str], role: str | None) -> str:
    """The role of liu2025's weight grid: code unless --grid-role says otherwise; it needs
    --start and a store playing it."""
    if role is not None and not starts:
        raise MidtrainError(f"--grid-role {role}: the weight grid comes with the timing grid; "
                            "add --start CKPT (--preset liu2025) or drop --grid-role")  # fmt: skip
    role = role or GRID_ROLE
    if role not in ROLES:
        raise MidtrainError(f"--grid-role {role}: not a role; use one of {', '.join(ROLES)}")
    if starts and role not in roles:
        raise MidtrainError(f"--grid-role {role}: no store plays {role}; name one with --role "
                            f"{role}=STORE or choose --grid-role from {', '.join(roles) or 'none'}")  # fmt: skip
    return role


def preset_study(name: str, *, checkpoint: str, stores: dict[str, str], base: dict[str, float],
                 roles: dict[str, str], tasks: list[str], sft: list[dict[str, str]],
                 starts: list[str], tokens: int, full_run_tokens: int, grid: str | None = None,
                 starts_mode: str = "to_end") -> StudyTable:  # fmt: skip
    """The study as data (absolute paths); raises MidtrainError when a needed role is absent.
    Guards: every base domain, at the automatic guards' tolerance (integrate/guards.py).
    liu2025 with starts: `grid` is the weight grid's role (default code), `starts_mode` how far
    each start trains (to_end: as the paper ran it)."""
    p = preset(name)
    _check_roles(p, roles, sft, starts)
    grid = grid_role(roles, starts, grid)
    used = set(roles.values()) | set(base)
    others = [] if name in ("liu2025", "llama3") else [s for s in stores if s not in used]
    cands = candidates(name, roles, others, bool(starts), grid)
    study: StudyTable = {
        "name": name, "checkpoint": checkpoint, "tokens": tokens,
        "full_run_tokens": full_run_tokens, "seeds": [0, 1, 2] if name == "olmo2" else [0, 1],
        "stores": stores, "base": base, "base_max_repetition": 4.0, "candidates": cands,
        "schedule": {"name": "linear", "final_lr_fraction": 0.0},
        "eval": {"tasks": tasks}, "guards": auto_guards(base, [], [], []),
    }  # fmt: skip
    if name == "olmo2":  # the final mix's seeds only (the last arm: final-mix, or the only one)
        study["merge_seeds"] = [f"{cands[-1]['name']}@0.5"]
    if starts:
        study |= {"starts": starts, "starts_mode": starts_mode}
    if p.sft:
        study["sft_probe"] = {"lrs": [1e-5, 3e-5, 1e-4], "epochs": 1, "sets": sft}
    return study
