"""The SFT probe's statistics: every arm minus the control after SFT, with the study's intervals.

Each finished run contributes, per SFT set, one value per validation example (its loss after the
chosen LR's fine-tune; with several SFT seeds, their mean: the run stays the unit of
replication) and one per held-out document of each base-mix domain after SFT (bits per byte),
plus the same minus the run's own value before SFT (forgetting caused by SFT). These are
`contrast.Quantity`s like the tasks' and domains' of `stats/analysis.py`, so every interval is the
pooled-run t-interval of `stats/contrast.py`, the seeds as blocks. The SFT score (the primary with
`[analysis] decide_on = "sft"`) is the mean over sets of minus the delta of validation loss:
higher is better, like every primary score.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from midtrain.eval.results import Examples
from midtrain.probe.jobs import ProbeJobs
from midtrain.sft.grid import chosen_val_losses
from midtrain.stats import analysis, contrast
from midtrain.stats.data import build_quantity
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.results import (
    ArmProbe,
    ArmResult,
    DomainDelta,
    ProbeInfo,
    ProbeRun,
    SftSetDelta,
    TaskDelta,
)

SFT_METRIC = "sft_val_loss_reduction"  # control minus arm SFT validation loss: higher is better
Table = dict  # {example id: value}


@dataclass
class ProbeData:
    """Per quantity key (("val", set), ("bpb", set, domain), ("change", set, domain),
    ("task", set, task)): each group's finished runs' tables and seeds; and every probe's record."""

    tables: dict[tuple, dict[str, list[Table]]] = field(default_factory=dict)
    seeds: dict[tuple, dict[str, list[int]]] = field(default_factory=dict)
    records: dict[str, list[ProbeRun]] = field(default_factory=lambda: defaultdict(list))
    metrics: dict[str, str] = field(default_factory=dict)  # per task: the metric scored after SFT

    def add(self, key: tuple, group: str, seed: int, table: Table | None) -> None:
        if table:
            self.tables.setdefault(key, {}).setdefault(group, []).append(table)
            self.seeds.setdefault(key, {}).setdefault(group, []).append(seed)

    def quantity(self, key: tuple, arm: str) -> contrast.Quantity | None:
        """Every group's runs (the noise is pooled over the study); None without arm or control."""
        groups = self.tables.get(key, {})
        if arm not in groups or CONTROL not in groups:
            return None
        return build_quantity(groups, self.seeds[key])


def mean_table(tables: list[Table | None]) -> Table | None:
    """The mean over SFT seeds of one run's tables, on the examples all of them have."""
    if not tables or any(not t for t in tables):
        return None
    ids = set.intersection(*(set(t) for t in tables))
    return {i: float(np.mean([t[i] for t in tables])) for i in ids} or None


def _record(j: ProbeJobs, run: str, out: Path, done: bool) -> ProbeRun:
    res = j.sft.cached()
    return ProbeRun(
        run=run, set=j.set, seed=j.seed, status="done" if done else "missing",
        dir=str(j.dir.relative_to(out)) if j.dir.is_relative_to(out) else str(j.dir),
        chosen_lr=res.chosen_lr if res else None, val_loss=res.val_loss if res else None,
        val_before=res.val_before.loss if res else None,
    )  # fmt: skip


def load(plan, finished) -> ProbeData:  # noqa: ANN001 - a StudyPlan and its collect.Finished
    """Every finished run's probes, averaged over SFT seeds, by quantity key."""
    cfg, data = plan.config, ProbeData()
    for r in plan.runs:
        if not finished.done(r):
            continue
        by_set: dict[str, list[ProbeJobs]] = defaultdict(list)
        for j in r.probes:
            by_set[j.set].append(j)
        for name, jobs in by_set.items():
            done = all(j.sft.cached() is not None and j.eval.cached() is not None for j in jobs)
            data.records[r.name] += [_record(j, r.name, plan.out, done) for j in jobs]
            if done:
                _add_run(data, cfg, r, name, jobs, finished.evals[r.name])
    for j in plan.start_probes:
        data.records["start"].append(_record(j, "start", plan.out, j.sft.cached() is not None))
    return data


def _add_run(data: ProbeData, cfg: StudyConfig, r, name: str, jobs: list[ProbeJobs],
             before: Examples) -> None:  # fmt: skip
    """One run's tables on one set: validation loss, bpb after SFT and its change, tasks."""
    vals = [chosen_val_losses(j.dir, j.sft.cached()) for j in jobs]
    data.add(("val", name), r.arm, r.seed, mean_table(vals))
    after = [Examples.load(Path(j.eval.dir)) for j in jobs]
    for d in base_domains(cfg):
        post = mean_table([ex.values("domains", d, "bpb") for ex in after])
        data.add(("bpb", name, d), r.arm, r.seed, post)
        pre = before.values("domains", d, "bpb")
        if post and pre:
            change = {i: v - pre[i] for i, v in post.items() if i in pre}
            data.add(("change", name, d), r.arm, r.seed, change)
    if cfg.sft_probe.tasks:
        for t in cfg.eval.tasks:
            # a task without the primary metric (a generative one) is scored by its own score
            metric = task_metric(after, t, cfg.analysis.primary)
            vals = [ex.values("tasks", t, metric) for ex in after]
            data.add(("task", name, t), r.arm, r.seed, mean_table(vals))
            data.metrics[t] = metric


def task_metric(evs: list, task: str, primary: str) -> str:
    """`primary` when the task's records carry it, else `score` (exact match, pass@1)."""
    return primary if all(ex.values("tasks", task, primary) for ex in evs) else "score"


def base_domains(cfg: StudyConfig) -> list[str]:
    return sorted(d for d, w in cfg.base.items() if w > 0)


def _same_runs(qs: list[contrast.Quantity]) -> bool:
    return bool(qs) and all(q.run_seeds() == qs[0].run_seeds() for q in qs)


def _domain(
    qs: list[contrast.Quantity], arm: str, conf: float, peers: list[str]
) -> DomainDelta | None:
    """The arm minus the control on the mean of these domains (None when their runs differ)."""
    if not _same_runs(qs):
        return None
    c = contrast.contrast(qs, arm, CONTROL, conf, peers)
    return DomainDelta(delta_bpb=c.delta, ci=c.ci, se=analysis._finite(c.se),
                       n_docs=sum(q.n_examples for q in qs))  # fmt: skip


def analyse_set(data: ProbeData, cfg: StudyConfig, s: str, arm: str, conf: float,
                peers: list[str] | None = None) -> SftSetDelta | None:  # fmt: skip
    """One set: Δ validation loss, forgetting (after SFT, and after - before), tasks after SFT."""
    peers = peers or [arm]
    q = data.quantity(("val", s), arm)
    if q is None:
        return None
    c = contrast.contrast(q, arm, CONTROL, conf, peers)
    out = SftSetDelta(delta_val_loss=c.delta, ci=c.ci, se=analysis._finite(c.se),
                      n_examples=q.n_examples, val_loss=[float(x) for x in q.run_scores()[arm]])  # fmt: skip
    for kind, per, mean in (("bpb", out.domains, "forgetting"),
                            ("change", out.domains_change, "forgetting_change")):  # fmt: skip
        qs = {d: data.quantity((kind, s, d), arm) for d in base_domains(cfg)}
        qs = {d: x for d, x in qs.items() if x is not None}
        per.update({d: _domain([x], arm, conf, peers) for d, x in qs.items()})
        setattr(out, mean, _domain(list(qs.values()), arm, conf, peers))
    for t in cfg.eval.tasks if cfg.sft_probe.tasks else []:
        if (qt := data.quantity(("task", s, t), arm)) is not None:
            ct = contrast.contrast(qt, arm, CONTROL, conf, peers)
            out.tasks[t] = TaskDelta(
                delta=ct.delta, ci=ct.ci, se=analysis._finite(ct.se), df=ct.df,
                n_examples=qt.n_examples, n_seeds=len(qt.groups[arm]),
                metric=data.metrics.get(t, cfg.analysis.primary),
            )  # fmt: skip
    return out


def analyse_arm(
    data: ProbeData, cfg: StudyConfig, arm: ArmResult, conf: float, peers: list[str] | None = None
) -> ArmProbe:
    """The arm's probe per set and its SFT score: the mean over sets of minus Δ val loss;
    `peers` (the arms of its design) pool the run-to-run variance of the paired differences."""
    peers = peers or [arm.arm]
    names = [s.name for s in cfg.sft_probe.sets]
    sets = {
        s: d for s in names if (d := analyse_set(data, cfg, s, arm.arm, conf, peers)) is not None
    }
    qs = [data.quantity(("val", s), arm.arm) for s in names]
    primary = None
    if all(q is not None for q in qs) and _same_runs(qs):
        neg = [contrast.Quantity({g: -y for g, y in q.groups.items()}, q.seeds) for q in qs]
        primary = analysis.primary_result(neg, arm.arm, names, SFT_METRIC, conf, peers)
    runs = [p for r in arm.runs for p in data.records.get(r.name, [])]
    return ArmProbe(primary=primary, sets=sets, runs=runs)


def apply(arms: list[ArmResult], data: ProbeData, cfg: StudyConfig, conf: float) -> None:
    """Every arm's probe; with decide_on = "sft" the SFT score becomes the deciding primary."""
    for arm in arms:
        if arm.verdict == "failed":
            continue
        peers = [
            a.arm
            for a in arms
            if a.verdict != "failed" and (a.cpt, a.fraction) == (arm.cpt, arm.fraction)
        ]
        arm.probe = analyse_arm(data, cfg, arm, conf, peers)
        if cfg.analysis.decide_on == "sft":
            arm.decided_on, arm.base_primary = "sft", arm.primary
            arm.primary, arm.suggestion = arm.probe.primary, None
            if arm.primary is None:
                arm.verdict = "no-verdict"
                arm.reason = "the SFT probe decides, but it has no result for this arm or control"


def sft_noise(data: ProbeData, sets: list[str]) -> contrast.Pooled | None:
    """The SFT score's run-to-run noise pooled over the study (as every interval uses it)."""
    qs = [data.quantity(("val", s), CONTROL) for s in sets]
    if not all(q is not None for q in qs) or not _same_runs(qs):
        return None
    scores = {g: sum(q.run_scores()[g] for q in qs) / len(qs) for g in qs[0].groups}
    return contrast.block_fit(scores, qs[0].run_seeds()).noise


def info(data: ProbeData, plan, control_runs) -> ProbeInfo:  # noqa: ANN001
    """The study's probe settings, the control's values per set and the start checkpoint's."""
    cfg = plan.config
    probe = cfg.sft_probe
    control = {}
    for s in probe.sets:
        groups = data.tables.get(("val", s.name), {})
        if CONTROL in groups:
            control[s.name] = [float(np.mean(list(t.values()))) for t in groups[CONTROL]]
    noise = sft_noise(data, [s.name for s in probe.sets])
    start: dict[str, list[float]] = defaultdict(list)
    for j in plan.start_probes:
        if (res := j.sft.cached()) is not None:
            start[j.set].append(res.val_loss)
    return ProbeInfo(
        sets=[s.name for s in probe.sets], lrs=list(probe.lrs), epochs=probe.epochs,
        seeds=probe.seeds, tasks=probe.tasks, domains=base_domains(cfg),
        decide_on=cfg.analysis.decide_on, control=control,
        start={k: float(np.mean(v)) for k, v in start.items()},
        noise_sd=analysis._finite(noise.sd) if noise else None, noise_df=noise.df if noise else 0,
        runs=[p for r in control_runs for p in data.records.get(r.name, [])]
        + data.records.get("start", []),
    )  # fmt: skip
