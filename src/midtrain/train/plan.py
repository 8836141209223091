"""Plan a run: every check that can fail on input, before anything is written.

`plan_run(cfg)` resolves the device, tokenizer, model config, stores, mixture sampler, step geometry
and LR schedule of a run config, raising a one-line `MidtrainError` on the first problem. A
`RunPlan` is what the trainer builds from; `estimate(plan)` is the `--dry-run` summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midtrain import env
from midtrain.errors import MidtrainError
from midtrain.train import checkpoint as ckpt
from midtrain.train import speed
from midtrain.train.config import RunConfig, point_steps
from midtrain.train.distributed import SINGLE, Dist, check_geometry, resolve
from midtrain.train.schedules import BoundSchedule, make_schedule, resolve_final_lr

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore
    from midtrain.mix import MixtureSampler

# Rough sustained training FLOP/s for the `--dry-run` time estimate (docs/runs.md).
CPU_FLOPS_PER_THREAD = 35e9
CUDA_FLOPS = 150e12


@dataclass
class RunPlan:
    cfg: RunConfig
    device: str
    precision: str
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    tokenizer_hash: str
    model_config: Any  # a transformers PretrainedConfig
    stores: dict[str, TokenStore]
    sampler: MixtureSampler
    seqs_per_step: int
    micro_batch: int
    steps: int
    schedule: BoundSchedule
    init_state: ckpt.TrainerState | None
    start_lr_source: str
    warnings: list[str] = field(default_factory=list)
    dist: Dist = SINGLE  # this process under torchrun (docs/scaling.md)
    compile: bool = False  # cfg.compile resolved for the device (speed.resolve_compile)

    @property
    def tokens_per_step(self) -> int:
        return self.seqs_per_step * self.cfg.seq_len

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    def resolved(self) -> dict[str, Any]:  # JSON: the config's dump plus `resolved`
        """config.json of the run directory: the config plus what was derived from it."""
        return {
            **self.cfg.model_dump(mode="json"),
            "resolved": {
                "device": self.device,
                "precision": self.precision,
                "compile": self.compile,
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
                "parallel": self.dist.mode,
                "world_size": self.dist.world,
            },
        }


def plan_run(cfg: RunConfig) -> RunPlan:
    """Resolve and validate a run config: raises a one-line MidtrainError, writes nothing."""
    from midtrain.data.store import open_store
    from midtrain.mix import MixtureSampler, validate_mix

    env.setup()
    if (cfg.init is None) == (cfg.model is None):
        raise MidtrainError(
            "init / [model]: give exactly one (init = checkpoint folder to warm-start, "
            "or [model] to train a fresh model)"
        )
    device = env.resolve_device(cfg.device)
    precision = speed.resolve_precision(cfg.precision, device)
    tok_path = cfg.tokenizer or cfg.init
    if tok_path is None:
        raise MidtrainError("tokenizer: required with [model]; set tokenizer = TOKENIZER_FOLDER")
    tok, tok_hash = _tokenizer(tok_path)
    model_config = _model_config(cfg, tok)
    mix = validate_mix(cfg.mix, set(cfg.stores))
    stores = {c.source: open_store(cfg.stores[c.source], f"stores.{c.source}") for c in mix}
    _check_stores(stores, tok_hash, tok_path, model_config.vocab_size)
    _check_seq_len(cfg, model_config)
    seqs, micro, steps = _geometry(cfg)
    point_steps(cfg.save_points, steps)  # each point a distinct step inside the run
    dist = resolve(cfg.parallel)
    check_geometry(seqs, micro, dist)
    sampler = MixtureSampler(stores, mix, cfg.seq_len, steps * seqs, cfg.seed, cfg.pair_base)
    init_state = ckpt.read_trainer_state(cfg.init) if cfg.init else None
    schedule, source, warns = _schedule(cfg, init_state, steps)
    warns += [w for w in [speed.precision_warning(precision, device)] if w]
    warns += _pruned_init(cfg)
    return RunPlan(
        cfg, device, precision, tok, tok_hash, model_config, stores, sampler, seqs, micro,
        steps, schedule, init_state, source, warns, dist, speed.resolve_compile(cfg.compile, device),
    )  # fmt: skip


def _pruned_init(cfg: RunConfig) -> list[str]:
    """A warm start whose AdamW moments a study's keep policy removed starts them fresh."""
    if cfg.init is None or not cfg.optimizer.load_state:
        return []
    if f"{ckpt.STATE_DIR}/optimizer.pt" not in ckpt.removed_by_keep(cfg.init):
        return []
    return [f"init: {cfg.init} had its AdamW moments removed by the keep policy of the study "
            "that wrote it; this run starts with fresh moments (that study's [keep] run = "
            '"full" keeps them)']  # fmt: skip


def _tokenizer(path: str) -> tuple[Any, str]:
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    if not Path(path).is_dir():
        raise MidtrainError(f"tokenizer: {path} is not a folder; pass a HF tokenizer folder")
    tok = load_tokenizer(path)
    return tok, tokenizer_hash(tok)


def _model_config(cfg: RunConfig, tok: Any) -> Any:
    from transformers import AutoConfig

    from midtrain.data.tokenizer import vocab_size

    env.quiet_transformers()
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
        config = AutoConfig.for_model(model_type, **kwargs)
    except ValueError as e:
        if "Unrecognized model identifier" in str(e):
            raise MidtrainError(f"model.model_type: {model_type!r} is not a model type "
                                "transformers knows; use e.g. 'llama'") from None  # fmt: skip
        raise _bad_model(model_type, e) from None
    except Exception as e:  # noqa: BLE001 - config classes validate in many ways
        raise _bad_model(model_type, e) from None
    _check_buildable(config, model_type)
    return config


def _bad_model(model_type: str, e: Exception) -> MidtrainError:
    reason = " ".join(str(e).split())[:200]
    return MidtrainError(
        f"model: a {model_type!r} model cannot be built from [model] ({type(e).__name__}: "
        f"{reason}); fix the sizes in [model]"
    )


def _check_buildable(config: Any, model_type: str) -> None:
    """Build the fresh model on the meta device (no memory, no weights): shapes must be valid."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - any failure means the [model] table is wrong
        raise _bad_model(model_type, e) from None


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
    cfg: RunConfig, init_state: ckpt.TrainerState | None, steps: int
) -> tuple[BoundSchedule, str, list[str]]:
    """Bind the schedule; start LR from the config or the checkpoint's state (continuity)."""
    s, warns = cfg.schedule, []
    ckpt_lr = init_state.lr if init_state else None
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
        jump = f"x{first / ckpt_lr:.3g}" if ckpt_lr else "from 0"  # an anneal's final: LR 0
        warns.append(
            f"first step LR {first:.4g} differs from the checkpoint's LR {ckpt_lr:.4g} "
            f"({jump} jump at step 1; from schedule.start_lr/warmup_steps)"
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


@dataclass(frozen=True)
class Estimate:
    """What `--dry-run` reports: steps, tokens, FLOPs and a rough time; nothing is trained."""

    steps: int
    tokens: int
    params: int  # N: non-embedding + head parameters
    flops: float
    seconds: float
    warnings: list[str]


def estimate(plan: RunPlan) -> Estimate:
    import torch

    per_token, n = model_flops_per_token(plan.model_config, plan.cfg.seq_len)
    flops = per_token * plan.tokens
    threads = plan.cfg.threads or torch.get_num_threads()
    rate = CUDA_FLOPS if plan.device == "cuda" else CPU_FLOPS_PER_THREAD * threads
    return Estimate(plan.steps, plan.tokens, n, flops, flops / rate, list(plan.warnings))
