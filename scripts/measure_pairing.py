"""Measure what paired streams (common random numbers) buy on null arms.

Runs the A/A calibration studies twice on the same seeds, with `paired_streams = false` and
`true` (the control runs are shared), and prints per design (fraction) the arm-control
correlation of the primary, the sphericity ratio and the primary interval half-widths.

    python scripts/measure_pairing.py --out pairing-out [--quick] [--seeds 6] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from midtrain.bench.calibrate import run_calibration
from midtrain.stats import contrast
from midtrain.stats.calibrate import CalibrationSettings
from midtrain.study.results import StudyResult


def design_stats(study_dir: Path) -> dict[str, dict]:
    res = StudyResult.load(study_dir / "results.json")
    ctrl = {r.seed: s for r, s in zip(
        [r for r in res.control.runs if r.status == "done"],
        res.control.noise_floor.control_scores, strict=True)}  # fmt: skip
    designs: dict[str, dict[str, dict[int, float]]] = {}
    widths: dict[str, list[float]] = {}
    for a in res.arms:
        if a.primary is None:
            continue
        key = "cpt" if a.cpt else f"{a.fraction:g}"
        designs.setdefault(key, {"control": ctrl})[a.arm] = dict(
            zip(a.seeds, a.primary.run_scores, strict=True)
        )
        widths.setdefault(key, []).append((a.primary.ci[1] - a.primary.ci[0]) / 2)
    out = {}
    for key, scores in designs.items():
        p = contrast.pairing(scores, "control")
        out[key] = {**p.__dict__, "median_half_width": statistics.median(widths[key])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("pairing-out"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3])
    ap.add_argument("--cpt", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    out = args.out.resolve()
    report = {}
    for paired in (False, True):
        name = "paired" if paired else "independent"
        s = CalibrationSettings(
            studies=1, shards=args.shards, seeds=args.seeds, fractions=args.fractions,
            cpt=args.cpt, paired=paired, workers=args.workers,
            reuse=[] if not paired else [str(out / "independent")],
        )  # fmt: skip
        run_calibration(out / name, s, quick=args.quick)
        report[name] = design_stats(out / name / "aa0")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
