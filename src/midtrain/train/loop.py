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
from midtrain.train import distributed, optim, rundir, trackers
from midtrain.train.config import RunConfig, load_run_config, point_steps
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
    # distributed runs (train/distributed.py): gradient sync per micro batch, metrics over ranks
    grad_sync: Callable[[bool], Any] = lambda last: nullcontext()
    reduce: Callable[[Any, Any], tuple[Any, Any]] = lambda loss, grad_norm: (loss, grad_norm)


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
        for i, micro in enumerate(micro_batches):
            with t.grad_sync(i == len(micro_batches) - 1):
                with t.autocast():
                    micro_loss = t.loss_fn(micro) / n_targets
                micro_loss.backward()
            loss += micro_loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(t.params, t.clip, foreach=True)
        loss, grad_norm = t.reduce(loss, grad_norm)
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


POINTS_DIR = "points"


def point_dir(out: Path, step: int) -> Path:
    """Where a run's weights after `step` go (a study's eval point; train/config.point_steps)."""
    return out / POINTS_DIR / f"step-{step}"


class Checkpoints(Callback):
    """OUT/state every `every` steps (with RNG, for exact resume); the weights alone at each
    point of `save_points` (OUT/points/step-N); OUT/final at the end."""

    dist = distributed.SINGLE  # a distributed run's: DCP state, rank 0 writes final/
    points: frozenset[int] = frozenset()  # steps whose weights are saved (a subclass: none)

    def __init__(self, plan: RunPlan, out: Path, log: RunLog):
        self.plan, self.out, self.log, self.every = plan, out, log, plan.cfg.checkpoint_every
        self.dist = plan.dist
        self.points = frozenset(point_steps(plan.cfg.save_points, plan.steps))

    def due(self, done: int, steps: int) -> bool:
        return self.every > 0 and done % self.every == 0 and done < steps

    def on_step(self, t: Trainer, out: StepOutput) -> None:
        if out.step in self.points:  # before state/: a resume from it never skips a point
            self.save_point(t, out.step)
        if self.due(out.step, t.steps):
            self.save(t, "state", out.step, rng=optim.rng_state())

    def save_point(self, t: Trainer, done: int) -> None:
        """The weights (no optimizer, no RNG): an evaluation reads them, nothing resumes."""
        d, path = self.dist, point_dir(self.out, done)
        if not d.active:
            ckpt.save_checkpoint(path, t.model, self.plan.tokenizer, self.state(done), step=done)
            return
        weights, _ = distributed.full_state(t.model, t.opt)
        if d.main:
            model = distributed.unwrap(t.model)
            ckpt.save_checkpoint(path, model, self.plan.tokenizer, self.state(done), None, None,
                                 done, weights=weights)  # fmt: skip
        distributed.barrier(d)

    def on_end(self, t: Trainer) -> None:
        self.save(t, "final", t.steps, rng=None)

    def save(self, t: Trainer, name: str, done: int, rng: ckpt.RngState | None) -> None:
        d, path, state = self.dist, self.out / name, self.state(done)
        if not d.active:
            ckpt.save_checkpoint(path, t.model, self.plan.tokenizer, state, t.opt, rng, step=done)
        elif name == "state":
            state.run = state.run.model_copy(update={"world_size": d.world, "parallel": d.mode})
            trainer = state.model_dump(mode="json", exclude_none=True)
            distributed.save_state(path, t.model, t.opt, trainer, rng, d, done)
        else:  # final: the full state dicts gathered on rank 0, written as a HF folder
            weights, osd = distributed.full_state(t.model, t.opt)
            if d.main:
                model = distributed.unwrap(t.model)
                ckpt.save_checkpoint(path, model, self.plan.tokenizer, state, osd, None, done,
                                     weights=weights)  # fmt: skip
            distributed.barrier(d)

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

    def log(self, row: Mapping[str, float], step: int) -> None:
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
    if plan.dist.active:  # this rank's micro batches of the same step
        return distributed.rank_batches(
            plan.sampler, spb, plan.micro_batch, n_targets, plan.device, plan.dist
        )

    def batches(step: int) -> tuple[Sequence[Any], int]:
        batch = torch.from_numpy(plan.sampler.sequences(step * spb, spb)).to(plan.device)
        return batch.split(plan.micro_batch), n_targets

    return batches


def build(plan: RunPlan, out: Path) -> tuple[Trainer, float]:
    """The trainer resumed from OUT/state, else warm-started or fresh; and the wall time so far."""
    import torch

    cfg, resume, d = plan.cfg, out / "state", plan.dist
    if d.main:
        recover_dir(resume)
        recover_dir(out / "final")
        for k in point_steps(cfg.save_points, plan.steps):
            recover_dir(point_dir(out, k))
    distributed.barrier(d)
    torch.manual_seed(cfg.seed)
    model, source = _model(plan, resume)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.make_optimizer(params, cfg.optimizer)
    step, wall, rng = 0, 0.0, None
    if source == resume:
        optim.load_optimizer(opt, resume)
        (step, wall), rng = position(resume), ckpt.load_rng_state(resume)
    elif source is not None and cfg.optimizer.load_state and optim.load_optimizer(opt, source):
        optim.set_hparams(opt, cfg.optimizer)
    model, opt, params, (step, wall) = parallel(model, opt, params, cfg.optimizer, cfg.seed,
                                                resume, d, plan.device, (rng, step, wall))  # fmt: skip
    loss_fn = partial(optim.lm_loss, model)
    if plan.compile:
        loss_fn = torch.compile(loss_fn)
    autocast = nullcontext
    if plan.precision == "bf16":
        autocast = partial(torch.autocast, device_type=plan.device, dtype=torch.bfloat16)
    clip = cfg.optimizer.grad_clip or math.inf
    t = Trainer(model, opt, params, loss_fn, lm_batches(plan), plan.schedule, plan.steps,
                plan.tokens_per_step, clip, plan.device, autocast, step)  # fmt: skip
    if d.active:
        t.grad_sync, t.reduce = distributed.grad_sync(model, d), distributed.reduce_metrics(d)
    return t, wall


def _model(plan: RunPlan, resume: Path) -> tuple[Any, Path | None]:
    """The model and where its weights (and optimizer state) come from: OUT/state, init, or a
    fresh one (None; also a distributed resume, whose state is loaded after wrapping)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, d = plan.cfg, plan.dist
    saved = ckpt.read_trainer_state(resume) if resume.is_dir() else None
    distributed.check_resume(saved.run if saved else None, d)
    if not d.active and (resume / "config.json").is_file():
        return ckpt.load_model(resume, plan.device, "--out state"), resume
    if distributed.on_meta(d):  # FSDP2 rank > 0: a skeleton, rank 0's weights come after sharding
        return ckpt.meta_model(plan.model_config), None
    device = distributed.load_device(d, plan.device)
    if cfg.init is not None:
        model = ckpt.load_model(cfg.init, device)
        return model, None if distributed.has_state(resume) else Path(cfg.init)
    env.quiet_transformers()
    model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
    return model.to(device), None


def position(resume: Path) -> tuple[int, float]:
    """(steps done, wall seconds) of OUT/state."""
    pos = (ckpt.read_trainer_state(resume) or ckpt.TrainerState(lr=0)).run
    return (pos.step, pos.wall_s) if pos else (0, 0.0)


def parallel(model: Any, opt: Any, params: list, o: Any, seed: int, resume: Path,
             d: distributed.Dist, device: str, at: tuple) -> tuple:  # fmt: skip
    """The model and optimizer set up to train from `at` = (rng state, step, wall time) and the
    RNG state set. Under torchrun: the model wrapped (DDP/FSDP2) with a new optimizer carrying
    `opt`'s state, rank r > 0 on its own RNG stream, and OUT/state's DCP state (and its position)
    loaded when there is one. Returns (model, optimizer, params, (step, wall))."""
    import torch

    rng, step, wall = at
    if d.active:
        make = partial(optim.make_optimizer, o=o)
        model, opt, params = distributed.parallelize(model, opt, make, d, device)
        if d.rank:  # dropout masks differ between ranks (rank 0 keeps the single-process stream)
            torch.manual_seed(seed + 1_000_003 * d.rank)
        if distributed.has_state(resume):
            rng, (step, wall) = distributed.load_state(resume, model, opt, d), position(resume)
    optim.set_rng_state(rng)
    return model, opt, params, (step, wall)


def drive(t: Trainer, out: Path, log: RunLog, checkpoints: Checkpoints, total_tokens: int,
          progress: bool | None) -> None:  # fmt: skip
    """Train `t` to the end with a run directory's callbacks (log, checkpoints, progress bar);
    a diverged or interrupted run leaves its status saying so."""
    main = checkpoints.dist.main  # only rank 0 of a distributed run writes the status
    bar = ProgressBar(progress is not False and main, total_tokens)
    log.sinks.append(bar)
    try:
        with bar.progress:
            train_loop(t, [LogCallback(log, checkpoints), checkpoints])
    except Diverged as e:
        if main:
            rundir.write_status(out, "failed", **e.info)
        raise
    except KeyboardInterrupt:
        if main:
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
    d = plan.dist
    for w in plan.warnings if d.main else ():
        print(f"warning: {w}", file=sys.stderr)
    env.setup(cfg.threads)
    trackers.check_installed(cfg.trackers.use)
    with distributed.session(d, plan.device):  # torchrun: the process group (docs/scaling.md)
        return distributed.broadcast(d, _train(plan, out, progress))


def _train(plan: RunPlan, out: Path, progress: bool | None) -> rundir.RunResult | None:
    """Build, train, finish; in a distributed run only rank 0 writes the directory's files (and
    returns the result)."""
    main = plan.dist.main
    t, wall = build(plan, out)  # loads everything before the directory is touched
    if main:
        rundir.start(out, plan, t.step)
    log = RunLog(out / "log.jsonl" if main else None, plan.device, plan.tokens_per_step, wall)
    log.truncate(t.step)
    sinks = trackers.open_sinks(plan.cfg.trackers, out, plan.resolved(), t.step)  # rank 0 only
    log.sinks += sinks
    try:
        drive(t, out, log, Checkpoints(plan, out, log), plan.tokens, progress)
    except BaseException:  # diverged, interrupted (SIGINT / SIGTERM) or crashed
        trackers.close_sinks(sinks, failed=True)
        raise
    trackers.close_sinks(sinks)
    if not main:
        return None
    result = rundir.finish(out, plan, log.read(), log.wall_s, estimate(plan).flops)
    shutil.rmtree(out / "state", ignore_errors=True)  # final/ holds everything state/ did
    return result
