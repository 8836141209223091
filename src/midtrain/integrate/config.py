"""The round file: one integration round of a full midtraining mix, as a study.

A round names an anchor (replayed base data) at `anchor_share`, the sources that join it with
their shares of the whole mix, the mix it must beat (`previous`: the last round's mix, or the base
mix for round 1), group budgets, per-source repetition caps and leave-one-out ablations. It
compiles into an ordinary study (`round_study`): the control trains on `previous`, the arm
`NAME@1` on the round's mix, and one arm `NAME-no-SOURCE@1` per ablation (same tokens, the removed
share given back to the anchor). Every other field (checkpoint, stores, tokens, seeds, schedule,
eval, analysis, guards, sft_probe, train, reuse) is a study field and means what it means there.
The round's study also gets the automatic no-regression guards and the anchor floor of
`integrate.guards` (`no_anchor`, `targets`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from midtrain.errors import MidtrainError
from midtrain.integrate.guards import MIN_ANCHOR_SHARE, anchor_floor, auto_guards
from midtrain.mix.spec import RATIO_TOL, check_ratios
from midtrain.schema import Strict, field, load_toml, validate
from midtrain.study.config import Guard, StudyConfig, parse_study
from midtrain.study.tables import RoundTable

ROUND_OWNED = ("base", "candidates", "fractions", "base_max_repetition", "source_max_repetition",
               "merge_seeds")  # fmt: skip


class RoundSpec(Strict):
    """The round's own fields (the rest of the file is the study it runs as)."""

    name: str = field("round-1", description="The round's name: its folder in the history.")
    round: int = field(1, ge=1, description="The round's number (orders the round table).")
    anchor: dict[str, float] = field(
        description="{source = ratio}: the anchor's own sources (replayed base data)."
    )
    anchor_share: float = field(
        ge=0.0, le=1.0, description=f"The anchor's share of the round's mix (at least "
        f"{MIN_ANCHOR_SHARE:g} unless no_anchor).", unit="fraction",
    )  # fmt: skip
    no_anchor: bool = field(
        False, description=f"Allow an anchor share below {MIN_ANCHOR_SHARE:g} (0 included)."
    )
    targets: list[str] = field(
        [], description="Tasks of eval.tasks the round aims at; every other task and every "
        "scored anchor source is guarded automatically (a [[guards]] entry overrides)."
    )  # fmt: skip
    sources: dict[str, float] = field(
        description="{source = share}: every other source, as a share of the whole mix; the "
        "shares and anchor_share sum to 1.",
        unit="fraction",
    )
    previous: dict[str, float] = field(
        description="{source = ratio}: the mix to beat: the last round's mix, or the base mix."
    )
    previous_name: str = field("base", description="What `previous` is, in tables.")
    ablate: list[str] = field(
        [], description="Sources of `sources` to leave out one at a time (same tokens; the "
        "removed share goes to the anchor)."
    )  # fmt: skip
    budgets: dict[str, float] = field(
        {}, description='{"a+b" = share}: the most the named sources may take together.',
        unit="fraction",
    )  # fmt: skip
    max_repetition: dict[str, float] = field(
        {}, description="{source = epochs}: the most epochs of each source's tokens per run "
        "(default 1).", unit="epochs",
    )  # fmt: skip
    merge_seeds: bool = field(
        False, description="Merge the round's seeds and compare the merge with each seed."
    )

    @field_validator("anchor", "previous")
    @classmethod
    def _sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        check_ratios(v)
        return v

    def mix(self, without: str | None = None) -> dict[str, float]:
        """The round's whole mix (without one source: its share goes back to the anchor)."""
        shares = {s: v for s, v in self.sources.items() if s != without and v > 0}
        anchor = 1.0 - sum(shares.values())
        out = {s: anchor * r for s, r in self.anchor.items() if r > 0}
        for s, v in shares.items():
            out[s] = out.get(s, 0.0) + v
        return {s: round(v, 12) for s, v in sorted(out.items()) if round(v, 12) > 0}

    def arm(self) -> str:
        return f"{self.name}@1"

    def ablation_arm(self, source: str) -> str:
        return f"{self.name}-no-{source}@1"


def check_round(spec: RoundSpec) -> None:
    """The anchor floor holds, shares sum to 1, budgets hold, ablations name sources (one line
    naming the field)."""
    if spec.anchor_share < anchor_floor(spec.no_anchor) - RATIO_TOL:
        raise MidtrainError(
            f"anchor_share: {spec.anchor_share:g} is below the minimum anchor share "
            f"{MIN_ANCHOR_SHARE:g} (the replayed base mix, docs/integration.md); raise it (and "
            "lower the sources' shares), or set no_anchor = true to allow it"
        )
    total = spec.anchor_share + sum(spec.sources.values())
    if abs(total - 1.0) > RATIO_TOL:
        raise MidtrainError(
            f"sources: anchor_share ({spec.anchor_share:g}) plus the sources' shares is "
            f"{total:.6g}, not 1; adjust the shares so that they sum to 1"
        )
    for src, v in spec.sources.items():
        if not 0.0 <= v <= 1.0:
            raise MidtrainError(f"sources.{src}: {v} is not a share in [0, 1]")
        if src in spec.anchor:
            raise MidtrainError(f"sources.{src}: is an anchor source; raise anchor_share instead")
    for group, cap in spec.budgets.items():
        names = [g.strip() for g in group.split("+")]
        mix = spec.mix()
        unknown = [n for n in names if n not in mix and n not in spec.sources]
        if unknown:
            raise MidtrainError(f"budgets.{group}: {unknown[0]!r} is not a source of the round")
        used = sum(mix.get(n, 0.0) for n in names)
        if not 0.0 < cap <= 1.0:
            raise MidtrainError(f"budgets.{group}: {cap} is not a share in (0, 1]")
        if used > cap + RATIO_TOL:
            raise MidtrainError(
                f"budgets.{group}: the mix gives these sources {used:.4g} > {cap:g}; lower "
                f"their shares (or raise the budget)"
            )
    for i, src in enumerate(spec.ablate):
        if src not in spec.sources or spec.sources[src] <= 0:
            raise MidtrainError(f"ablate[{i}]: {src!r} is not one of the round's sources "
                                f"({', '.join(sorted(spec.sources))})")  # fmt: skip
    previous = {s: round(r, 12) for s, r in sorted(spec.previous.items()) if r > 0}
    if spec.mix() == previous:
        raise MidtrainError("previous: equals the round's mix; a round must change the mix")
    for i, src in enumerate(spec.ablate):
        if spec.mix(without=src) == previous:
            raise MidtrainError(f"ablate[{i}]: leaving {src!r} out gives the previous mix, which "
                                "the round's control already trains; drop it from ablate")  # fmt: skip


def round_study(data: RoundTable, source: str = "",
                base_dir: Path | None = None) -> tuple[RoundSpec, StudyConfig]:  # fmt: skip
    """Split a round file into its RoundSpec and the study it runs as."""
    own = {k: data[k] for k in RoundSpec.model_fields if k in data}
    spec = validate(RoundSpec, own, source=source)
    check_round(spec)
    rest = {k: v for k, v in data.items() if k not in own}
    for k in ROUND_OWNED:
        if k in rest:
            raise MidtrainError(f"{source or 'round'}: {k}: is set by the round (anchor, sources, "
                                "previous, max_repetition, merge_seeds); remove it")  # fmt: skip
    candidates = [{"name": spec.name, "mix": spec.mix(), "fractions": [1.0]}]
    candidates += [
        {"name": f"{spec.name}-no-{s}", "mix": spec.mix(without=s), "fractions": [1.0]}
        for s in spec.ablate
    ]
    study = {
        "name": spec.name, **rest, "base": spec.previous, "candidates": candidates,
        "fractions": [1.0], "source_max_repetition": spec.max_repetition,
        "merge_seeds": [spec.arm()] if spec.merge_seeds else False,
        # unpaired unless asked: round N's control is round N-1's arm (reused by run id), and a
        # paired arm's stream is aligned with its own control's, not with a later round's
        "paired_streams": rest.get("paired_streams", False),
    }  # fmt: skip
    return spec, with_guards(spec, parse_study(study, source=source, base_dir=base_dir), source)


def with_guards(spec: RoundSpec, cfg: StudyConfig, source: str = "") -> StudyConfig:
    """The round's targets on its arms, and the automatic guards (on the scored anchor sources
    and on every task the round does not target) after the file's own guards."""
    for i, t in enumerate(spec.targets):
        if t not in cfg.eval.tasks:
            where = f"{source}: targets[{i}]" if source else f"targets[{i}]"
            raise MidtrainError(f"{where}: {t!r} is not in eval.tasks; add it there or drop it")
    for c in cfg.candidates:
        c.targets = list(spec.targets)
    scored = [s for s, r in spec.anchor.items() if r > 0 and s in cfg.domain_names]
    given = [g.model_dump() for g in cfg.guards]
    cfg.guards += [Guard(**g) for g in auto_guards(scored, cfg.eval.tasks, spec.targets, given)]
    return cfg


def load_round(path: str | Path) -> tuple[RoundSpec, StudyConfig]:
    path = Path(path)
    data = load_toml(path, "round file")
    return round_study(data, source=path.name, base_dir=path.parent.resolve())
