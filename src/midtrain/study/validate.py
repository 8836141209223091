"""`midtrain validate`: how often a study's decisions agree with a reference made with more compute.

The reference is the same study with more anneal tokens (`--scale-tokens N`, run here) or any
finished study of the same arms (`--reference DIR`: more tokens, a larger model of the family).
Reported, over the arms both studies decided on:

- `pairwise_accuracy`: the share of arm pairs the two order the same way by their primary delta
  (DataDecide's decision accuracy);
- `verdict_agreement`: the share of arms with the same verdict;
- `significant_pairs_kept`: of the pairs the study itself could separate (the difference of the two
  arms' deltas has an interval excluding 0, with the pooled run-to-run noise), the share the
  reference orders the same way;
- `reference_separable`: the share of pairs the reference itself separates; its own seed noise
  bounds what agreement on the other pairs can mean;
- per arm, the drift of the delta from the study to the reference.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

from pydantic import BaseModel
from scipy import stats as sps

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.study.results import ArmResult, StudyResult


class ArmComparison(BaseModel):
    arm: str
    verdict: str
    delta: float
    reference_verdict: str
    reference_delta: float


class Validation(BaseModel):
    pairs: int
    pairwise_accuracy: float | None
    verdict_agreement: float | None
    significant_pairs: int
    significant_pairs_kept: float | None
    reference_separable: float | None
    arms: list[ArmComparison]
    tokens: int  # anneal tokens per run of the study
    reference_tokens: int
    reference_wall_s: float  # the reference's training time, summed over its runs

    def summary(self) -> str:
        def pct(x: float | None) -> str:
            return "–" if x is None else f"{x:.2f}"

        return (
            f"pairwise accuracy {pct(self.pairwise_accuracy)} over {self.pairs} pairs; verdict "
            f"agreement {pct(self.verdict_agreement)}; pairs the study separated "
            f"{self.significant_pairs}, kept {pct(self.significant_pairs_kept)}; the reference "
            f"separates {pct(self.reference_separable)} of all pairs "
            f"(reference: {self.reference_tokens:,} tokens per run, {self.reference_wall_s:.0f}s)"
        )


def load(study_dir: Path) -> StudyResult:
    p = Path(study_dir) / "results.json"
    if not p.is_file():
        raise MidtrainError(f"{p} not found; run the study first (midtrain study run)")
    return StudyResult.load(p)


def run_reference(study_dir: Path, scale: int | None, workers: int = 1) -> Path:
    """Run the study of `study_dir` again with tokens x `scale` into STUDY_DIR/reference-xN."""
    from midtrain.study.config import StudyConfig
    from midtrain.study.runner import run_study

    if scale is None or scale < 2:
        raise MidtrainError("--scale-tokens N (N >= 2) or --reference DIR: give one")
    record = Path(study_dir) / "study.json"
    if not record.is_file():
        raise MidtrainError(f"{record} not found; pass a study directory made by `study run`")
    cfg = StudyConfig.model_validate(read_json(record)["config"])
    ref = cfg.model_copy(update={"tokens": cfg.tokens * scale, "name": f"{cfg.name}-x{scale}"})
    out = Path(study_dir) / f"reference-x{scale}"
    run_study(ref, out, workers=workers)
    return out


def _pair_separated(r: StudyResult, a: ArmResult, b: ArmResult) -> bool:
    """Whether the difference of two arms' deltas has an interval excluding 0 (run noise only)."""
    nf = r.control.noise_floor
    sd, df = (nf.primary_sd, nf.df) if nf is not None else (None, 0)
    if a.decided_on == "sft" and r.probe is not None:  # the SFT score decided: its own noise
        sd, df = r.probe.noise_sd, r.probe.noise_df
    if sd is None or df <= 0:
        return False
    na, nb = len(a.primary.run_scores), len(b.primary.run_scores)
    se = sd * math.sqrt(1 / na + 1 / nb)
    q = sps.t.ppf(0.5 + r.confidence / 2, df)
    return abs(a.primary.delta - b.primary.delta) > q * se


def compare(study_dir: Path, reference_dir: Path) -> Validation:
    small, ref = load(study_dir), load(reference_dir)
    ref_arms = {a.arm: a for a in ref.arms if a.primary is not None}
    both = [a for a in small.arms if a.primary is not None and a.arm in ref_arms]
    if len(both) < 2:
        raise MidtrainError(
            f"{reference_dir}: fewer than two arms decided in both studies; compare studies of "
            "the same candidates"
        )
    pairs = list(combinations(both, 2))
    same = [
        (a.primary.delta - b.primary.delta) * (ref_arms[a.arm].primary.delta
                                               - ref_arms[b.arm].primary.delta) > 0
        for a, b in pairs
    ]  # fmt: skip
    sig = [i for i, (a, b) in enumerate(pairs) if _pair_separated(small, a, b)]
    ref_sep = [_pair_separated(ref, ref_arms[a.arm], ref_arms[b.arm]) for a, b in pairs]
    arms = [
        ArmComparison(arm=a.arm, verdict=a.verdict, delta=a.primary.delta,
                      reference_verdict=ref_arms[a.arm].verdict,
                      reference_delta=ref_arms[a.arm].primary.delta)
        for a in both
    ]  # fmt: skip
    return Validation(
        pairs=len(pairs), pairwise_accuracy=sum(same) / len(pairs),
        verdict_agreement=sum(a.verdict == a.reference_verdict for a in arms) / len(arms),
        significant_pairs=len(sig),
        significant_pairs_kept=sum(same[i] for i in sig) / len(sig) if sig else None,
        reference_separable=sum(ref_sep) / len(pairs), arms=arms,
        tokens=small.control.cost.tokens // max(1, small.control.cost.runs),
        reference_tokens=ref.control.cost.tokens // max(1, ref.control.cost.runs),
        reference_wall_s=ref.control.cost.wall_s + sum(a.cost.wall_s for a in ref.arms),
    )  # fmt: skip
