"""The reference side of `midtrain bench train`: `transformers.Trainer` on our run's model and data.

Same model config and init seed, the same sequences (read from our mixture sampler), batch,
optimizer (`adamw_torch_fused`, weight decay 0.1, betas 0.9/0.95), clip 1.0 and constant LR as
our loop; `report_to=[]`, no eval, no saving, no logging. `compile` sets `torch_compile=True`
(inductor, HF's default backend), the like-for-like opponent of our `compile = true`; our
`precision = "bf16"` meets `bf16=True` (autocast on both sides).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

from midtrain.bench.reports import RunTable


def hf_tokens_per_s(rc: RunTable, out: Path, steps: int, warmup: int, compile: bool) -> float:
    """Tokens/s of `transformers.Trainer`: a step's tokens over the median time of the steps
    after `warmup`, from step-end clocks."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback

    from midtrain import train

    plan = train.plan_run(train.load_run_config(rc))
    batch, seq_len = plan.micro_batch, plan.cfg.seq_len
    rows = torch.from_numpy(plan.sampler.sequences(0, steps * batch))
    data = [{"input_ids": r, "labels": r} for r in rows]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            ends.append(time.perf_counter())

    from transformers import default_data_collator

    bf16 = plan.precision == "bf16"  # autocast, as our `precision = "bf16"`
    args = _training_args(out, batch, steps, plan.schedule.lr_at(0), compile, bf16)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        callbacks=[Clock()],
    )
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary; keep stdout JSON
        trainer.train()
    step_s = [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True)]
    return batch * seq_len / statistics.median(step_s)


def _training_args(out: Path, batch: int, steps: int, lr: float, compile: bool,  # noqa: ANN202
                   bf16: bool = False):  # fmt: skip
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        torch_compile=compile,
        bf16=bf16,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
