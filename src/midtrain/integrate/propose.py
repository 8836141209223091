"""Draft the next integration round from finished studies (and the last round of a history).

The draft: the base mix of the first study as the anchor at `anchor_share` (at least the minimum
anchor share unless `no_anchor`); every candidate included in a study (at its largest included
fraction) and every source kept from the last round share the rest equally (a candidate's own
ratios split its part); group budgets and per-source repetition caps then scale sources down, the
excess going back to the anchor. The round targets the tasks its candidates (and the last round)
target; its tokens per run are the study's times `tokens_scale`. The file says what it did in
comments, naming the automatic guards its study will add; the user edits it and runs
`midtrain integrate run`.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

from midtrain.errors import MidtrainError
from midtrain.integrate.guards import (
    MIN_ANCHOR_SHARE,
    anchor_floor,
    candidate_targets,
    describe,
)
from midtrain.integrate.run import RECORD, RoundResult
from midtrain.io import read_json
from midtrain.mix.spec import RATIO_TOL
from midtrain.study.results import StudyResult
from midtrain.study.tables import GuardTable, RoundTable, StudyTable

COPIED = ("checkpoint", "stores", "tokens", "seq_len", "batch_tokens", "micro_batch", "seeds",
          "schedule", "eval", "analysis", "guards", "sft_probe", "train", "full_run_tokens",
          "checkpoint_tokens", "resources")  # fmt: skip


def _study(d: Path) -> tuple[StudyTable, StudyResult]:
    if not (d / "study.json").is_file() or not (d / "results.json").is_file():
        raise MidtrainError(f"{d}: not a finished study (no study.json and results.json); "
                            "pass the --out folder of `midtrain study run`")  # fmt: skip
    return read_json(d / "study.json")["config"], StudyResult.load(d / "results.json")


def winners(cfg: StudyTable, res: StudyResult) -> dict[str, dict[str, float]]:
    """{candidate: its own mix} of the candidates included at some fraction (not @cpt)."""
    out: dict[str, dict[str, float]] = {}
    for a in res.arms:
        if a.verdict == "include" and not a.cpt:
            out[a.name] = dict(a.candidate_mix)
    return out


def _last_round(history: Path | None) -> RoundResult | None:
    if history is None or not history.is_dir():
        return None
    rounds = sorted((RoundResult.load(p) for p in history.glob(f"*/{RECORD}")),
                    key=lambda r: (r.round, r.name))  # fmt: skip
    return rounds[-1] if rounds else None


def shares(groups: list[dict[str, float]], room: float) -> dict[str, float]:
    """`room` split equally between groups, each group by its own ratios."""
    out: dict[str, float] = {}
    for g in groups:
        for s, r in g.items():
            out[s] = out.get(s, 0.0) + room / len(groups) * r
    return out


def apply_limits(src: dict[str, float], budgets: dict[str, float], caps: dict[str, float],
                 tokens: int, store_tokens: dict[str, int]) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """Scale sources down to their budgets and repetition caps; notes say what changed."""
    notes = []
    for group, cap in budgets.items():
        names = [n.strip() for n in group.split("+")]
        used = sum(src.get(n, 0.0) for n in names)
        if used > cap + RATIO_TOL:
            for n in names:
                if n in src:
                    src[n] *= cap / used
            notes.append(f"budget {group} <= {cap:g}: scaled from {used:.3f}")
    for s, v in src.items():
        most = caps.get(s, 1.0) * store_tokens[s] / tokens
        if v > most + RATIO_TOL:
            src[s] = most
            notes.append(f"{s}: {v:.3f} -> {most:.3f} ({caps.get(s, 1.0):g} epochs of "
                         f"{store_tokens[s]:,} tokens)")  # fmt: skip
    return {s: round(v, 6) for s, v in src.items()}, notes


def propose(studies: list[Path], *, out: Path, history: Path | None = None,
            anchor_share: float = 0.4, no_anchor: bool = False,
            budgets: dict[str, float] | None = None, tokens: int | None = None,
            tokens_scale: float | None = None, ablate: list[str] | None = None,
            name: str | None = None, merge_seeds: bool = False) -> tuple[RoundTable, list[str]]:  # fmt: skip
    """The next round as data (paths relative to `out`'s folder) and the notes on its shares."""
    check_anchor_share(anchor_share, no_anchor)
    check_tokens(tokens, tokens_scale)
    found = [_study(Path(d).resolve()) for d in studies]
    cfg0 = found[0][0]
    groups, caps, targets = _winners(found)
    last = _last_round(history)
    if last is not None:
        groups |= {f"kept {s}": {s: 1.0} for s in last.sources if s not in
                   {x for g in groups.values() for x in g}}  # fmt: skip
        tasks = (cfg0.get("eval") or {}).get("tasks") or []
        targets += [t for t in last.targets if t in tasks and t not in targets]
    if not groups:
        raise MidtrainError("no candidate was included in these studies and no round came "
                            "before; nothing to integrate")  # fmt: skip
    anchor = dict(cfg0["base"])
    overlap = sorted({s for g in groups.values() for s in g} & set(anchor))
    if overlap:
        raise MidtrainError(f"candidate source {overlap[0]!r} is also in the base mix; the "
                            "anchor is the base mix, so give it its own store")  # fmt: skip
    names = {x for g in groups.values() for x in g} | set(anchor)
    budgets = dict(budgets or {})
    dropped = [g for g in budgets if not {n.strip() for n in g.split("+")} <= names]
    for g in dropped:  # a budget on sources this round does not have binds nothing
        del budgets[g]
    tokens = round_tokens(int(cfg0["tokens"]), tokens, tokens_scale)
    stored = store_tokens(cfg0)
    src, notes = apply_limits(shares(list(groups.values()), 1.0 - anchor_share), budgets,
                              caps, tokens, stored)  # fmt: skip
    notes += [f"budget {g} dropped: it names a source this round does not have" for g in dropped]
    notes = notes or ["no budget or cap was binding"]
    if tokens_scale is not None:
        notes.append(f"tokens per run: {tokens:,} = {tokens_scale:g} x the study's "
                     f"{int(cfg0['tokens']):,}")  # fmt: skip
    share = round(1.0 - sum(src.values()), 6)
    _check_anchor_tokens(anchor, share, tokens, stored, caps)
    idx = (last.round + 1) if last else 1
    rnd = {
        "name": name or f"round-{idx}", "round": idx, "anchor": anchor, "anchor_share": share,
        **({"no_anchor": True} if no_anchor else {}), "sources": src, "targets": targets,
        "previous": last.mix if last else anchor,
        "previous_name": last.name if last else "base", "ablate": ablate or [],
        "budgets": budgets, "max_repetition": {s: caps.get(s, 1.0) for s in sorted(stored)
                                                     if s in src or s in anchor},
        "merge_seeds": merge_seeds,
    }  # fmt: skip
    return finish_round(
        rnd, cfg0, studies, tokens=tokens, out=out, history=history, last=last
    ), notes


def check_anchor_share(anchor_share: float, no_anchor: bool) -> None:
    """--anchor-share in [0, 1) and, without --no-anchor, at least the minimum anchor share."""
    if not 0.0 <= anchor_share < 1.0:
        raise MidtrainError(f"--anchor-share {anchor_share}: must be in [0, 1)")
    if anchor_share < anchor_floor(no_anchor):
        raise MidtrainError(
            f"--anchor-share {anchor_share:g}: below the minimum anchor share "
            f"{MIN_ANCHOR_SHARE:g} (the replayed base mix, docs/integration.md); raise it to "
            f"{MIN_ANCHOR_SHARE:g} or more, or pass --no-anchor to allow it"
        )


def check_tokens(tokens: int | None, scale: float | None) -> None:
    """--tokens or --tokens-scale (not both), each > 0."""
    if tokens is not None and scale is not None:
        raise MidtrainError("--tokens-scale: --tokens is given too; give one of them")
    if tokens is not None and tokens <= 0:
        raise MidtrainError(f"--tokens {tokens}: must be > 0")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise MidtrainError(f"--tokens-scale {scale:g}: must be a number > 0, e.g. 10 (Olmo 3's "
                            "integration rounds: ~10x the microanneals' tokens)")  # fmt: skip


def round_tokens(study_tokens: int, tokens: int | None, scale: float | None) -> int:
    """The round's tokens per run: --tokens, else --tokens-scale x the study's (default 1x)."""
    return tokens or max(1, round(study_tokens * (scale or 1.0)))


def _winners(found: list[tuple[StudyTable, StudyResult]]) -> tuple[dict, dict, list[str]]:
    """{candidate: its mix} of the included candidates, the repetition caps (base and
    candidates), and the tasks those candidates target."""
    cfg0 = found[0][0]
    groups, caps = {}, {s: cfg0.get("base_max_repetition", 1.0) for s in cfg0["base"]}
    targets: list[str] = []
    for cfg, res in found:
        won = winners(cfg, res)
        for cand, mix in won.items():
            groups.setdefault(cand, mix)
            rep = next(c.get("max_repetition", 1.0) for c in cfg["candidates"] if c["name"] == cand)
            caps |= {s: max(caps.get(s, 1.0), rep) for s in mix}
        targets += [t for t in candidate_targets([cfg], set(won)) if t not in targets]
    tasks = (cfg0.get("eval") or {}).get("tasks") or []  # the round's suite is the first study's
    return groups, caps, [t for t in targets if t in tasks]


def _check_anchor_tokens(anchor: dict[str, float], share: float, tokens: int,
                         stored: dict[str, int], caps: dict[str, float]) -> None:  # fmt: skip
    for s, r in anchor.items():
        need = share * r * tokens / stored[s]
        if need > caps.get(s, 1.0) + RATIO_TOL:
            raise MidtrainError(f"anchor {s}: the anchor share {share:.3f} needs {need:.2f} epochs "
                                f"of {s} (cap {caps.get(s, 1.0):g}); lower --tokens (or "
                                "--tokens-scale) or add candidate data")  # fmt: skip


def finish_round(rnd: RoundTable, cfg0: StudyTable, studies: list[Path], *, tokens: int,
                 out: Path, history: Path | None, last: RoundResult | None) -> RoundTable:  # fmt: skip
    """The study fields of the first study, the tokens, and `reuse` (the studies and the last
    round) added to a round's own fields; paths relative to `out`'s folder."""
    rnd |= {k: cfg0[k] for k in COPIED if cfg0.get(k) is not None}
    rnd["tokens"] = tokens
    reuse = [str(Path(d).resolve()) for d in studies]
    if last is not None and history is not None:
        reuse.append(str((history / last.name).resolve()))
    rnd["reuse"] = reuse
    return _relative(rnd, Path(out).resolve().parent)


def store_tokens(cfg: StudyTable) -> dict[str, int]:
    """Training tokens of each store of a study."""
    from midtrain.data.store import open_store

    return {s: open_store(p, f"stores.{s}").n_train_tokens for s, p in cfg["stores"].items()}


def _relative(rnd: RoundTable, base: Path) -> RoundTable:
    def rel(p: str) -> str:
        return os.path.relpath(p, base)

    rnd["checkpoint"] = rel(rnd["checkpoint"])
    rnd["stores"] = {k: rel(v) for k, v in rnd["stores"].items()}
    rnd["reuse"] = [rel(p) for p in rnd["reuse"]]
    ev = rnd.get("eval") or {}
    if ev.get("include_path"):
        ev["include_path"] = rel(ev["include_path"])
    for s in (rnd.get("sft_probe") or {}).get("sets", []):
        for k in ("train", "val"):
            if s.get(k):
                s[k] = rel(s[k])
    return rnd


def write_round(rnd: RoundTable, notes: list[str], studies: list[Path], out: Path,
                head: list[str] | None = None) -> list[GuardTable]:  # fmt: skip
    """Validate the round (it compiles to a study), then write it; its comments name the
    automatic guards that study adds. Returns those guards (as data)."""
    from midtrain.integrate.config import round_study
    from midtrain.io import atomic_write_text

    _, cfg = round_study(dict(rnd), source=out.name, base_dir=out.resolve().parent)
    given = len(rnd.get("guards") or [])  # with_guards appends after the file's own
    auto = [g.model_dump(exclude_none=True) for g in cfg.guards[given:]]
    atomic_write_text(out, round_toml(rnd, notes, studies, head, auto))
    return auto


def round_toml(rnd: RoundTable, notes: list[str], studies: list[Path],
               head: list[str] | None = None, auto: list[GuardTable] | None = None) -> str:  # fmt: skip
    """The round file's text: `head` comment lines (default: propose's), the automatic guards
    (when given), then the TOML."""
    import tomli_w

    head = head or [
        "# An integration round drafted by `midtrain integrate propose` from:",
        *[f"#   {p}" for p in studies],
        "# anchor = the base mix at anchor_share; sources = the included candidates (and the last",
        "# round's sources) sharing the rest equally, then scaled to budgets and repetition caps:",
        *[f"#   {n}" for n in notes or ["(no budget or cap was binding)"]],
        "# Edit the shares (they sum to 1 with anchor_share), then: midtrain integrate run THIS --out HISTORY",
    ]  # fmt: skip
    if auto is not None:  # before the closing "then run it" line
        text = ("Automatic guards (the anchor's scored sources, every task not in targets; a "
                f"[[guards]] entry overrides): {describe(auto)}")  # fmt: skip
        head = [*head[:-1], *(f"# {x}" for x in textwrap.wrap(text, 96)), head[-1]]
    clean = _drop_none(rnd)
    return "\n".join(head) + "\n" + tomli_w.dumps(clean)


def _drop_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _drop_none(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_none(v) for v in x if v is not None]
    return x
