"""Runs: a cooldown (or a constant-LR pretrain) from a run config to a self-describing directory.

Warm start loads the weights (and, with `optimizer.load_state`, the AdamW moments) of `init`;
resume reloads the whole state of *this* directory (weights, moments, step, sampler position,
RNG) and on CPU ends bit-identical to an uninterrupted run. The data order is a pure function of
the sampler position, so the position alone resumes it.

The loop (`train_loop`) knows only a model, an optimizer, a batch source and a loss; everything
else (the log and its non-finite guard, checkpoints, the progress bar) is a `Callback`, so the SFT
loop reuses it with another batch source and loss.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from midtrain import env
from midtrain.console import progress
from midtrain.io import fault_point, hash_obj, recover_dir
from midtrain.train import checkpoint as ckpt
from midtrain.train import optim, rundir, trackers
from midtrain.train.config import RunConfig, load_run_config
from midtrain.train.log import Diverged, RunLog
from midtrain.train.plan import RunPlan, estimate, plan_run

Batches = Callable[[int], tuple[Sequence[Any], int]]  # step -> (micro batches, targets in the step)


@dataclass
class StepOutput:
    step: int  # optimizer steps done
    tokens: int
    lr: float
    loss: Any  # tensor: the step's mean loss (not yet synced to the host)
    grad_norm: Any  # tensor: the global norm before clipping


@dataclass
class Trainer:
    """What the loop needs: model, optimizer, batch source, loss, schedule."""

    model: Any
    opt: Any
    params: list[Any]
    loss_fn: Callable[[Any], Any]  # micro batch -> summed loss over its targets
    batches: Batches
    schedule: Any  # BoundSchedule
    steps: int
    tokens_per_step: int
    clip: float
    device: str
    autocast: Callable[[], Any] = nullcontext
    step: int = 0


class Callback:
    """A seam of the loop: called after every optimizer step and once at the end."""

    def on_step(self, t: Trainer, out: StepOutput) -> None:
        pass

    def on_end(self, t: Trainer) -> None:
        pass


def train_loop(t: Trainer, callbacks: Sequence[Callback]) -> None:
    """Schedule LR, take the step's batch, accumulate, clip, step; then the callbacks.

    Each micro batch contributes sum(token loss) / (targets in the whole step), so accumulating
    gradients over micro batches gives exactly the gradient of the step's mean loss.
    """
    import torch

    for step in range(t.step, t.steps):
        lr = t.schedule.lr_at(step)
        for group in t.opt.param_groups:
            group["lr"] = lr
        micro_batches, n_targets = t.batches(step)
        loss = torch.zeros((), device=t.device)
        for micro in micro_batches:
            with t.autocast():
                micro_loss = t.loss_fn(micro) / n_targets
            micro_loss.backward()
            loss += micro_loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(t.params, t.clip, foreach=True)
        t.opt.step()
        t.opt.zero_grad(set_to_none=True)
        t.step = step + 1
        fault_point("step", t.step)
        out = StepOutput(t.step, t.step * t.tokens_per_step, lr, loss, grad_norm)
        for cb in callbacks:
            cb.on_step(t, out)
    for cb in callbacks:
        cb.on_end(t)


# -- callbacks of a run directory ------------------------------------------------------------------


class LogCallback(Callback):
    """log.jsonl every few steps, and at every checkpoint and the end (raises `Diverged`)."""

    def __init__(self, log: RunLog, checkpoints: Checkpoints):
        self.log, self.checkpoints = log, checkpoints

    def on_step(self, t: Trainer, out: StepOutput) -> None:
        self.log.record(out.step, out.tokens, out.lr, out.loss, out.grad_norm)
        if self.log.due(out.step) or out.step == t.steps or self.checkpoints.due(out.step, t.steps):
            self.log.flush()


class Checkpoints(Callback):
    """OUT/state every `every` steps (with RNG, for exact resume); OUT/final at the end."""

    def __init__(self, plan: RunPlan, out: Path, log: RunLog):
        self.plan, self.out, self.log, self.every = plan, out, log, plan.cfg.checkpoint_every

    def due(self, done: int, steps: int) -> bool:
        return self.every > 0 and done % self.every == 0 and done < steps

    def on_step(self, t: Trainer, out: StepOutput) -> None:
        if self.due(out.step, t.steps):
            self.save(t, "state", out.step, rng=optim.rng_state())

    def on_end(self, t: Trainer) -> None:
        self.save(t, "final", t.steps, rng=None)

    def save(self, t: Trainer, name: str, done: int, rng: dict[str, Any] | None) -> None:
        ckpt.save_checkpoint(
            self.out / name, t.model, self.plan.tokenizer, self.state(done), t.opt, rng, step=done
        )

    def state(self, done: int) -> ckpt.TrainerState:
        p, base = self.plan, self.plan.init_state
        return ckpt.TrainerState(
            lr=p.schedule.lr_at(done),
            tokens_seen=(base.tokens_seen if base else 0) + done * p.tokens_per_step,
            steps=(base.steps if base else 0) + done,
            schedule=p.schedule.to_dict(),
            run=ckpt.RunPosition(
                step=done,
                position=done * p.seqs_per_step,
                wall_s=self.log.wall_s,
                config_hash=hash_obj(p.cfg.identity()),
            ),
        )


class ProgressBar:
    """A metrics sink: a rich bar over tokens with loss, lr, tok/s and ETA (TTY only)."""

    def __init__(self, enabled: bool, total: int):
        from rich.progress import TextColumn

        fields = "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tok_s]} tok/s"
        self.progress = progress(
            TextColumn("{task.completed:,}/{task.total:,} tok"),
            TextColumn(fields),
            enabled=enabled,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, loss="-", lr="-", tok_s="-")

    def log(self, row: dict[str, Any], step: int) -> None:
        self.progress.update(
            self.task,
            completed=row["tokens"],
            loss=f"{row['loss']:.4f}",
            lr=f"{row['lr']:.3g}",
            tok_s=f"{row['tok_s']:,.0f}",
        )


# -- building and running --------------------------------------------------------------------------


def lm_batches(plan: RunPlan) -> Batches:
    """The step's sequences from the mixture sampler, on the device, split into micro batches."""
    import torch

    spb, n_targets = plan.seqs_per_step, plan.seqs_per_step * (plan.cfg.seq_len - 1)

    def batches(step: int) -> tuple[Sequence[Any], int]:
        batch = torch.from_numpy(plan.sampler.sequences(step * spb, spb)).to(plan.device)
        return batch.split(plan.micro_batch), n_targets

    return batches


def build(plan: RunPlan, out: Path) -> tuple[Trainer, float]:
    """The trainer resumed from OUT/state, else warm-started or fresh; and the wall time so far."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, resume = plan.cfg, out / "state"
    recover_dir(resume)
    recover_dir(out / "final")
    torch.manual_seed(cfg.seed)
    if (resume / "config.json").is_file():
        model, source = ckpt.load_model(resume, plan.device, "--out state"), resume
    elif cfg.init is not None:
        model, source = ckpt.load_model(cfg.init, plan.device), Path(cfg.init)
    else:
        env.quiet_transformers()
        model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
        model, source = model.to(plan.device), None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.make_optimizer(params, cfg.optimizer)
    step, wall = 0, 0.0
    if source == resume:
        optim.load_optimizer(opt, resume)
        position = (ckpt.read_trainer_state(resume) or ckpt.TrainerState(lr=0)).run
        step, wall = (position.step, position.wall_s) if position else (0, 0.0)
        optim.set_rng_state(ckpt.load_rng_state(resume))
    elif source is not None and cfg.optimizer.load_state and optim.load_optimizer(opt, source):
        optim.set_hparams(opt, cfg.optimizer)
    loss_fn = partial(optim.lm_loss, model)
    if plan.compile:
        loss_fn = torch.compile(loss_fn)
    autocast = nullcontext
    if plan.precision == "bf16":
        autocast = partial(torch.autocast, device_type=plan.device, dtype=torch.bfloat16)
    clip = cfg.optimizer.grad_clip or math.inf
    t = Trainer(model, opt, params, loss_fn, lm_batches(plan), plan.schedule, plan.steps,
                plan.tokens_per_step, clip, plan.device, autocast, step)  # fmt: skip
    return t, wall


def drive(t: Trainer, out: Path, log: RunLog, checkpoints: Checkpoints, total_tokens: int,
          progress: bool | None) -> None:  # fmt: skip
    """Train `t` to the end with a run directory's callbacks (log, checkpoints, progress bar);
    a diverged or interrupted run leaves its status saying so."""
    bar = ProgressBar(progress is not False, total_tokens)
    log.sinks.append(bar)
    try:
        with bar.progress:
            train_loop(t, [LogCallback(log, checkpoints), checkpoints])
    except Diverged as e:
        rundir.write_status(out, "failed", **e.info)
        raise
    except KeyboardInterrupt:
        rundir.write_status(out, "interrupted", step=t.step)
        raise


def run(
    cfg: RunConfig | Mapping[str, Any], out_dir: str | Path, *, progress: bool | None = None
) -> rundir.RunResult:
    """Train (or resume, or return a finished run's result). Raises `Diverged` on NaN/inf."""
    cfg = load_run_config(cfg)
    out = Path(out_dir).resolve()
    rundir.check_existing(out, cfg.identity())
    if (done := rundir.finished(out)) is not None:
        return done
    plan = plan_run(cfg)
    rundir.check_inputs_unchanged(out, plan)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    env.setup(cfg.threads)
    trackers.check_installed(cfg.trackers.use)
    t, wall = build(plan, out)  # loads everything before the directory is touched
    rundir.start(out, plan, t.step)
    log = RunLog(out / "log.jsonl", plan.device, plan.tokens_per_step, wall)
    log.truncate(t.step)
    sinks = trackers.open_sinks(cfg.trackers, out, plan.resolved(), t.step)  # rank 0 only
    log.sinks += sinks
    try:
        drive(t, out, log, Checkpoints(plan, out, log), plan.tokens, progress)
    finally:
        trackers.close_sinks(sinks)
    result = rundir.finish(out, plan, log.read(), log.wall_s, estimate(plan).flops)
    shutil.rmtree(out / "state", ignore_errors=True)  # final/ holds everything state/ did
    return result
