"""One run on two processes (CPU, gloo): DDP and FSDP2 match the single-process run; a job killed
(SIGKILL to its process group) after a checkpoint resumes to the uninterrupted job's weights; a
geometry that does not split over the ranks is one error line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _train_fixtures import build_world, pretrain_config, run_config
from test_checkpoint import _toml  # the run config as TOML, one writer for both suites

from midtrain import io, train
from midtrain.io import read_json

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # relative tolerance of 2 processes vs 1 (summation order only)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop(io.KILL_ENV, None)
    env.update(extra)
    return env


def torchrun(config: Path, out: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m midtrain.cli anneal ...` (a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "midtrain.cli", "anneal", "--config", str(config), "--out", str(out)]  # fmt: skip
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, out: Path, n: int = 2, argv: tuple[str, ...] = ("anneal",),
           **extra: str) -> list[subprocess.Popen]:  # fmt: skip
    """The ranks of `midtrain ARGV --config CONFIG --out OUT` as torchrun starts them (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT, ...), all in one new process group (the first rank's pid), so
    the test can SIGKILL the whole job."""
    port, procs = str(free_port()), []
    for rank in range(n):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n),
                   LOCAL_WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra)  # fmt: skip
        cmd = [sys.executable, "-m", "midtrain.cli", *argv, "--config", str(config),
               "--out", str(out)]  # fmt: skip
        group = procs[0].pid if procs else 0
        procs.append(subprocess.Popen(cmd, env=env, process_group=group, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    return procs


def wait(procs: list[subprocess.Popen]) -> tuple[list[int], str]:
    errs = [p.communicate(timeout=180)[1] for p in procs]
    return [p.returncode for p in procs], "".join(errs)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def max_diffs(a: Path, b: Path) -> tuple[float, float]:
    """(max abs diff of the final weights, max relative diff of the logged losses)."""
    wa, wb = weights(a / "final"), weights(b / "final")
    assert wa.keys() == wb.keys()
    w = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    la, lb = [r["loss"] for r in log_rows(a)], [r["loss"] for r in log_rows(b)]
    assert len(la) == len(lb)
    return w, max(abs(x - y) / abs(x) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A base checkpoint with AdamW moments (4 steps), the anneal config from it, and the
    single-process reference run: 8 steps of 4 sequences in micro batches of 1 (2 per rank)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dist")
    w = build_world(root)
    base = train.run(pretrain_config(w, tokens=4 * 128, checkpoint_every=0), root / "base",
                     progress=False)  # fmt: skip
    rc = run_config(w, init=base.final_checkpoint, micro_batch=1, schedule={"name": "cosine"})
    w["rc"], w["root"] = rc, root
    w["ref"] = root / "single"
    train.run(rc, w["ref"], progress=False)
    return w


def config_file(world: dict, name: str, **overrides) -> Path:
    f = world["root"] / f"{name}.toml"
    f.write_text(_toml({**world["rc"], **overrides}))
    return f


@pytest.fixture(scope="module")
def two_procs(world):
    """The 2-process run of a mode through torchrun (also the kill test's uninterrupted run)."""
    done: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in done:
            out = world["root"] / mode
            res = torchrun(config_file(world, mode, parallel=mode), out)
            assert res.returncode == 0, res.stderr[-3000:]
            done[mode] = out
        return done[mode]

    return get


def optimizer_pt(run: Path) -> dict:
    return torch.load(run / "final" / "midtrain_state" / "optimizer.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(world, two_procs, mode):
    out = two_procs(mode)
    w, loss = max_diffs(world["ref"], out)
    print(f"\n{mode} vs 1 process: max |dw| {w:.3g}, max rel loss diff {loss:.3g}")
    assert loss < RTOL
    wa, wb = weights(world["ref"] / "final"), weights(out / "final")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=RTOL, atol=1e-6)
    cfg = read_json(out / "config.json")["resolved"]
    assert (cfg["parallel"], cfg["world_size"]) == (mode, 2)
    assert read_json(out / "status.json")["status"] == "done"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in world["ref"].iterdir())
    # final/ is the single-process HF folder; its optimizer.pt indexed alike, the same moments
    oa, ob = optimizer_pt(world["ref"]), optimizer_pt(out)
    assert oa["state"].keys() == ob["state"].keys()
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    for i in oa["state"]:
        torch.testing.assert_close(ob["state"][i]["exp_avg"], oa["state"][i]["exp_avg"],
                                   rtol=1e-4, atol=1e-7)  # fmt: skip


def _state_step(out: Path) -> int:
    f = out / "state" / "midtrain_state" / "trainer.json"
    try:
        return json.loads(f.read_text())["run"]["step"]
    except (OSError, ValueError, KeyError):
        return 0


def kill_the_group_after_a_checkpoint(config: Path, out: Path) -> None:
    """SIGKILL the job's process group as soon as the step-4 state is in place."""
    procs = launch(config, out)
    deadline = time.time() + 120
    while _state_step(out) < 4 and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.002)
    os.killpg(procs[0].pid, signal.SIGKILL)
    codes, err = wait(procs)
    assert codes == [-signal.SIGKILL] * 2, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode, kill", [("ddp", "save:state:4"), ("fsdp", "group")])
def test_sigkill_the_job_then_resume_matches_the_uninterrupted_job(world, two_procs, mode, kill):
    config, out = (
        config_file(world, f"killed-{mode}", parallel=mode),
        world["root"] / f"kill-{mode}",
    )
    ref = two_procs(mode)
    if kill == "group":
        kill_the_group_after_a_checkpoint(config, out)
        assert _state_step(out) >= 4
    else:  # both ranks die in the middle of the step-4 save (DCP written, RNG/trainer.json not)
        codes, err = wait(launch(config, out, MIDTRAIN_TEST_KILL=kill))
        assert codes == [-signal.SIGKILL] * 2, err[-3000:]
        assert _state_step(out) == 2
    assert read_json(out / "status.json")["status"] == "running"
    # resume to the end
    codes, err = wait(launch(config, out))
    assert codes == [0, 0], err[-3000:]
    assert read_json(out / "status.json")["status"] == "done"
    a, b = weights(ref / "final"), weights(out / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical to the uninterrupted 2-process run
    log, ref_log = log_rows(out), log_rows(ref)
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [(r["loss"], r["grad_norm"]) for r in log] == [
        (r["loss"], r["grad_norm"]) for r in ref_log
    ]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_micro_batches_that_do_not_split_over_the_ranks_are_one_error_line(world, capsys):
    """Each rank of a 2-process job (torchrun's env vars; the check runs before the process group
    is made): exit 2, rank 0 prints one line, rank 1 nothing."""
    from midtrain.cli import main

    # 4 sequences per step in micro batches of 4: one micro batch for 2 ranks
    config, out = config_file(world, "bad", micro_batch=4), world["root"] / "bad"
    printed = []
    for rank in ("0", "1"):
        env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": "2"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            with pytest.raises(SystemExit) as exit_:
                main(["anneal", "--config", str(config), "--out", str(out)])
        assert exit_.value.code == 2
        printed.append(capsys.readouterr().err.strip().splitlines())
    assert printed[1] == [] and len(printed[0]) == 1, printed
    assert printed[0][0].startswith("error: micro_batch: 4 sequences per step in micro batches")
    assert "not a multiple of the 2 processes" in printed[0][0]
    assert not out.exists()


def test_the_job_is_read_from_torchruns_env_and_resumed_only_by_the_same_job():
    from midtrain.errors import MidtrainError
    from midtrain.train import distributed as dist
    from midtrain.train.checkpoint import RunPosition

    assert dist.resolve("fsdp", {}) == dist.SINGLE  # one process: the single-process run
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert dist.resolve("auto", env) == dist.Dist("ddp", 3, 4, 1)
    assert dist.resolve("fsdp", env).mode == "fsdp"
    with pytest.raises(MidtrainError, match=r"^parallel: 'none' but WORLD_SIZE is 4"):
        dist.resolve("none", env)
    dist.check_geometry(16, 2, dist.Dist("ddp", 0, 4))  # 8 micro batches, 2 per rank
    with pytest.raises(MidtrainError, match="set micro_batch to a divisor of 4"):
        dist.check_geometry(16, 8, dist.Dist("ddp", 0, 4))
    pos = RunPosition(step=2, position=8, wall_s=1.0, config_hash="x")
    dist.check_resume(pos, dist.SINGLE)
    two = pos.model_copy(update={"world_size": 2, "parallel": "fsdp"})
    dist.check_resume(two, dist.Dist("fsdp", 1, 2))
    for job in (dist.SINGLE, dist.Dist("ddp", 0, 2), dist.Dist("fsdp", 0, 4)):
        with pytest.raises(MidtrainError, match="torchrun --nproc-per-node 2"):
            dist.check_resume(two, job)


def test_fsdp_units_are_the_blocks_then_the_untied_embedding_and_head():
    """Each decoder block, the embedding and the head are FSDP2 units of their own (resharded
    after use, not held by the root); a tied embedding and head stay in the root together."""
    from transformers import AutoConfig

    from midtrain.train import distributed as dist
    from midtrain.train.checkpoint import meta_model

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 64}  # fmt: skip
    untied = meta_model(AutoConfig.for_model("llama", **small, tie_word_embeddings=False))
    names = {id(m): n for n, m in untied.named_modules()}
    units = [names[id(m)] for m in dist._fsdp_units(untied)]
    assert units == ["model.layers.0", "model.layers.1", "model.embed_tokens", "lm_head"]
    tied = meta_model(AutoConfig.for_model("llama", **small, tie_word_embeddings=True))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    names = {id(m): n for n, m in tied.named_modules()}
    assert [names[id(m)] for m in dist._fsdp_units(tied)] == ["model.layers.0", "model.layers.1"]


def test_malloc_thresholds_the_user_set_are_left_alone(monkeypatch):
    from midtrain.train import distributed as dist

    for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(k, raising=False)
    assert not dist._user_malloc_settings()
    dist.return_freed_memory()  # this process: glibc returns freed memory at once from here on
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=33554432")
    assert dist._user_malloc_settings()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert not dist._user_malloc_settings()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert dist._user_malloc_settings()


BIG = {
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "vocab_size": 32000,
}  # 66M parameters, 265 MB in fp32


def _rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def _shard_and_report(rank: int, port: int, queue) -> None:  # noqa: ANN001 - a spawned rank
    import torch.distributed as td
    from transformers import AutoModelForCausalLM, LlamaConfig

    from midtrain.train import checkpoint as ckpt
    from midtrain.train import distributed as dist
    from midtrain.train.config import OptimizerConfig
    from midtrain.train.optim import make_optimizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=2)
    d = dist.Dist("fsdp", rank, 2)

    def shard(config: LlamaConfig) -> list:
        if dist.on_meta(d):
            model = ckpt.meta_model(config)
        else:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        opt = make_optimizer(list(model.parameters()), OptimizerConfig())
        make = lambda ps: make_optimizer(ps, OptimizerConfig())  # noqa: E731
        model, _, _ = dist.parallelize(model, opt, make, d, "cpu")
        return model.state_dict()["model.embed_tokens.weight"].full_tensor()[:2, :4].tolist()

    shard(LlamaConfig(**{**BIG, "num_hidden_layers": 1, "vocab_size": 64}))  # lazy imports, gloo
    td.barrier()
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts here: only the model counts
    before = _rss_mib("VmRSS")
    probe = shard(LlamaConfig(**BIG))
    queue.put((rank, _rss_mib("VmHWM") - before, probe))
    td.barrier()
    td.destroy_process_group()


@pytest.mark.slow
def test_fsdp_ranks_beyond_the_first_never_hold_the_whole_model():
    """FSDP2 ranks > 0 build the model on meta and receive rank 0's weights after sharding: rank 1
    holds its half of a 265 MB model, rank 0 the whole model too (it loaded the checkpoint)."""
    import torch.multiprocessing as tmp
    from transformers import LlamaConfig

    from midtrain.train.checkpoint import meta_model

    mib = sum(p.numel() for p in meta_model(LlamaConfig(**BIG)).parameters()) * 4 / 2**20

    ctx = tmp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_shard_and_report, args=(r, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = {}
    for _ in procs:
        rank, peak_mib, probe = queue.get(timeout=600)  # a loaded 2-core machine is slow
        got[rank] = (peak_mib, probe)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    print(
        f"\npeak growth rank 0 {got[0][0]:.0f} MiB, rank 1 {got[1][0]:.0f} MiB; model {mib:.0f} MiB"
    )
    assert got[0][1] == got[1][1]  # rank 1 holds rank 0's weights
    # both peaks count from a warmed-up process (imports, gloo), so only the model differs: rank 0
    # grew by the whole model more than rank 1 (measured 248 MiB of 253 alone on 2 cores)
    assert got[0][0] - got[1][0] > 0.75 * mib
