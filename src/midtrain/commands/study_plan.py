"""`midtrain study run --dry-run`: a study's plan before it runs: its runs, their mixes, FLOPs and
time, the tokens of each mix, the SFT probe, the disk it needs, and what its seeds can detect."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from midtrain.console import safe

console = Console()


def print_plan(cfg, out: Path) -> None:
    """The runs, their mixes, FLOPs and time estimates, and one token table per distinct mix;
    runs already finished in OUT are marked and left out of the time still to spend."""
    from midtrain.driver.runner import prepare
    from midtrain.jobs import pending
    from midtrain.train.plan import estimate, plan_run

    plan = prepare(cfg, Path(out).resolve())
    t = Table(
        title=f"study {safe(cfg.name)}: {len(plan.runs)} runs + 1 eval of the start checkpoint"
    )
    for col in ("run", "mix", "tokens", "est. FLOPs", "est. seconds", "share of full run", "done"):
        t.add_column(col)
    tables, total_f, total_s, left_s, done, started = {}, 0.0, 0.0, 0.0, 0, False
    rounded: set[tuple[int, int]] = set()
    for r in plan.runs:
        run_plan = plan_run(r.run_config)
        est = estimate(run_plan)
        trained = _trained(r, plan.eval_job, run_plan.steps)
        finished = not pending(r.full_chain(plan.eval_job))
        total_f, total_s, done = total_f + est.flops, total_s + est.seconds, done + finished
        left_s, started = left_s + est.seconds * (1 - trained), started or trained > 0
        tokens = run_plan.steps * run_plan.tokens_per_step  # whole optimizer steps
        if tokens != r.run_config.tokens:
            rounded.add((r.run_config.tokens, run_plan.steps))
        share = f"{tokens / cfg.full_run_tokens:.3%}" if cfg.full_run_tokens else "–"
        mix = " / ".join(f"{m.source} {m.ratio:.0%}" for m in r.mix)
        state = "yes" if finished else "trained" if trained == 1 else f"{trained:.0%}"
        t.add_row(safe(r.name), safe(mix), f"{tokens:,}", f"{est.flops:.3g}",
                  f"{est.seconds:.0f}", share, state if finished or trained else "–")  # fmt: skip
        tables.setdefault(mix, run_plan.sampler.token_table())
    console.print(t)
    for asked, steps in sorted(rounded):
        console.print(f"tokens: {asked:,} asked; a run trains whole optimizer steps, {steps} here")
    for table in tables.values():
        console.print(table)
    if started:
        console.print(
            f"{done} of {len(plan.runs)} runs already done; ~{left_s / 60:.1f} min of training "
            f"left of ~{total_s / 60:.1f} (before evaluation); total {total_f:.3g} FLOPs"
        )
    else:
        console.print(
            f"total: {total_f:.3g} FLOPs, ~{total_s / 60:.1f} min of training (before evaluation)"
        )
    if cfg.sft_probe is not None:
        print_probes(plan)
    print_disk(plan)
    console.print(power_line(plan))
    for line in plan_notes(cfg):
        console.print(line, highlight=False)


def plan_notes(cfg) -> list[str]:
    """The guards, and where the start checkpoint sits in the full run (checkpoint-too-early)."""
    from midtrain.driver.collect import checkpoint_seen
    from midtrain.integrate.guards import describe

    lines = [f"guards: {safe(describe([g.model_dump() for g in cfg.guards]))}"]
    seen, full = checkpoint_seen(cfg), cfg.full_run_tokens
    least = cfg.analysis.min_checkpoint_progress
    if full and seen is not None:
        flag = "checkpoint-too-early" if seen / full < least else "not too early"
        lines.append(f"checkpoint: has seen {seen:,} of full_run_tokens {full:,} "
                     f"({seen / full:.0%}; {flag}, the least is {least:.0%})")  # fmt: skip
    elif full:
        lines.append("checkpoint: the tokens it has seen are unknown (no midtrain_state); set "
                     "checkpoint_tokens, or checkpoint-too-early cannot be checked")  # fmt: skip
    if cfg.command is not None:
        lines.append("training: every run by train.command (its RUN/spec.json; docs/external.md): "
                     "the times above are midtrain's own loop's, the token tables give the shares, "
                     "the order is the trainer's")  # fmt: skip
    return lines


def print_disk(plan) -> None:
    """What the study's checkpoints take on disk under its [keep] policy (study/disk.py)."""
    from midtrain.study.disk import disk_table

    table, line = disk_table(plan)
    console.print(table)
    console.print(line)


def _trained(run, ev, steps: int) -> float:
    """The share of a run's training already done: 1 when its train job is cached (finished),
    else its saved state's step / steps."""
    from midtrain.train.checkpoint import read_trainer_state

    if run.chain(ev)[0].cached() is not None:
        return 1.0
    state = read_trainer_state(run.dir / "state")
    step = state.run.step if state is not None and state.run is not None else 0
    return min(step / steps, 1.0) if steps else 0.0


def print_probes(plan) -> None:
    """The SFT probe's jobs: one per run x set x SFT seed, with tokens and a time estimate;
    finished ones are marked and left out of the time still to spend."""
    from midtrain.probe.jobs import plan_probes, probe_estimate

    est = {name: probe_estimate(p) for name, p in plan_probes(plan.config).items()}
    jobs = [(r.name, j) for r in plan.runs for j in r.probes]
    jobs += [("start checkpoint", j) for j in plan.start_probes]
    t = Table(title=f"SFT probe: {len(jobs)} fine-tunes (each: every LR of the grid), "
                    "then the base domains scored after SFT")  # fmt: skip
    for col in ("run", "set", "SFT seed", "tokens", "est. FLOPs", "est. seconds", "done"):
        t.add_column(col)
    total_s, left_s, done = 0.0, 0.0, 0
    for name, j in jobs:
        tokens, flops, secs = est[j.set]
        finished = j.sft.cached() is not None
        total_s, done = total_s + secs, done + finished
        left_s += 0.0 if finished else secs
        t.add_row(safe(name), safe(j.set), str(j.seed), f"{tokens:,}", f"{flops:.3g}",
                  f"{secs:.1f}", "yes" if finished else "–")  # fmt: skip
    console.print(t)
    if done:
        console.print(f"SFT probe: {done} of {len(jobs)} fine-tunes already done; "
                      f"~{left_s / 60:.1f} min of fine-tuning left (before evaluation)")  # fmt: skip
    else:
        console.print(
            f"SFT probe total: ~{total_s / 60:.1f} min of fine-tuning (before evaluation)"
        )


def power_line(plan) -> str:
    """The minimum detectable effect this plan can expect: measured when runs already finished
    in OUT, otherwise in units of the run-to-run noise s it will measure."""
    from midtrain.stats.analysis import confidence_at
    from midtrain.stats.power import design_df, mde_factor

    cfg = plan.config
    designs = Counter("cpt" if r.cpt else f"{r.fraction:g}" for r in plan.runs
                      if r.arm != "control" and r.seed == cfg.first_seeds[0])  # fmt: skip
    arms, seeds = min(designs.values(), default=1), len(cfg.first_seeds)
    factor = mde_factor(arms, seeds, confidence_at(cfg, 1))
    if factor == float("inf"):
        return (
            f"power: {seeds} seed(s) leave no degrees of freedom for the run noise: no verdict "
            "is possible; use seeds >= 2"
        )
    text = (
        f"power: the smallest design has {arms} arm(s) x {seeds} seeds = "
        f"{design_df(arms, seeds):.3g} degrees of freedom (paired differences, shared control); "
        f"minimum detectable effect (80% power) = {factor:.2f} x s, s = one run's own noise"
    )
    if (plan.out / "results.json").is_file():
        from midtrain.study.results import StudyResult

        nf = StudyResult.load(plan.out / "results.json").control.noise_floor
        if nf is not None and nf.primary_sd is not None:
            text += f"; measured s = {nf.primary_sd:.4f}, so about {factor * nf.primary_sd:.3g}"
    return text + " (docs/studies.md: How the intervals are made)"
