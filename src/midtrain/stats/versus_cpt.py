"""Midtraining against continued pretraining, directly: a candidate's mixed arm minus its @cpt arm.

Each arm is decided against the control; Liu, Neubig and Xiong (2025) compare the two arms with
each other (midtraining beat continued pretraining on in-domain SFT loss and on forgetting). For
every candidate with `continued_pretraining = true` and each of its mixed arms, the difference
mix arm − @cpt arm, seed by seed on the same eval examples: `contrast.contrast` with the @cpt arm in
the control's place, so its run-to-run variance comes from these paired differences alone (the
shared control cancels; df = seeds - 1), plus the example term. On the tasks' primary (the
arms' tasks, weights and metric), and with an SFT probe on the SFT score (minus the validation
loss, mean over sets) and on forgetting (bits per byte on the base mix after SFT, mean over sets
and base domains). Descriptive: these are not in the study's decision family (no correction).
"""

from __future__ import annotations

import math

from midtrain.stats import analysis, contrast
from midtrain.stats.data import StudyData
from midtrain.stats.probe_gains import ProbeData, base_domains
from midtrain.study.config import StudyConfig
from midtrain.study.plan import CPT
from midtrain.study.results import ArmResult, CptContrast, Versus


def contrasts(data: StudyData, probe: ProbeData | None, cfg: StudyConfig,
              arms: list[ArmResult], confidence: float) -> list[CptContrast]:  # fmt: skip
    """One contrast per mixed arm whose candidate's @cpt arm has finished runs."""
    out = []
    for a in arms:
        cpt = f"{a.name}@{CPT}"
        if a.cpt or a.arm not in data.groups or cpt not in data.groups:
            continue
        tasks_primary = a.base_primary if a.decided_on == "sft" else a.primary
        out.append(CptContrast(
            candidate=a.name, arm=a.arm, cpt_arm=cpt, metric=cfg.analysis.primary,
            primary=_primary(data, cfg, tasks_primary.tasks if tasks_primary else [], a.arm, cpt,
                             confidence),
            sft=_sft(probe, cfg, a.arm, cpt, confidence) if probe else None,
            forgetting=_forgetting(probe, cfg, a.arm, cpt, confidence) if probe else None,
        ))  # fmt: skip
    return out


def versus(qs: list[contrast.Quantity], a: str, b: str, confidence: float,
           weights: list[float] | None = None) -> Versus | None:  # fmt: skip
    """`a` minus `b` on the (weighted) mean of `qs`, from their paired per-seed differences;
    None when they share no seed or the quantities' runs differ."""
    if not qs or any(q.run_seeds() != qs[0].run_seeds() for q in qs):
        return None
    c = contrast.contrast(qs, a, b, confidence, None, weights)
    if c.seeds == 0 or not math.isfinite(c.delta):
        return None
    ok = c.decidable
    return Versus(delta=c.delta, ci=c.ci if ok else None, se=analysis._finite(c.se),
                  df=c.df if ok else None, p=analysis._finite(c.p), seeds=c.seeds)  # fmt: skip


def _primary(data: StudyData, cfg: StudyConfig, tasks: list[str], a: str, b: str,
             confidence: float) -> Versus | None:  # fmt: skip
    metric, groups = cfg.analysis.primary, list(data.groups)
    qs = [data.quantity("tasks", t, metric, groups) for t in tasks]
    if not qs or any(q is None for q in qs):
        return None
    w = analysis.primary_weights(data, qs, cfg.analysis.primary_score)
    return versus(qs, a, b, confidence, w)


def _pair(probe: ProbeData, keys: list[tuple], a: str, b: str) -> list[contrast.Quantity] | None:
    qs = [probe.quantity(k, a) for k in keys]
    if not qs or any(q is None or b not in q.groups for q in qs):
        return None
    return qs


def _sft(probe: ProbeData, cfg: StudyConfig, a: str, b: str, conf: float) -> Versus | None:
    qs = _pair(probe, [("val", s.name) for s in cfg.sft_probe.sets], a, b)
    if qs is None:
        return None
    return versus([contrast.Quantity({g: -y for g, y in q.groups.items()}, q.seeds) for q in qs],
                  a, b, conf)  # fmt: skip


def _forgetting(probe: ProbeData, cfg: StudyConfig, a: str, b: str, conf: float) -> Versus | None:
    keys = [("bpb", s.name, d) for s in cfg.sft_probe.sets for d in base_domains(cfg)]
    qs = _pair(probe, keys, a, b)
    return versus(qs, a, b, conf) if qs else None
