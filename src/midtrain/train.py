"""Runs: a cooldown (or a constant-LR pretrain) from a run config to a self-describing directory.

```
OUT/config.json    the resolved config (every field, absolute paths, derived steps and LRs)
OUT/inputs.json    hashes of the start checkpoint, tokenizer and stores; library versions
OUT/log.jsonl      one line per optimizer step: step, tokens, lr, loss, grad_norm, tok_s
OUT/state/         the latest resumable state (HF folder + optimizer, RNG, position); removed when done
OUT/final/         the final HF checkpoint + midtrain_state/ (a next run can start from it)
OUT/metrics.json   summary metrics;  OUT/status.json  running | failed | interrupted | done
```

Warm start loads the weights (and, with `optimizer.load_state`, the AdamW moments) of `init`;
resume reloads the whole state of *this* directory (weights, moments, step, sampler position,
RNG) and on CPU ends bit-identical to an uninterrupted run. The data order is a pure function of
the sampler position, so the position alone resumes it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from midtrain import checkpoint as ckpt
from midtrain.errors import MidtrainError
from midtrain.io import (
    atomic_write_json,
    atomic_write_text,
    hash_obj,
    hash_tree,
    library_versions,
    read_json,
)
from midtrain.mixture import MixComponent
from midtrain.schedules import BoundSchedule, make_schedule, resolve_final_lr

if TYPE_CHECKING:
    import torch

    from midtrain.data.store import TokenStore
    from midtrain.mixture import MixtureSampler

FAILED_EXIT_CODE = 3  # a run that stopped on a non-finite loss (bad input stays 2)
LOG_EVERY = {"cpu": 1, "cuda": 10}  # steps between log flushes (one host sync each)
# Rough sustained training FLOP/s for the `--dry-run` time estimate (README: "Training runs").
CPU_FLOPS_PER_THREAD = 35e9
CUDA_FLOPS = 150e12


# -- config ----------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleConfig(_Strict):
    name: str = "linear"
    start_lr: float | None = Field(default=None, gt=0)
    final_lr: float | None = Field(default=None, ge=0)
    final_lr_fraction: float | None = Field(default=None, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)


class OptimizerConfig(_Strict):
    lr: float | None = None  # ignored: the schedule sets the LR
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)  # 0 = no clipping (the norm is still logged)
    load_state: bool = True


class RunConfig(_Strict):
    init: str | None = None
    tokenizer: str | None = None
    model: dict[str, Any] | None = None
    stores: dict[str, str]
    mix: list[MixComponent]
    tokens: int = Field(gt=0)
    seq_len: int = Field(default=256, gt=1)
    batch_tokens: int = Field(default=4096, gt=0)
    micro_batch: int = Field(default=16, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(default=50, ge=0)
    compile: bool = False
    threads: int = Field(default=0, ge=0)
    schedule: ScheduleConfig = ScheduleConfig()
    optimizer: OptimizerConfig = OptimizerConfig()


def load_run_config(src: str | Path | Mapping[str, Any] | RunConfig) -> RunConfig:
    """A RunConfig from a TOML file (paths relative to it) or a dict (paths relative to cwd)."""
    if isinstance(src, RunConfig):
        return src
    base = Path.cwd()
    if isinstance(src, str | Path):
        path = Path(src)
        if not path.is_file():
            raise MidtrainError(f"--config {path}: no such file")
        try:
            src = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise MidtrainError(f"{path}: not valid TOML ({e})") from None
        base = path.resolve().parent
    try:
        cfg = RunConfig.model_validate(dict(src))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        raise MidtrainError(f"run config field {loc}: {err['msg']}") from None
    return _absolute_paths(cfg, base)


def _absolute_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def absolute(p: str | None) -> str | None:
        return None if p is None else str((base / Path(p).expanduser()).resolve())

    return cfg.model_copy(
        update={
            "init": absolute(cfg.init),
            "tokenizer": absolute(cfg.tokenizer),
            "stores": {k: absolute(v) for k, v in cfg.stores.items()},
        }
    )


# -- plan: every check that can fail on input, before anything is written ---------------------------


@dataclass
class RunPlan:
    cfg: RunConfig
    device: str
    precision: str
    tokenizer: Any
    tokenizer_hash: str
    model_config: Any
    stores: dict[str, TokenStore]
    sampler: MixtureSampler
    seqs_per_step: int
    micro_batch: int
    steps: int
    schedule: BoundSchedule
    init_state: dict[str, Any] | None
    start_lr_source: str
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.seqs_per_step * self.cfg.seq_len

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def resolved(self) -> dict[str, Any]:
        return {
            **self.cfg.model_dump(mode="json"),
            "resolved": {
                "device": self.device,
                "precision": self.precision,
                "steps": self.steps,
                "tokens": self.tokens,
                "tokens_per_step": self.tokens_per_step,
                "micro_batch": self.micro_batch,
                "grad_accumulation": self.seqs_per_step // self.micro_batch,
                "schedule": self.schedule.to_dict(),
                "start_lr_source": self.start_lr_source,
                "tokenizer_hash": self.tokenizer_hash,
                "model_type": self.model_config.model_type,
                "warnings": self.warnings,
            },
        }


def plan_run(cfg: RunConfig) -> RunPlan:
    """Resolve and validate a run config: raises a one-line MidtrainError, writes nothing."""
    from midtrain.data.store import TokenStore
    from midtrain.mixture import MixtureSampler, validate_mix

    _offline()
    if (cfg.init is None) == (cfg.model is None):
        raise MidtrainError(
            "init / [model]: give exactly one (init = checkpoint folder to warm-start, "
            "or [model] to train a fresh model)"
        )
    device, precision = _device(cfg), _precision(cfg)
    tok_path = cfg.tokenizer or cfg.init
    if tok_path is None:
        raise MidtrainError("tokenizer: required with [model]; set tokenizer = TOKENIZER_FOLDER")
    tok, tok_hash = _tokenizer(tok_path)
    model_config = _model_config(cfg, tok)
    mix = validate_mix(cfg.mix, set(cfg.stores))
    stores = {c.source: _open_store(TokenStore, c.source, cfg.stores[c.source]) for c in mix}
    _check_stores(stores, tok_hash, tok_path, model_config.vocab_size)
    _check_seq_len(cfg, model_config)
    seqs, micro, steps = _geometry(cfg)
    sampler = MixtureSampler(stores, mix, cfg.seq_len, steps * seqs, cfg.seed)
    init_state = ckpt.read_trainer_state(cfg.init) if cfg.init else None
    schedule, source, warns = _schedule(cfg, init_state, steps)
    if precision == "bf16" and device == "cpu":
        warns.append("precision bf16 on CPU is much slower than fp32; use precision = 'fp32'")
    return RunPlan(
        cfg, device, precision, tok, tok_hash, model_config, stores, sampler, seqs, micro,
        steps, schedule, init_state, source, warns,
    )  # fmt: skip


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _device(cfg: RunConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise MidtrainError("device: 'cuda' but torch sees no GPU; use device = 'cpu' or 'auto'")
    return cfg.device


def _precision(cfg: RunConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if _device(cfg) == "cuda" else "fp32"


def _tokenizer(path: str) -> tuple[Any, str]:
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    if not Path(path).is_dir():
        raise MidtrainError(f"tokenizer: {path} is not a folder; pass a HF tokenizer folder")
    tok = load_tokenizer(path)
    return tok, tokenizer_hash(tok)


def _model_config(cfg: RunConfig, tok: Any) -> Any:
    from transformers import AutoConfig

    from midtrain.data.tokenizer import vocab_size

    ckpt.quiet_transformers()
    if cfg.init is not None:
        ckpt.check_hf_folder(cfg.init)
        try:
            return AutoConfig.from_pretrained(cfg.init)
        except (OSError, ValueError, KeyError) as e:
            raise MidtrainError(f"init: cannot read {cfg.init}/config.json: {e}") from None
    kwargs = dict(cfg.model or {})
    model_type = kwargs.pop("model_type", "llama")
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    kwargs = {"vocab_size": vocab_size(tok), **ids, "pad_token_id": tok.pad_token_id, **kwargs}
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise MidtrainError(f"model.model_type: {model_type!r}: {e}") from None


def _open_store(store_cls: Any, name: str, path: str) -> TokenStore:
    if not Path(path).is_dir():
        raise MidtrainError(f"stores.{name}: {path} is not a folder; run `midtrain data prepare`")
    return store_cls.open(path)


def _check_stores(stores: dict[str, TokenStore], tok_hash: str, tok_path: str, vocab: int) -> None:
    for name, s in stores.items():
        if s.tokenizer_hash != tok_hash:
            raise MidtrainError(
                f"stores.{name}: tokenised with tokenizer {s.tokenizer_hash[:12]} but the model's "
                f"tokenizer ({tok_path}) is {tok_hash[:12]}; re-prepare the store with "
                f"--tokenizer {tok_path}"
            )
        if s.vocab_size > vocab:
            raise MidtrainError(
                f"stores.{name}: ids up to {s.vocab_size - 1} but the model's vocab_size is "
                f"{vocab}; use a model whose embedding covers the tokenizer"
            )


def _check_seq_len(cfg: RunConfig, model_config: Any) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.seq_len > limit:
        raise MidtrainError(
            f"seq_len: {cfg.seq_len} is longer than the model's max_position_embeddings "
            f"{limit}; lower seq_len"
        )


def _geometry(cfg: RunConfig) -> tuple[int, int, int]:
    """(sequences per step, micro batch, optimizer steps) from the token budget."""
    if cfg.batch_tokens % cfg.seq_len:
        raise MidtrainError(
            f"batch_tokens: {cfg.batch_tokens} is not a multiple of seq_len {cfg.seq_len}"
        )
    seqs = cfg.batch_tokens // cfg.seq_len
    micro = min(cfg.micro_batch, seqs)
    if seqs % micro:
        raise MidtrainError(
            f"batch_tokens: {seqs} sequences per step is not a multiple of micro_batch "
            f"{micro}; make batch_tokens a multiple of seq_len * micro_batch"
        )
    steps = cfg.tokens // cfg.batch_tokens
    if steps < 1:
        raise MidtrainError(
            f"tokens: {cfg.tokens} is less than one optimizer step (batch_tokens "
            f"{cfg.batch_tokens}); raise tokens or lower batch_tokens"
        )
    return seqs, micro, steps


def _schedule(
    cfg: RunConfig, init_state: dict[str, Any] | None, steps: int
) -> tuple[BoundSchedule, str, list[str]]:
    """Bind the schedule; start LR from the config or the checkpoint's state (continuity)."""
    s, warns = cfg.schedule, []
    ckpt_lr = float(init_state["lr"]) if init_state else None
    if s.start_lr is None and ckpt_lr is None:
        where = f"{cfg.init} has no midtrain_state/trainer.json" if cfg.init else "[model] is fresh"
        raise MidtrainError(
            f"schedule.start_lr: {where}, so the LR to start from is unknown; "
            "set schedule.start_lr (e.g. the LR the checkpoint was trained at)"
        )
    start = s.start_lr if s.start_lr is not None else ckpt_lr
    final = resolve_final_lr(s.name, start, s.final_lr, s.final_lr_fraction)
    bound = make_schedule(s.name, start, final, steps, s.warmup_steps)
    first = bound.lr_at(0)
    if ckpt_lr is not None and not math.isclose(first, ckpt_lr, rel_tol=1e-9):
        warns.append(
            f"first step LR {first:.4g} differs from the checkpoint's LR {ckpt_lr:.4g} "
            f"(x{first / ckpt_lr:.3g} jump at step 1; from schedule.start_lr/warmup_steps)"
        )
    return bound, "config" if s.start_lr is not None else "checkpoint", warns


# -- estimates -------------------------------------------------------------------------------------


def model_flops_per_token(model_config: Any, seq_len: int) -> tuple[float, int]:
    """(training FLOPs per token, N): 6·N + 6·L·seq·d, N = non-embedding + head parameters.

    6·L·seq·d is causal attention (QKᵀ and AV over seq/2 keys on average, forward + backward).
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    n = n_params if tied else n_params - emb.weight.numel()
    layers, d = model_config.num_hidden_layers, model_config.hidden_size
    return 6.0 * n + 6.0 * layers * seq_len * d, n


def estimate_flops(cfg: RunConfig | RunPlan) -> float:
    plan = cfg if isinstance(cfg, RunPlan) else plan_run(cfg)
    per_token, _ = model_flops_per_token(plan.model_config, plan.cfg.seq_len)
    return per_token * plan.tokens


def dry_run(cfg: RunConfig | RunPlan) -> dict[str, Any]:
    """The resolved config, the token table, FLOPs and a rough time estimate; trains nothing."""
    import torch

    plan = cfg if isinstance(cfg, RunPlan) else plan_run(cfg)
    cfg = plan.cfg
    per_token, n = model_flops_per_token(plan.model_config, cfg.seq_len)
    flops = per_token * plan.tokens
    threads = cfg.threads or torch.get_num_threads()
    rate = CUDA_FLOPS if plan.device == "cuda" else CPU_FLOPS_PER_THREAD * threads
    return {
        "config": plan.resolved(),
        "mix": plan.sampler.plan(),
        "steps": plan.steps,
        "tokens": plan.tokens,
        "params_flops": n,
        "flops": flops,
        "seconds": flops / rate,
        "warnings": plan.warnings,
    }


# -- the run ---------------------------------------------------------------------------------------


class Diverged(MidtrainError):
    """A non-finite loss or gradient norm stopped the run (CLI exit code 3)."""

    exit_code = FAILED_EXIT_CODE

    def __init__(self, message: str, info: dict[str, Any]):
        super().__init__(message)
        self.info = info


def run(
    cfg: RunConfig | Mapping[str, Any], out_dir: str | Path, *, progress: bool | None = None
) -> dict[str, Any]:
    """Train (or resume, or return a finished run's metrics). Raises `Diverged` on NaN/inf."""
    cfg = load_run_config(cfg)
    out = Path(out_dir).resolve()
    existing = _existing_run(out, cfg)
    if existing is not None and existing.get("status") == "done":
        return read_json(out / "metrics.json")
    plan = plan_run(cfg)
    _check_inputs_unchanged(out, plan)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    _start_dir(out, plan)
    t = _build(plan, out)
    status = {"status": "running", "pid": os.getpid(), "from_step": t.step, "time": time.time()}
    atomic_write_json(out / "status.json", status)
    try:
        with _progress_bar(progress, plan) as bar:
            _train(t, bar)
    except Diverged as e:
        atomic_write_json(out / "status.json", {"status": "failed", **e.info})
        raise
    except KeyboardInterrupt:
        atomic_write_json(out / "status.json", {"status": "interrupted", "step": t.step})
        raise
    return _finish(t)


def _existing_run(out: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The status of a run already in `out` with the same config; errors on another config."""
    if not out.exists():
        return None
    if not (out / "config.json").is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise MidtrainError(f"--out {out} exists and is not a run directory; use a new folder")
    if _identity(read_json(out / "config.json")) != _identity(cfg.model_dump(mode="json")):
        raise MidtrainError(
            f"--out {out} holds a run of another config; use another --out (or delete it)"
        )
    status = out / "status.json"
    return read_json(status) if status.is_file() else {}


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """Fields that change what a run computes (threads only change speed)."""
    return {k: v for k, v in config.items() if k not in ("threads", "resolved")}


def _check_inputs_unchanged(out: Path, plan: RunPlan) -> None:
    f = out / "inputs.json"
    if f.is_file() and read_json(f).get("mix_fingerprint") != plan.sampler.fingerprint():
        raise MidtrainError(
            f"--out {out}: its stores or mix changed since the run started; use another --out"
        )


def _start_dir(out: Path, plan: RunPlan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "inputs.json").is_file():
        atomic_write_json(out / "config.json", plan.resolved())
        atomic_write_json(out / "inputs.json", _inputs(plan))


def _inputs(plan: RunPlan) -> dict[str, Any]:
    cfg = plan.cfg
    return {
        "init": {"path": cfg.init, "hash": hash_tree(cfg.init)} if cfg.init else None,
        "init_state": plan.init_state,
        "tokenizer": {"path": cfg.tokenizer or cfg.init, "hash": plan.tokenizer_hash},
        "stores": {
            n: {"path": str(s.path), "content_hash": s.content_hash} for n, s in plan.stores.items()
        },
        "mix_fingerprint": plan.sampler.fingerprint(),
        "config_hash": hash_obj(_identity(cfg.model_dump(mode="json"))),
        "versions": library_versions(),
    }


@dataclass
class _Trainer:
    """What the loop needs, built in dependency order by `_build`."""

    plan: RunPlan
    out: Path
    model: Any
    opt: Any
    params: list[Any]
    loss_fn: Callable[[Any], Any]
    log: RunLog
    step: int = 0
    autocast: Callable[[], Any] = nullcontext

    def checkpoint_due(self, done: int) -> bool:
        every = self.plan.cfg.checkpoint_every
        return every > 0 and done % every == 0 and done < self.plan.steps

    def trainer_state(self, done: int) -> dict[str, Any]:
        base = self.plan.init_state or {}
        p = self.plan
        return {
            "lr": p.schedule.lr_at(done),
            "tokens_seen": int(base.get("tokens_seen", 0)) + done * p.tokens_per_step,
            "steps": int(base.get("steps", 0)) + done,
            "schedule": p.schedule.to_dict(),
            "run": {
                "step": done,
                "position": done * p.seqs_per_step,
                "wall_s": self.log.wall_s,
                "config_hash": hash_obj(_identity(p.cfg.model_dump(mode="json"))),
            },
        }

    def save(self, name: str, done: int, rng: bool) -> Path:
        import torch

        states = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return ckpt.save_checkpoint(
            self.out / name, self.model, self.plan.tokenizer, self.trainer_state(done),
            self.opt, states if rng else None, step=done,
        )  # fmt: skip


def _train(t: _Trainer, bar: Any) -> None:
    """The loop: schedule LR, a batch at the sampler position, accumulate, clip, step, log, save.

    Each micro batch contributes sum(token CE) / (tokens in the whole step), so accumulating
    gradients over micro batches gives exactly the gradient of the step's mean loss.
    """
    import torch

    p = t.plan
    spb, n_targets = p.seqs_per_step, p.seqs_per_step * (p.cfg.seq_len - 1)
    clip = p.cfg.optimizer.grad_clip or math.inf
    device = p.device
    for step in range(t.step, p.steps):
        lr = p.schedule.lr_at(step)
        for group in t.opt.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(p.sampler.sequences(step * spb, spb)).to(device)
        loss = torch.zeros((), device=device)
        for ids in batch.split(p.micro_batch):
            with t.autocast():
                micro_loss = t.loss_fn(ids) / n_targets
            micro_loss.backward()
            loss += micro_loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(t.params, clip, foreach=True)
        t.opt.step()
        t.opt.zero_grad(set_to_none=True)
        done = t.step = step + 1
        ckpt.fault_point("step", done)
        t.log.record(done, done * p.tokens_per_step, lr, loss, grad_norm)
        if t.log.due(done) or done == p.steps or t.checkpoint_due(done):
            t.log.flush(bar)  # raises Diverged on a non-finite loss or grad norm
        if t.checkpoint_due(done):
            t.save("state", done, rng=True)
    t.save("final", p.steps, rng=False)


def lm_loss(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of a batch of sequences (fp32 logits)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, use_cache=False).logits
    targets = ids[:, 1:].reshape(-1)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets, reduction="sum"
    )


def _build(plan: RunPlan, out: Path) -> _Trainer:
    """Model, optimizer and log: resumed from OUT/state, else warm-started or fresh."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = plan.cfg
    ckpt.recover_dir(out / "state")
    ckpt.recover_dir(out / "final")
    resume = out / "state"
    torch.manual_seed(cfg.seed)
    if (resume / "config.json").is_file():
        model, source = ckpt.load_model(resume, plan.device), resume
    elif cfg.init is not None:
        model, source = ckpt.load_model(cfg.init, plan.device), Path(cfg.init)
    else:
        ckpt.quiet_transformers()
        model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
        model, source = model.to(plan.device), None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optimizer, plan.device)
    step, wall = 0, 0.0
    if source == resume:
        _load_optimizer(opt, resume, params)
        state = ckpt.read_trainer_state(resume) or {}
        step, wall = int(state["run"]["step"]), float(state["run"]["wall_s"])
        _set_rng(ckpt.load_rng_state(resume))
    elif source is not None and cfg.optimizer.load_state:
        if _load_optimizer(opt, source, params):
            _set_hparams(opt, cfg.optimizer)
    log = RunLog(out / "log.jsonl", plan.device, plan.tokens_per_step, wall)
    log.truncate(step)
    loss_fn = partial(lm_loss, model)
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    autocast = nullcontext
    if plan.precision == "bf16":
        autocast = partial(torch.autocast, device_type=plan.device, dtype=torch.bfloat16)
    return _Trainer(plan, out, model, opt, params, loss_fn, log, step, autocast)


def make_optimizer(params: list[Any], o: OptimizerConfig, device: str) -> Any:
    """AdamW, weight decay on matrices only (biases and norms excluded), fused when possible."""
    import torch

    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = {"lr": 0.0, "betas": tuple(o.betas), "eps": o.eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def _load_optimizer(opt: Any, path: Path, params: list[Any]) -> bool:
    state = ckpt.load_optimizer_state(path)
    if state is None:
        return False
    shapes = [tuple(p.shape) for g in opt.param_groups for p in g["params"]]
    saved = state.get("state", {})
    for i, shape in enumerate(shapes):
        moment = saved.get(i, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != shape:
            raise MidtrainError(
                f"{path}/midtrain_state/optimizer.pt does not match the model (parameter {i}: "
                f"{tuple(moment.shape)} vs {shape}); set optimizer.load_state = false"
            )
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise MidtrainError(
            f"{path}/midtrain_state/optimizer.pt: {e}; set optimizer.load_state = false"
        ) from None
    return True


def _set_hparams(opt: Any, o: OptimizerConfig) -> None:
    """A warm start keeps the checkpoint's moments but takes this run's hyperparameters."""
    for group, wd in zip(opt.param_groups, (o.weight_decay, 0.0), strict=True):
        group.update(weight_decay=wd, betas=tuple(o.betas), eps=o.eps)


def _set_rng(states: dict[str, Any] | None) -> None:
    import torch

    if states is None:
        return
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _finish(t: _Trainer) -> dict[str, Any]:
    lines = t.log.read()
    tail = lines[-max(1, math.ceil(len(lines) / 10)) :]
    p = t.plan
    metrics = {
        "status": "done",
        "steps": p.steps,
        "tokens": p.tokens,
        "final_loss": lines[-1]["loss"],
        "mean_loss_last_10pct": sum(r["loss"] for r in tail) / len(tail),
        "first_loss": lines[0]["loss"],
        "start_lr": p.schedule.start_lr,
        "final_lr": p.schedule.final_lr,
        "wall_s": t.log.wall_s,
        "tokens_per_s": p.tokens / t.log.wall_s if t.log.wall_s > 0 else None,
        "flops": estimate_flops(p),
        "final_checkpoint": str(t.out / "final"),
        "warnings": p.warnings,
    }
    atomic_write_json(t.out / "metrics.json", metrics)
    atomic_write_json(t.out / "status.json", {"status": "done", "step": p.steps})
    shutil.rmtree(t.out / "state", ignore_errors=True)  # final/ holds everything state/ did
    return metrics


# -- log and progress ------------------------------------------------------------------------------


class RunLog:
    """log.jsonl: step metrics buffered as tensors, written (one host sync) every few steps."""

    def __init__(self, path: Path, device: str, tokens_per_step: int, wall_s: float = 0.0):
        self.path, self.every, self.tps = path, LOG_EVERY.get(device, 1), tokens_per_step
        self.wall_s, self.last_good = wall_s, None
        self._buf: list[tuple[int, int, float, Any, Any]] = []
        self._t0 = time.perf_counter()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, tokens: int, lr: float, loss: Any, grad_norm: Any) -> None:
        self._buf.append((step, tokens, lr, loss, grad_norm))

    def flush(self, bar: Any = None) -> list[dict[str, Any]]:
        import torch

        if not self._buf:
            return []
        values = torch.stack([torch.stack([b[3], b[4]]) for b in self._buf]).tolist()
        now = time.perf_counter()
        dt, self._t0 = now - self._t0, now
        self.wall_s += dt
        tok_s = len(self._buf) * self.tps / dt if dt > 0 else 0.0
        rows = [
            {"step": s, "tokens": n, "lr": lr, "loss": v[0], "grad_norm": v[1], "tok_s": tok_s}
            for (s, n, lr, _, _), v in zip(self._buf, values, strict=True)
        ]
        self._buf.clear()
        with open(self.path, "a", encoding="utf-8") as f:  # NaN/inf become null (strict JSON)
            f.writelines(json.dumps(_finite(r)) + "\n" for r in rows)
        for r in rows:
            if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])):
                raise _diverged(r, self.last_good)
            self.last_good = r
        if bar is not None:
            bar.show(rows[-1])
        return rows

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x]

    def truncate(self, step: int) -> None:
        """Drop lines after `step` (written after the state we resume from)."""
        rows = [r for r in self.read() if r["step"] <= step]
        self.last_good = rows[-1] if rows else None
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self._t0 = time.perf_counter()


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}


def _diverged(row: dict[str, Any], last_good: dict[str, Any] | None) -> Diverged:
    msg = (
        f"non-finite loss/grad norm at step {row['step']} (loss {row['loss']}, grad_norm "
        f"{row['grad_norm']}, lr {row['lr']:.3g}); lower schedule.start_lr or check the data"
    )
    return Diverged(msg, {"step": row["step"], "reason": msg, "last_good": last_good})


class _Bar:
    """A rich progress bar over tokens with loss, lr, tok/s and ETA; silent when not a TTY."""

    def __init__(self, enabled: bool, plan: RunPlan):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} tok"),
            TextColumn(
                "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tok_s]} tok/s"
            ),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self.task = self.progress.add_task("train", total=plan.tokens, loss="-", lr="-", tok_s="-")

    def show(self, row: dict[str, Any]) -> None:
        self.progress.update(
            self.task,
            completed=row["tokens"],
            loss=f"{row['loss']:.4f}",
            lr=f"{row['lr']:.3g}",
            tok_s=f"{row['tok_s']:,.0f}",
        )

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def _progress_bar(progress: bool | None, plan: RunPlan) -> _Bar:
    return _Bar(progress is not False, plan)


# -- pretrain --------------------------------------------------------------------------------------


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """`midtrain pretrain`: a fresh [model] on the `constant` schedule (the WSD stable phase)."""
    if cfg.model is None or cfg.init is not None:
        raise MidtrainError(
            "pretrain trains a fresh [model]: set [model] and remove init (use `anneal` to start "
            "from a checkpoint)"
        )
    if "name" in cfg.schedule.model_fields_set and cfg.schedule.name != "constant":
        raise MidtrainError(
            f"schedule.name: pretrain uses 'constant', not {cfg.schedule.name!r}; "
            "use `midtrain anneal` for a cooldown"
        )
    schedule = cfg.schedule.model_copy(update={"name": "constant"})
    return cfg.model_copy(update={"schedule": schedule})
