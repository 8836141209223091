"""One fine-tune at one peak LR: the anneal's `train_loop` with another batch source and loss.

The same callbacks as an anneal (JSONL log with the non-finite guard, resumable `state/` with RNG,
`final/`, the progress bar), so resume after SIGKILL ends bit-identical on CPU. The loss is the
summed cross-entropy over the step's trained tokens (labels -100 elsewhere) divided by their count
in the whole step: the mean over response tokens of the step.

Under torchrun (`parallel`, docs/scaling.md) every rank runs the same grid: a step's examples,
sorted by length, are dealt out round-robin to the ranks and each rank cuts its share into micro
batches; every rank runs as many micro batches (FSDP gathers per forward), a short rank one more
with no trained token. Each rank divides by `targets / world` and DDP/FSDP average over ranks, so
the step's gradient is the single-process one up to summation order. Rank 0 writes the files.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.io import atomic_write_json, atomic_write_jsonl, hash_obj, recover_dir
from midtrain.sft.config import SftIdentity
from midtrain.sft.data import Example, collate, epoch_order, micro_batches, n_targets
from midtrain.sft.plan import SftPlan
from midtrain.sft.results import SftRunResult, ValSummary
from midtrain.train import checkpoint as ckpt
from midtrain.train import distributed, optim, rundir
from midtrain.train.log import RunLog
from midtrain.train.loop import Batches, Checkpoints, Trainer, drive, parallel, position


def sft_loss(model: Any, micro: tuple[Any, Any]) -> Any:
    """Summed next-token cross-entropy over the trained tokens (labels != -100), fp32 logits."""
    import torch.nn.functional as F

    ids, labels = micro
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def sft_batches(plan: SftPlan) -> Batches:
    """The step's examples (a seeded permutation per epoch, cut in batches), in micro batches
    (under torchrun, this rank's share)."""
    pad, top, c, d = plan.tokenizer.pad_token_id, plan.cfg.train_on_prompt, plan.cfg, plan.dist
    orders: dict[int, np.ndarray] = {}

    def batches(step: int) -> tuple[Sequence[Any], float]:
        epoch, k = divmod(step, plan.steps_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(len(plan.train.examples), c.seed, epoch)
        picked = [plan.train.examples[i] for i in orders[epoch][k * c.batch_size :][: c.batch_size]]
        micros = []
        for batch, trained in rank_share(picked, plan.micro_batch, d):
            ids, labels = collate(batch, pad, top)
            if not trained:
                labels.fill_(-100)
            micros.append((ids.to(plan.device), labels.to(plan.device)))
        n = n_targets(picked, top)
        return micros, n / d.world if d.active else n

    return batches


def rank_share(picked: list[Example], micro: int, d: distributed.Dist) -> list[tuple[list, bool]]:
    """This rank's micro batches of a step as (examples, trained): all of them in one process;
    under torchrun the examples sorted by length, dealt out round-robin, cut in micro batches and
    topped up to the busiest rank's count with untrained copies of the shortest example."""
    if not d.active:
        return [(b, True) for b in micro_batches(picked, micro)]
    ordered = sorted(picked, key=lambda e: len(e.ids))
    most = max(math.ceil(len(ordered[r :: d.world]) / micro) for r in range(d.world))
    mine = micro_batches(ordered[d.rank :: d.world], micro)
    return [(b, True) for b in mine] + [([ordered[0]], False)] * (most - len(mine))


class SftCheckpoints(Checkpoints):
    """`state/` every few steps and `final/` at the end, with this fine-tune's trainer state."""

    def __init__(self, plan: SftPlan, lr: float, out: Path, log: RunLog):
        self.plan, self.out, self.log, self.every = plan, out, log, plan.cfg.checkpoint_every
        self.lr, self.sched, self.dist = lr, plan.schedule(lr), plan.dist

    def state(self, done: int) -> ckpt.TrainerState:
        p = self.plan
        return ckpt.TrainerState(
            lr=self.sched.lr_at(done),
            tokens_seen=done * p.tokens_per_step,
            steps=done,
            schedule=self.sched.to_dict(),
            run=ckpt.RunPosition(step=done, position=done, wall_s=self.log.wall_s,
                                 config_hash=hash_obj(run_identity(p, self.lr))),
        )  # fmt: skip


class RunIdentity(SftIdentity):
    """One LR's fine-tune: the probe's identity and the LR (hashed into its checkpoints)."""

    lr: float


def run_identity(plan: SftPlan, lr: float) -> RunIdentity:
    return {**plan.cfg.identity(), "lr": lr}


def build(plan: SftPlan, lr: float, out: Path) -> tuple[Trainer, float]:
    """The trainer resumed from OUT/state, else from the checkpoint; and the wall time so far."""
    import torch

    cfg, resume, d = plan.cfg, out / "state", plan.dist
    if d.main:
        recover_dir(resume)
        recover_dir(out / "final")
    distributed.barrier(d)
    torch.manual_seed(cfg.seed)
    saved = ckpt.read_trainer_state(resume) if resume.is_dir() else None
    distributed.check_resume(saved.run if saved else None, d)
    resuming = not d.active and (resume / "config.json").is_file()
    source = resume if resuming else Path(cfg.checkpoint)
    if distributed.on_meta(d):  # FSDP2 rank > 0: a skeleton, rank 0's weights come after sharding
        model = ckpt.meta_model(plan.model_config)
    else:
        device = distributed.load_device(d, plan.device)
        model = ckpt.load_model(source, device, "--out state" if resuming else "checkpoint")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.make_optimizer(params, cfg.optimizer)
    step, wall, rng = 0, 0.0, None
    if resuming:
        optim.load_optimizer(opt, resume)
        (step, wall), rng = position(resume), ckpt.load_rng_state(resume)
    elif (
        cfg.optimizer.load_state
        and not distributed.on_meta(d)
        and optim.load_optimizer(opt, source)
    ):
        optim.set_hparams(opt, cfg.optimizer)
    model, opt, params, (step, wall) = parallel(model, opt, params, cfg.optimizer, cfg.seed,
                                                resume, d, plan.device, (rng, step, wall))  # fmt: skip
    autocast = nullcontext
    if plan.precision == "bf16":
        autocast = partial(torch.autocast, device_type=plan.device, dtype=torch.bfloat16)
    clip = cfg.optimizer.grad_clip or math.inf
    t = Trainer(model, opt, params, partial(sft_loss, model), sft_batches(plan), plan.schedule(lr),
                plan.steps, plan.tokens_per_step, clip, plan.device, autocast, step)  # fmt: skip
    if d.active:
        t.grad_sync, t.reduce = distributed.grad_sync(model, d), distributed.reduce_metrics(d)
    return t, wall


def validate(model: Any, examples: list[Example], plan: SftPlan) -> tuple[ValSummary, list[dict]]:
    """Per-example NLL of the response tokens (eval mode, no grad): records and their summary."""
    import torch
    import torch.nn.functional as F

    pad, m, rows = plan.tokenizer.pad_token_id, plan.micro_batch, []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), m):
            batch = examples[i : i + m]
            ids, labels = collate(batch, pad, train_on_prompt=False)
            logits = model(input_ids=ids.to(plan.device), use_cache=False).logits[:, :-1].float()
            targets = labels[:, 1:].to(plan.device)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            sums = nll.sum(1).tolist()  # ignored positions are 0
            counts = (targets != -100).sum(1).tolist()
            for j, (e, s, c) in enumerate(zip(batch, sums, counts, strict=True)):
                rows.append(
                    {
                        "index": i + j,
                        "tokens": c,
                        "bytes": e.response_bytes,
                        "nll": s,
                        "loss": s / c,
                        "bits_per_byte": s / math.log(2) / e.response_bytes,
                    }
                )
    model.train(was_training)
    return summarise(rows), rows


def summarise(rows: list[dict]) -> ValSummary:
    nll, tokens, n_bytes = (sum(r[k] for r in rows) for k in ("nll", "tokens", "bytes"))
    return ValSummary(examples=len(rows), loss=sum(r["loss"] for r in rows) / len(rows),
                      token_loss=nll / tokens, bits_per_byte=nll / math.log(2) / n_bytes,
                      tokens=tokens)  # fmt: skip


def run_one(plan: SftPlan, lr: float, out: Path, progress: bool | None,
            before: Path | None = None) -> SftRunResult:  # fmt: skip
    """Fine-tune at peak LR `lr` in `out` (resumed when it holds a state), then validate; under
    torchrun every rank trains and validates, rank 0 writes and its result is every rank's.
    A fine-tune that starts from the checkpoint writes the checkpoint's own validation to
    `before` first when that file is missing."""
    if (done := rundir.finished(out, SftRunResult)) is not None:
        return done
    t, wall = build(plan, lr, out)
    if before is not None:
        validate_start(t, plan, before)
    main = plan.dist.main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {**plan.resolved(), "lr": lr})
        rundir.write_status(out, "running", from_step=t.step)
    log = RunLog(out / "log.jsonl" if main else None, plan.device, plan.tokens_per_step, wall)
    log.truncate(t.step)
    checkpoints = SftCheckpoints(plan, lr, out, log)
    drive(t, out, log, checkpoints, plan.steps * plan.tokens_per_step, progress)
    val, rows = validate(distributed.unwrap(t.model), plan.val.examples, plan)
    result = _finish(plan, lr, out, val, rows, log) if main else None
    return distributed.broadcast(plan.dist, result)


def validate_start(t: Trainer, plan: SftPlan, path: Path) -> None:
    """The checkpoint's own per-example validation, from a trainer that has not stepped yet: on
    every rank like the final one (an FSDP model is never whole on one rank), written by rank 0
    once."""
    if t.step or distributed.broadcast(plan.dist, path.is_file()):
        return
    _, rows = validate(distributed.unwrap(t.model), plan.val.examples, plan)
    if plan.dist.main:
        atomic_write_jsonl(path, rows)


def _finish(plan: SftPlan, lr: float, out: Path, val: ValSummary, rows: list[dict],
            log: RunLog) -> SftRunResult:  # fmt: skip
    atomic_write_jsonl(out / "val_examples.jsonl", rows)
    lines, tokens = log.read(), plan.summary().train_tokens * plan.cfg.epochs
    result = SftRunResult(
        lr=lr, steps=plan.steps, tokens=tokens, first_loss=lines[0]["loss"],
        final_loss=lines[-1]["loss"], wall_s=log.wall_s,
        tokens_per_s=tokens / log.wall_s if log.wall_s > 0 else None, val=val,
        final_checkpoint=str(out / "final"),
    )  # fmt: skip
    atomic_write_json(out / "metrics.json", result.model_dump(mode="json"))
    rundir.write_status(out, "done", step=plan.steps)
    shutil.rmtree(out / "state", ignore_errors=True)
    return result
