"""The `external_train` stage: a study's run trained by the user's own command (`[train] command`).

midtrain plans the run as for its own loop (`plan_run`: every input check), writes the run's spec
(`RUN/spec.json`, format `midtrain-external-spec/1`, docs/external.md), runs the command with
`{spec}`, `{out}` and `{checkpoint}` filled in, its stdout and stderr appended to
`RUN/external.log`, then requires a HF causal-LM folder at `{out}` = `RUN/final` (config.json that
AutoConfig reads, weights, the start checkpoint's vocabulary and tokenizer). The result is the
same `RunResult` (`RUN/metrics.json`, status done, written atomically) as a run of midtrain's
loop, so the evaluation, the analysis and the resume logic do not change: a finished run is never
rerun, a command that exits non-zero is retried by `jobs.run_chain`, a result that fails its checks
is not (a `MidtrainError`: the same command would write the same folder).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, read_json
from midtrain.jobs import Stage, register
from midtrain.schema import Strict, field
from midtrain.train import rundir
from midtrain.train.config import RunConfig
from midtrain.train.plan import RunPlan, plan_run

SPEC_FORMAT = "midtrain-external-spec/1"
SPEC_FILE, LOG_FILE, METRICS_LOG = "spec.json", "external.log", "log.jsonl"
PLACEHOLDERS = ("{spec}", "{out}", "{checkpoint}")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")  # fmt: skip
WHERE = "train.command"


class ExternalFailed(RuntimeError):
    """The command exited non-zero: retried once by `jobs.run_chain` (a crash may not recur)."""

    one_line = True  # reported as its message alone (it names train.command)


class ExternalSpec(Strict):
    """The `external_train` job: the run config midtrain would train, and the command instead."""

    run: RunConfig = field(description="The run (mix, tokens, geometry, seed, schedule).")
    command: str | list[str] = field(description="The [train] command template.")
    cwd: str | None = field(None, description="Where the command runs (the study file's folder).")


class SpecSource(TypedDict):
    """One source of the mix in RUN/spec.json (docs/external.md: "Each item of `sources`")."""

    name: str
    ratio: float
    tokens: int
    max_repetition: float
    store: str
    tokens_file: str
    dtype: str
    offset: int
    n_tokens: int
    eos_id: int
    megatron_prefix: str | None


class SpecSchedule(TypedDict):
    shape: str
    start_lr: float
    final_lr: float
    warmup_steps: int
    start_lr_from: str  # config | checkpoint
    lrs: list[float]  # every optimizer step's LR


class SpecOptimizer(TypedDict):
    name: str  # adamw
    weight_decay: float
    betas: list[float]
    eps: float
    grad_clip: float


class TrainerSpec(TypedDict):
    """RUN/spec.json, format `midtrain-external-spec/1`: what the external trainer reads."""

    format: str
    checkpoint: str | None  # cfg.init
    tokenizer: str | None
    out: str
    log: str
    metrics_log: str
    sources: list[SpecSource]
    tokens: int
    steps: int
    seq_len: int
    batch_tokens: int
    batch_sequences: int
    micro_batch: int
    seed: int
    schedule: SpecSchedule
    optimizer: SpecOptimizer
    vocab_size: int
    data_order: str
    command: str | list[str]


def command_problem(command: Any) -> str | None:
    """Why a `[train] command` value is unusable (a str or a list of str naming `{out}`), or None."""
    parts = [command] if isinstance(command, str) else command
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
        return 'must be a string (run by the shell) or a list of strings (no shell), e.g. "python train.py --spec {spec} --out {out}"'  # noqa: E501
    if not "".join(parts).strip():
        return "is empty; give the command that trains the run"
    if not any("{out}" in p for p in parts):
        return ("has no {out}: midtrain could not tell the trainer where to write the checkpoint; "
                "add {out} (the folder to save_pretrained the trained model into)")  # fmt: skip
    return None


def render(command: str | list[str], values: dict[str, str]) -> str | list[str]:
    """Fill the placeholders: quoted for the shell in the string form, verbatim in the list form.
    Other braces (`${HOME}`, awk programs) are left as they are."""

    def fill(text: str, quote: bool) -> str:
        for k, v in values.items():
            text = text.replace("{" + k + "}", shlex.quote(v) if quote else v)
        return text

    if isinstance(command, str):
        return fill(command, True)
    return [fill(p, False) for p in command]


def write_spec(plan: RunPlan, command: str | list[str], out: Path) -> TrainerSpec:
    """RUN/spec.json: every value the external trainer needs (docs/external.md, field by field)."""
    cfg, s = plan.cfg, plan.schedule
    sources: list[SpecSource] = []
    for m in cfg.mix:
        st = plan.stores[m.source]
        sources.append({
            "name": m.source, "ratio": m.ratio, "tokens": round(m.ratio * plan.tokens),
            "max_repetition": m.max_repetition, "store": str(st.path),
            "tokens_file": str(st.train_file), "dtype": st.manifest["dtype"],
            "offset": int(st.manifest["train"]["offset"]), "n_tokens": st.n_train_tokens,
            "eos_id": st.eos_id, "megatron_prefix": st.manifest.get("megatron", {}).get("prefix"),
        })  # fmt: skip
    opt = cfg.optimizer
    spec: TrainerSpec = {
        "format": SPEC_FORMAT,
        "checkpoint": cfg.init,
        "tokenizer": cfg.tokenizer or cfg.init,
        "out": str(out / "final"),
        "log": str(out / LOG_FILE),
        "metrics_log": str(out / METRICS_LOG),
        "sources": sources,
        "tokens": plan.tokens,
        "steps": plan.steps,
        "seq_len": cfg.seq_len,
        "batch_tokens": plan.tokens_per_step,
        "batch_sequences": plan.seqs_per_step,
        "micro_batch": plan.micro_batch,
        "seed": cfg.seed,
        "schedule": {
            "shape": s.name,
            "start_lr": s.start_lr,
            "final_lr": s.final_lr,
            "warmup_steps": s.warmup_steps,
            "start_lr_from": plan.start_lr_source,
            "lrs": [s.lr_at(k) for k in range(plan.steps)],
        },  # fmt: skip
        "optimizer": {
            "name": "adamw",
            "weight_decay": opt.weight_decay,
            "betas": list(opt.betas),
            "eps": opt.eps,
            "grad_clip": opt.grad_clip,
        },  # fmt: skip
        "vocab_size": plan.model_config.vocab_size,
        "data_order": "the trainer's: draw sequences from the sources at their ratios with seed",
        "command": command,
    }
    atomic_write_json(out / SPEC_FILE, spec)
    return spec


def _execute(command: str | list[str], spec: TrainerSpec, out: Path, cwd: str | None) -> int:
    """Run the filled-in command, its stdout and stderr appended to RUN/external.log."""
    values = {"spec": str(out / SPEC_FILE), "out": spec["out"], "checkpoint": spec["checkpoint"]}
    cmd = render(command, values)
    env = dict(os.environ, MIDTRAIN_SPEC=values["spec"], MIDTRAIN_OUT=values["out"],
               MIDTRAIN_CHECKPOINT=values["checkpoint"])  # fmt: skip
    with open(out / LOG_FILE, "a", encoding="utf-8") as log:
        shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
        log.write(f"== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shown}\n")
        log.flush()
        proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            return proc.wait()
        except BaseException:  # interrupted: stop the trainer too, then let run_chain say so
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def check_result(final: Path, plan: RunPlan) -> list[str]:
    """The command's folder must be a HF causal LM of the start checkpoint's vocabulary and
    tokenizer (copied in when it wrote none). Returns warnings; raises a one-line MidtrainError."""
    from transformers import AutoConfig

    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash
    from midtrain.train.checkpoint import check_hf_folder
    from midtrain.train.plan import _check_stores

    if not (final / "config.json").is_file():
        raise MidtrainError(
            f"{WHERE}: exited 0 but wrote no HF model folder at {final} (no config.json); make "
            "the trainer save_pretrained the trained model into {out}"
        )
    check_hf_folder(final, WHERE)
    try:
        config = AutoConfig.from_pretrained(final)
    except (OSError, ValueError, KeyError) as e:
        reason = " ".join(str(e).split())[:160]
        raise MidtrainError(f"{WHERE}: transformers cannot read {final}/config.json ({reason}); "
                            "save the model with save_pretrained") from None  # fmt: skip
    want, got = plan.model_config.vocab_size, getattr(config, "vocab_size", None)
    if got != want:
        raise MidtrainError(
            f"{WHERE}: the checkpoint at {final} has vocab_size {got}, the start checkpoint "
            f"{plan.cfg.init} has {want}; train with the start checkpoint's tokenizer and "
            "embedding size (the evaluation scores its token ids)"
        )
    warnings = []
    if not (final / "tokenizer.json").is_file() and not (final / "tokenizer.model").is_file():
        src = Path(plan.cfg.tokenizer or plan.cfg.init or "")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, final / name)
        warnings.append(f"{WHERE}: the trainer wrote no tokenizer; the start checkpoint's copied")
    tok_hash = tokenizer_hash(load_tokenizer(final))
    if tok_hash != plan.tokenizer_hash:
        raise MidtrainError(
            f"{WHERE}: the tokenizer at {final} ({tok_hash[:12]}) is not the start checkpoint's "
            f"({plan.tokenizer_hash[:12]}); save the start checkpoint's tokenizer, or none"
        )
    _check_stores(plan.stores, tok_hash, str(final), got)
    return warnings


def _losses(out: Path) -> dict[str, float | None]:
    """first, final and mean-of-last-10% loss from RUN/log.jsonl when the trainer wrote one."""
    from midtrain.train.log import read_log

    try:
        rows = [r for r in read_log(out / METRICS_LOG) if isinstance(r.get("loss"), (int, float))]
    except (ValueError, json.JSONDecodeError):
        rows = []
    if not rows:
        return {"first_loss": None, "final_loss": None, "mean_loss_last_10pct": None}
    tail = rows[-max(1, -(-len(rows) // 10)) :]
    return {"first_loss": float(rows[0]["loss"]), "final_loss": float(rows[-1]["loss"]),
            "mean_loss_last_10pct": sum(float(r["loss"]) for r in tail) / len(tail)}  # fmt: skip


def _fail(out: Path, error: Exception) -> None:
    rundir.write_status(out, "failed", reason=str(error))


@register
class ExternalTrainStage(Stage):
    name = "external_train"
    Spec = ExternalSpec
    Result = rundir.RunResult

    def run(self, spec: ExternalSpec, out: Path) -> rundir.RunResult:
        from midtrain.train.plan import model_flops_per_token

        plan = plan_run(spec.run)  # every input check, before anything is written
        rundir.start(out, plan, 0)  # config.json, inputs.json, status running
        doc = write_spec(plan, spec.command, out)
        final = out / "final"
        shutil.rmtree(final, ignore_errors=True)  # a retry starts from nothing
        (out / METRICS_LOG).unlink(missing_ok=True)
        t0 = time.perf_counter()
        code = _execute(spec.command, doc, out, spec.cwd)
        wall = time.perf_counter() - t0
        try:
            if code != 0:
                raise ExternalFailed(f"{WHERE}: exited with status {code}{_last_line(out)}; "
                                     f"see {out / LOG_FILE}")  # fmt: skip
            warnings = check_result(final, plan)
        except Exception as e:
            _fail(out, e)
            raise
        per_token, _ = model_flops_per_token(plan.model_config, plan.cfg.seq_len)
        result = rundir.RunResult(
            steps=plan.steps, tokens=plan.tokens, **_losses(out), start_lr=plan.schedule.start_lr,
            final_lr=plan.schedule.final_lr, wall_s=wall,
            tokens_per_s=plan.tokens / wall if wall > 0 else None, flops=per_token * plan.tokens,
            final_checkpoint=str(final), warnings=plan.warnings + warnings,
        )  # fmt: skip
        atomic_write_json(out / "metrics.json", result.model_dump(mode="json"))
        rundir.write_status(out, "done", step=plan.steps)  # the done marker, last
        return result

    def cached(self, spec: ExternalSpec, out: Path) -> rundir.RunResult | None:
        done = rundir.finished(out)
        if done is None or not (out / SPEC_FILE).is_file():
            return None
        return done if read_json(out / SPEC_FILE).get("command") == spec.command else None


def _last_line(out: Path) -> str:
    """': LAST LINE' of the command's log (its error, usually), or ''."""
    try:
        lines = [x for x in (out / LOG_FILE).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    last = lines[-1].strip() if lines and not lines[-1].startswith("== ") else ""
    return f" ({last[:200]})" if last else ""
