"""`midtrain validate`: how often a study's decisions agree with a reference made with more compute.

The reference is the same study with more anneal tokens (`--scale-tokens N`, run here, on seeds
disjoint from the study's unless `--reuse-seeds`) or any finished study of the same arms
(`--reference DIR`: more tokens, a larger model of the family). The points compared are the arms
both studies decided on **and the control** (delta 0 in both): a pair of two arms is a choice
between them, a pair (arm, control) the decision whether the arm helps at all. Reported:

- `pairwise_accuracy`: of the pairs neither study ties, the share the two order the same way by
  their primary delta (DataDecide's decision accuracy), with a Wilson interval that is approximate
  (pairs share arms, so they are not independent); `ties` apart, neither agreement nor not;
- `arm_pairs` and `control_pairs` (the latter: the sign of each arm's delta) separately;
- `verdict_agreement`: the share of arms with the same verdict;
- `significant_pairs_kept`: of the pairs the study itself could separate (two arms: the difference
  of their deltas, paired seed by seed so the shared control cancels, has an interval excluding 0; arm and control:
  the arm's own interval excludes 0), the share the reference orders the same way;
- `reference_separable`: the share of pairs the reference itself separates; its own seed noise
  bounds what agreement on the other pairs can mean; `reference_separated_accuracy`: the accuracy
  over those pairs only;
- per arm, the drift of the delta from the study to the reference.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from scipy import stats as sps

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.results import ArmResult, StudyResult

TIE = 1e-9  # two deltas closer than this (primary-score units) are equal: the pair is a tie
SEED_SHIFT = 1000  # the reference's seeds: the study's plus this (more if they span 1000 or more)


class ArmComparison(BaseModel):
    arm: str
    verdict: str
    delta: float
    reference_verdict: str
    reference_delta: float


class Pair(BaseModel):
    """Two points (arms, or an arm and the control) and how the two studies order them."""

    a: str
    b: str
    diff: float  # delta(a) - delta(b) in the study
    reference_diff: float
    outcome: Literal["agree", "disagree", "tie"]
    separated: bool = False  # the study's interval of the difference excludes 0
    reference_separated: bool = False


class PairCount(BaseModel):
    pairs: int
    agree: int
    disagree: int
    ties: int
    accuracy: float | None  # agree / (agree + disagree); None when every pair is tied


class Validation(BaseModel):
    pairs: int  # every pair of points, the control included: C(arms + 1, 2)
    pairwise_accuracy: float | None  # over the pairs neither study ties
    pairwise_accuracy_ci: list[float] | None = None  # Wilson; approximate (pairs share arms)
    agreements: int = 0
    disagreements: int = 0
    ties: int = 0  # pairs whose deltas are equal (within TIE) in the study or the reference
    tied_pairs: list[list[str]] = []
    arm_pairs: PairCount | None = None  # pairs of two arms
    control_pairs: PairCount | None = None  # (arm, control): the sign of each arm's delta
    verdict_agreement: float | None
    significant_pairs: int
    significant_pairs_kept: float | None
    reference_separable: float | None
    reference_separated_accuracy: float | None = (
        None  # accuracy over the pairs the reference separates
    )
    arms: list[ArmComparison]
    tokens: int  # anneal tokens per run of the study
    reference_tokens: int
    reference_wall_s: float  # the reference's training time, summed over its runs
    seeds: list[int] = []  # the study's control seeds
    reference_seeds: list[int] = []
    shared_seeds: list[int] = []  # seeds in both: shared data order inflates agreement
    confidence: float = 0.95
    interval_note: str = "Wilson score interval; approximate: pairs share arms, not independent"

    def summary(self) -> str:
        def pct(x: float | None) -> str:
            return "–" if x is None else f"{x:.2f}"

        ci = self.pairwise_accuracy_ci
        ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}] (Wilson, approximate)" if ci else ""
        arm, ctl = self.arm_pairs, self.control_pairs
        text = (
            f"pairwise accuracy {pct(self.pairwise_accuracy)}{ci_text}: {self.agreements} of "
            f"{self.agreements + self.disagreements} pairs ordered the same, {self.ties} tied "
            f"(of {self.pairs}, the control included); arm vs arm {pct(arm and arm.accuracy)}, "
            f"sign vs control {pct(ctl and ctl.accuracy)}; verdict agreement "
            f"{pct(self.verdict_agreement)}; pairs the study separated {self.significant_pairs}, "
            f"kept {pct(self.significant_pairs_kept)}; the reference separates "
            f"{pct(self.reference_separable)} of all pairs, accuracy on those "
            f"{pct(self.reference_separated_accuracy)} (reference: {self.reference_tokens:,} "
            f"tokens per run, {self.reference_wall_s:.0f}s, seeds {_seeds(self.reference_seeds)})"
        )
        if self.shared_seeds:
            text += (f"; the reference reuses seeds {_seeds(self.shared_seeds)} of the study: "
                     "shared data order makes agreement look better")  # fmt: skip
        return text


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds)) or "–"


def load(study_dir: Path) -> StudyResult:
    p = Path(study_dir) / "results.json"
    if not p.is_file():
        raise MidtrainError(f"{p} not found; run the study first (midtrain study run)")
    return StudyResult.load(p)


def reference_config(
    study_dir: Path, scale: int | None, reuse_seeds: bool = False
) -> tuple[StudyConfig, Path]:
    """The reference study of `study_dir` (tokens x `scale`; seeds shifted past the study's unless
    `reuse_seeds`) and its folder, STUDY_DIR/reference-xN (or reference-xN-same-seeds)."""
    if scale is None or scale < 2:
        raise MidtrainError("--scale-tokens N (N >= 2) or --reference DIR: give one")
    record = Path(study_dir) / "study.json"
    if not record.is_file():
        raise MidtrainError(f"{record} not found; pass a study directory made by `study run`")
    data = read_json(record)
    cfg = StudyConfig.model_validate(data["config"])
    update: dict = {"tokens": cfg.tokens * scale, "name": f"{cfg.name}-x{scale}",
                    # the reference is read at its end only: no eval points
                    "eval": cfg.eval.model_copy(update={"points": [1.0]})}  # fmt: skip
    out = Path(study_dir) / f"reference-x{scale}"
    if reuse_seeds:
        return cfg.model_copy(update=update), out.with_name(f"{out.name}-same-seeds")
    used = sorted({int(r["seed"]) for r in data.get("runs", []) if r.get("arm") == CONTROL})
    seeds = used or cfg.first_seeds  # seeds = "auto": every seed the study's control ran
    shift = max(SEED_SHIFT, max(seeds) - min(seeds) + 1)
    update["seeds"] = [s + shift for s in seeds]
    if cfg.sft_probe is not None and cfg.sft_probe.seeds is not None:
        probe_seeds = [s + shift for s in cfg.sft_probe.seeds]
        update["sft_probe"] = cfg.sft_probe.model_copy(update={"seeds": probe_seeds})
    return cfg.model_copy(update=update), out


def _pair_separated(r: StudyResult, a: ArmResult, b: ArmResult | None) -> bool:
    """Whether the difference of two arms' deltas (b None: the arm's delta itself, against the
    control) has an interval excluding 0 (run noise only)."""
    if b is None:
        lo, hi = a.primary.ci
        return lo > 0 or hi < 0
    if a.decided_on == "sft" and r.probe is not None:  # the SFT score decided: its own noise
        sd, df = r.probe.noise_sd, r.probe.noise_df
        if sd is None or df <= 0:
            return False
        na, nb = len(a.primary.run_scores), len(b.primary.run_scores)
        q = sps.t.ppf(0.5 + r.confidence / 2, df)
        return abs(a.primary.delta - b.primary.delta) > q * sd * math.sqrt(1 / na + 1 / nb)
    # the two arms share the control: their difference is paired seed by seed (a - b), so the
    # control's noise cancels instead of being counted twice or assumed away
    sa = dict(zip(a.seeds, a.primary.run_scores, strict=False))
    sb = dict(zip(b.seeds, b.primary.run_scores, strict=False))
    d = [sa[s] - sb[s] for s in sorted(set(sa) & set(sb))]
    if len(d) < 2:
        return False
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    q = sps.t.ppf(0.5 + r.confidence / 2, len(d) - 1)
    return abs(mean) > q * sd / math.sqrt(len(d))


def order(diff: float, reference_diff: float) -> Literal["agree", "disagree", "tie"]:
    """A pair's outcome: a tie when either study gives the two points equal deltas (within TIE)."""
    if abs(diff) <= TIE or abs(reference_diff) <= TIE:
        return "tie"
    return "agree" if (diff > 0) == (reference_diff > 0) else "disagree"


def pair_up(deltas: dict[str, float], reference: dict[str, float]) -> list[Pair]:
    """Every pair of the arms in `deltas` (all in `reference`) and of each arm with the control
    (delta 0 in both), in order: arm pairs first, then (arm, control)."""
    names = list(deltas)
    pairs = [(a, b) for a, b in combinations(names, 2)] + [(a, CONTROL) for a in names]
    study, ref = {**deltas, CONTROL: 0.0}, {**reference, CONTROL: 0.0}
    return [
        Pair(a=a, b=b, diff=study[a] - study[b], reference_diff=ref[a] - ref[b],
             outcome=order(study[a] - study[b], ref[a] - ref[b]))
        for a, b in pairs
    ]  # fmt: skip


def count(pairs: list[Pair]) -> PairCount:
    agree = sum(p.outcome == "agree" for p in pairs)
    disagree = sum(p.outcome == "disagree" for p in pairs)
    ties = len(pairs) - agree - disagree
    decided = agree + disagree
    return PairCount(pairs=len(pairs), agree=agree, disagree=disagree, ties=ties,
                     accuracy=agree / decided if decided else None)  # fmt: skip


def wilson(k: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Wilson score interval of k successes in n trials (None when n is 0)."""
    if n == 0:
        return None
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def compare(study_dir: Path, reference_dir: Path) -> Validation:
    small, ref = load(study_dir), load(reference_dir)
    ref_arms = {a.arm: a for a in ref.arms if a.primary is not None}
    both = [a for a in small.arms if a.primary is not None and a.arm in ref_arms]
    if len(both) < 2:
        raise MidtrainError(
            f"{reference_dir}: fewer than two arms decided in both studies; compare studies of "
            "the same candidates"
        )
    own = {a.arm: a for a in both}
    pairs = pair_up({a.arm: a.primary.delta for a in both},
                    {a.arm: ref_arms[a.arm].primary.delta for a in both})  # fmt: skip
    for p in pairs:
        p.separated = _pair_separated(small, own[p.a], own.get(p.b))
        p.reference_separated = _pair_separated(ref, ref_arms[p.a], ref_arms.get(p.b))
    total, sig = count(pairs), count([p for p in pairs if p.separated])
    ref_sep = count([p for p in pairs if p.reference_separated])
    arms = [
        ArmComparison(arm=a.arm, verdict=a.verdict, delta=a.primary.delta,
                      reference_verdict=ref_arms[a.arm].verdict,
                      reference_delta=ref_arms[a.arm].primary.delta)
        for a in both
    ]  # fmt: skip
    ref_tokens = ref.control.cost.tokens // max(1, ref.control.cost.runs)
    return Validation(
        pairs=len(pairs), pairwise_accuracy=total.accuracy,
        pairwise_accuracy_ci=wilson(total.agree, total.agree + total.disagree, small.confidence),
        agreements=total.agree, disagreements=total.disagree, ties=total.ties,
        tied_pairs=[[p.a, p.b] for p in pairs if p.outcome == "tie"],
        arm_pairs=count([p for p in pairs if p.b != CONTROL]),
        control_pairs=count([p for p in pairs if p.b == CONTROL]),
        verdict_agreement=sum(a.verdict == a.reference_verdict for a in arms) / len(arms),
        significant_pairs=sig.pairs, significant_pairs_kept=sig.accuracy,
        reference_separable=ref_sep.pairs / len(pairs), reference_separated_accuracy=ref_sep.accuracy,
        arms=arms,
        tokens=small.control.cost.tokens // max(1, small.control.cost.runs),
        reference_tokens=ref_tokens,
        reference_wall_s=ref.control.cost.wall_s + sum(a.cost.wall_s for a in ref.arms),
        seeds=list(small.control.seeds), reference_seeds=list(ref.control.seeds),
        shared_seeds=sorted(set(small.control.seeds) & set(ref.control.seeds)),
        confidence=small.confidence,
    )  # fmt: skip
