"""End-to-end studies on a tiny generated world: verdicts, resume after SIGKILL, the Ray executor.

One module-scoped fixture builds the world, the token stores and a tiny base model once; each test
then runs a small study on it (a few optimizer steps per run, CPU, one thread per run).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from midtrain.io import read_json

pytestmark = pytest.mark.slow

TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """World (small scale), BPE tokenizer, stores (+ a positive-control store) and a tiny base."""
    import torch

    from midtrain import train
    from midtrain.data.prepare import prepare_source
    from midtrain.demo.pipeline import DemoSettings, build_world_and_stores
    from midtrain.demo.world import GEN_TASKS

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    s = DemoSettings(scale=0.1, vocab_size=512)
    ctx = build_world_and_stores(root, s)
    # Positive control: the multiple-choice tasks' own items written as "question answer" text
    # (world_arith_gen asks world_arith's questions).
    texts = []
    for data in sorted((ctx["world_dir"] / "tasks").glob("*.jsonl")):
        if data.stem in GEN_TASKS:
            continue
        for line in data.read_text().splitlines():
            texts.append(_render(data.stem, json.loads(line)))
    pos = root / "taskitems.jsonl"
    pos.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 3))
    from midtrain.data.tokenizer import load_tokenizer

    prepare_source(
        "taskitems",
        [pos],
        root / "stores" / "taskitems",
        load_tokenizer(ctx["tokenizer"]),
        heldout_fraction=0.02,
        seed=0,
        text_field="text",
    )
    web = ctx["stores"]["web"]
    rc = {
        "model": dict(TINY_MODEL, vocab_size=web.vocab_size),
        "tokenizer": str(ctx["tokenizer"]),
        "stores": {"web": str(web.path)},
        "mix": [{"source": "web", "ratio": 1.0, "max_repetition": 5.0}],
        "tokens": 60 * 2048,
        "seq_len": 128,
        "batch_tokens": 2048,
        "micro_batch": 16,
        "seed": 0,
        "schedule": {"name": "constant", "start_lr": 3e-3, "warmup_steps": 5},
        "checkpoint_every": 0,
    }
    train.run(rc, root / "base", progress=False)
    return {
        "root": root,
        "base": root / "base" / "final",
        "tasks": ctx["world_dir"] / "tasks",
        "stores": sorted(p.name for p in (root / "stores").iterdir()),
    }


def _render(task: str, item: dict) -> str:
    """A task item with its gold answer, exactly as lm-eval scores it (the task's own prompt)."""
    from midtrain.demo.world import task_prompt

    return f"{task_prompt(task, item)} {item['choices'][item['answer']]}"


def study_file(w, out: Path, candidates: str, seeds=(0, 1), tokens=8192, extra="") -> Path:
    stores = "\n".join(f'{n} = "{w["root"] / "stores" / n}"' for n in w["stores"])
    text = f"""
name = "e2e"
checkpoint = "{w["base"]}"
tokens = {tokens}
seq_len = 128
batch_tokens = 2048
micro_batch = 16
seeds = {list(seeds)}
base_max_repetition = 20.0
full_run_tokens = 200000
[stores]
{stores}
[base]
web = 1.0
[schedule]
name = "linear"
[eval]
tasks = {sorted(read_json(w["tasks"].parent / "world.json")["tasks"])!r}
include_path = "{w["tasks"]}"
limit = 60
[train]
threads = 1
{extra}
{candidates}
"""
    out.mkdir(parents=True, exist_ok=True)
    p = out / "study.toml"
    p.write_text(text)
    return p


CANDS = """
[[candidates]]
name = "null"
mix = { "web-shard0" = 1.0 }
max_repetition = 50.0

[[candidates]]
name = "task-items"
mix = { taskitems = 1.0 }
fractions = [0.5]
max_repetition = 50.0

[[candidates]]
name = "math"
mix = { math = 1.0 }
max_repetition = 50.0
"""


def test_quick_study_verdicts(world, tmp_path):
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    # three seeds: task-items@0.5 is the only arm of its design, so its paired differences
    # alone estimate its noise (2 df; with two seeds, 1)
    path = study_file(world, tmp_path, CANDS, seeds=(0, 1, 2))
    _with_shards(world, path)
    results = run_study(load_study(path), tmp_path / "study")
    arms = {a.name: a for a in results.arms}
    null = arms["null"]  # web documents the control does not see: no effect to find
    assert null.verdict == "inconclusive"
    assert null.primary.ci[0] <= 0 <= null.primary.ci[1]
    pos = arms["task-items"]
    assert pos.verdict == "include", pos.primary
    # the tasks' own items, in their own prompt format, raise the gold answers' log-probability
    # where the format is what the base lacks (arithmetic, program output)
    assert pos.tasks["world_arith"].ci[0] > 0 and pos.tasks["world_code"].ci[0] > 0, pos.tasks
    assert arms["math"].primary is not None and arms["math"].seeds == [0, 1, 2]
    gen = pos.tasks["world_arith_gen"]  # generated answers: an exact-match delta of its own
    assert gen.metric == "exact_match" and gen.n_examples > 0 and len(gen.ci) == 2
    assert "world_arith_gen" not in pos.primary.tasks  # the primary is a likelihood
    assert {s.task for s in results.screen if not s.in_primary} == {"world_arith_gen"}
    for f in ("report.md", "report.html", "results.json", "plots/deltas.png", "plots/loss.png"):
        assert (tmp_path / "study" / f).is_file()
    # Re-running a finished study only re-renders: no run directory changes.
    stamps = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "study" / "runs").rglob("model.safetensors")
    }
    again = run_study(load_study(path), tmp_path / "study")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [a.primary for a in again.arms] == [a.primary for a in results.arms]


SMALL = """
[[candidates]]
name = "math"
mix = { math = 1.0 }
max_repetition = 50.0
"""


def _comparable(results) -> list:
    return [(a.arm, a.verdict, a.primary, a.tasks, a.domains) for a in results.arms]


@pytest.mark.slow
def test_killed_study_resumes_to_identical_results(world, tmp_path):
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    ref = run_study(
        load_study(study_file(world, tmp_path / "a", SMALL, seeds=(0,), tokens=16384)),
        tmp_path / "a" / "study",
    )
    path = study_file(
        world, tmp_path / "b", SMALL, seeds=(0,), tokens=16384, extra="checkpoint_every = 2"
    )
    out = tmp_path / "b" / "study"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "midtrain.cli", "study", "run", str(path), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill once a run has saved mid-run state
        if any((out / "runs").glob("*/state")) if (out / "runs").exists() else False:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = run_study(load_study(path), out)
    assert _comparable(resumed) == _comparable(ref)


@pytest.mark.slow
def test_ray_and_worker_processes_match_the_serial_study(world, tmp_path):
    pytest.importorskip("ray")
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    local = run_study(
        load_study(study_file(world, tmp_path / "l", SMALL, seeds=(0,))), tmp_path / "l" / "s"
    )
    ray_res = run_study(
        load_study(study_file(world, tmp_path / "r", SMALL, seeds=(0,))),
        tmp_path / "r" / "s",
        executor="ray",
    )
    assert [r.status for r in ray_res.control.runs + ray_res.arms[0].runs] == ["done", "done"]
    assert _comparable(ray_res) == _comparable(local)
    two = run_study(
        load_study(study_file(world, tmp_path / "w", SMALL, seeds=(0,))),
        tmp_path / "w" / "s",
        workers=2,
    )
    assert _comparable(two) == _comparable(local)
    assert (
        read_json(tmp_path / "r" / "s" / "results.json")["arms"][0]["verdict"]
        == local.arms[0].verdict
    )


@pytest.mark.slow
def test_each_run_of_a_study_can_train_on_two_processes(world, tmp_path):
    """[resources] processes = 2 (local executor): every run is a 2-rank DDP job whose weights
    match the one-process study's, and the verdicts are the same."""
    from safetensors.torch import load_file

    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    res = {}
    for name, extra in (("one", ""), ("two", "[resources]\nprocesses = 2\n")):
        path = study_file(world, tmp_path / name, SMALL + extra, seeds=(0,))
        path.write_text(path.read_text().replace("micro_batch = 16", "micro_batch = 8"))
        res[name] = run_study(load_study(path), tmp_path / name / "s")
    one, two = res["one"], res["two"]
    assert [a.verdict for a in two.arms] == [a.verdict for a in one.arms]
    for r1, r2 in zip(one.control.runs + one.arms[0].runs, two.control.runs + two.arms[0].runs,
                      strict=True):  # fmt: skip
        d1, d2 = tmp_path / "one" / "s" / r1.dir, tmp_path / "two" / "s" / r2.dir
        assert r2.status == "done" and r2.run_id == r1.run_id
        assert read_json(d2 / "config.json")["resolved"]["world_size"] == 2
        a = load_file(d1 / "final" / "model.safetensors")
        b = load_file(d2 / "final" / "model.safetensors")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert two.arms[0].primary.delta == pytest.approx(one.arms[0].primary.delta, abs=1e-3)


NULL = CANDS[: CANDS.index('[[candidates]]\nname = "math"')]  # the null and task-items arms


def _with_shards(world, text_path: Path) -> None:
    """Add two document shards of web to a study file's [stores] (A/A candidates)."""
    from midtrain.data.prepare import shard_store
    from midtrain.data.store import TokenStore

    root = world["root"] / "shards"
    if not (root / "web-shard1" / "manifest.json").is_file():
        shard_store(TokenStore.open(world["root"] / "stores" / "web"), 2, root)
    text = text_path.read_text().replace(
        "[stores]\n", f'[stores]\n"web-shard0" = "{root / "web-shard0"}"\n', 1
    )
    text_path.write_text(text)


def test_auto_seeds_grow_only_inconclusive_arms_with_split_alpha(world, tmp_path):
    from midtrain.driver.runner import run_study
    from midtrain.stats.sequential import spending_levels
    from midtrain.study.config import load_study

    path = study_file(world, tmp_path, NULL, seeds=(0, 1), extra="")
    path.write_text(
        path.read_text().replace("seeds = [0, 1]", 'seeds = "auto"')
        + "\n[analysis]\nmax_seeds = 3\n"
    )
    _with_shards(world, path)
    res = run_study(load_study(path), tmp_path / "study")
    arms = {a.name: a for a in res.arms}
    # the second of two looks (at 3 of max_seeds 3): O'Brien-Fleming-type alpha spending, not
    # Bonferroni's 0.05 / 2
    assert res.method.confidence == pytest.approx(1 - spending_levels(0.05, (2 / 3, 1.0))[1])
    assert 1 - res.method.confidence > 0.05 / 2
    # O'Brien-Fleming spends little alpha at the first look (0.016 here): task-items, alone in
    # its design, needs the third seed; both arms were inconclusive at two, so both grew
    assert arms["task-items"].verdict == "include" and arms["task-items"].seeds == [0, 1, 2]
    assert arms["task-items"].primary.delta_adjusted is not None
    assert arms["null"].verdict == "inconclusive" and arms["null"].seeds == [0, 1, 2]
    assert res.control.seeds == [0, 1, 2] and res.method.looks == 2
    assert (
        "| null@0.3 | web 70% / web-shard0 30% | 3 |"
        in (tmp_path / "study" / "report.md").read_text()
    )


def test_calibration_counts_null_arms_on_a_users_study(world, tmp_path):
    from midtrain.bench.calibrate import run_calibration
    from midtrain.stats.calibrate import CalibrationSettings
    from midtrain.study.config import load_study

    path = study_file(world, tmp_path, SMALL, seeds=(0, 1))
    res = run_calibration(tmp_path / "cal", CalibrationSettings(studies=1, shards=2), study=path)
    assert res.null_arms == 2 and res.studies == 1 and res.nominal == pytest.approx(0.05)
    assert res.false_decisions == res.false_include + res.false_reject
    assert (
        res.coverage.n == 2
        and res.task_coverage.n == 2 * len(load_study(path).eval.tasks)
        and res.domain_coverage.n > 0
    )
    assert res.run_sd[0] is not None and res.run_sd[0] > 0
    shards = sorted(p.name for p in (tmp_path / "cal" / "shards" / "web").iterdir())
    assert shards == ["web-shard0", "web-shard1"]


def test_failed_runs_are_reported_and_the_study_exits_1(world, tmp_path, monkeypatch, capsys):
    """A run that crashes marks its arm failed with the reason; the report is still written; one
    line per failed run with its log; exit code 1; the other arms are decided as usual."""
    from midtrain.cli import main
    from midtrain.train import stage

    real = stage.TrainStage.run

    def crash_math(self, spec, out):
        if any(m.source == "math" for m in spec.mix) and spec.seed == 1:
            raise RuntimeError("node lost")
        return real(self, spec, out)

    monkeypatch.setattr(stage.TrainStage, "run", crash_math)
    path = study_file(world, tmp_path, SMALL + NULL.split('[[candidates]]\nname = "task-items"')[0])
    _with_shards(world, path)
    out = tmp_path / "study"
    monkeypatch.setattr(sys, "argv", ["midtrain", "study", "run", str(path), "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 1
    failed = [line for line in err.splitlines() if line.startswith("failed run")]
    assert len(failed) == 1 and "math@0.3/s1" in failed[0] and "node lost" in failed[0]
    assert "log.jsonl" in failed[0]
    res = read_json(out / "results.json")
    math = next(a for a in res["arms"] if a["name"] == "math")
    assert [r["status"] for r in math["runs"]] == ["done", "failed"] and math["seeds"] == [0]
    # still decided: its one finished run against the control, with the study's pooled noise
    assert math["verdict"] != "failed" and math["primary"]["p"] is not None
    null = next(a for a in res["arms"] if a["name"] == "null")
    assert null["seeds"] == [0, 1] and (out / "report.md").is_file()


def sft_rows(n: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"What is {a} plus {b}?", "response": f"{a + b}"})
    return "".join(json.dumps(r) + "\n" for r in rows)


CPT = """
[[candidates]]
name = "task-items"
mix = { taskitems = 1.0 }
max_repetition = 50.0
continued_pretraining = true
"""


def probe_study(world, tmp_path: Path, decide_on: str = "base") -> Path:
    (tmp_path / "sft-train.jsonl").write_text(sft_rows(32, 0))
    (tmp_path / "sft-val.jsonl").write_text(sft_rows(12, 1))
    probe = f"""
[analysis]
decide_on = "{decide_on}"
[sft_probe]
lrs = [1e-3]
epochs = 1
batch_size = 8
micro_batch = 8
seq_len = 64
checkpoint_every = 0
tasks = true
[[sft_probe.sets]]
name = "sums"
train = "sft-train.jsonl"
val = "sft-val.jsonl"
"""
    path = study_file(world, tmp_path, CPT + probe, extra="")
    path.write_text(path.read_text().replace("limit = 60", "limit = 20"))
    return path


def test_sft_probe_and_cpt_arm_give_intervals_and_can_decide(world, tmp_path, monkeypatch, capsys):
    """Every run (control, arm, CPT arm; 2 seeds) is fine-tuned on an SFT set and scored after
    it; the deltas have intervals; a rerun is fully cached; decide_on = "sft" decides on it."""
    from midtrain.cli import main
    from midtrain.driver.runner import run_study
    from midtrain.jobs import Job
    from midtrain.stats.probe_gains import SFT_METRIC
    from midtrain.study.config import load_study

    out = tmp_path / "study"
    dry = ["midtrain", "study", "run", str(probe_study(world, tmp_path)), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", [*dry, "--dry-run"])
    with pytest.raises(SystemExit) as e:
        main()  # the probe jobs with their tokens and time, nothing written
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "SFT probe: 6 fine-tunes" in text and "task-items@cpt/s1" in text and not out.exists()
    res = run_study(load_study(probe_study(world, tmp_path)), out)
    arms = {a.arm: a for a in res.arms}
    assert set(arms) == {"task-items@0.3", "task-items@cpt"}
    cpt = arms["task-items@cpt"]
    assert cpt.cpt and [(m.source, m.ratio) for m in cpt.mix] == [("taskitems", 1.0)]
    for a in arms.values():
        s = a.probe.sets["sums"]
        assert all(math.isfinite(x) for x in s.ci + s.forgetting.ci + s.forgetting_change.ci)
        assert s.ci[0] <= s.delta_val_loss <= s.ci[1] and len(s.val_loss) == 2
        assert set(s.domains) == {"web"} and s.forgetting.delta_bpb == s.domains["web"].delta_bpb
        assert a.probe.primary.delta == pytest.approx(-s.delta_val_loss)
        assert set(s.tasks) == set(res.eval.tasks)  # scored after SFT too: [sft_probe] tasks
        assert all(math.isfinite(x) for t in s.tasks.values() for x in t.ci)
        assert [p.status for p in a.probe.runs] == ["done", "done"] and a.decided_on == "base"
    assert res.probe.sets == ["sums"] and len(res.probe.control["sums"]) == 2
    report = (out / "report.md").read_text()
    assert "## SFT probe" in report and "| task-items@cpt | sums |" in report

    monkeypatch.setattr(Job, "run", lambda self: pytest.fail(f"{self.stage} ran again"))
    again = run_study(load_study(probe_study(world, tmp_path)), out)
    assert [a.probe for a in again.arms] == [a.probe for a in res.arms]
    # the same runs, decided on another score: a changed analysis plan, allowed only as a
    # re-analysis that the results record
    from midtrain.errors import MidtrainError

    with pytest.raises(MidtrainError, match="decide_on: the analysis plan changed"):
        run_study(load_study(probe_study(world, tmp_path, "sft")), out)
    sft = run_study(load_study(probe_study(world, tmp_path, "sft")), out, reanalyze=True)
    assert sft.method.changed_after_results == ["decide_on"]
    assert "ANALYSIS CHANGED AFTER RESULTS" in (out / "report.md").read_text()
    for a, b in zip(sft.arms, res.arms, strict=True):
        assert a.decided_on == "sft" and a.primary.metric == SFT_METRIC
        assert (a.primary.delta, a.primary.ci) == (b.probe.primary.delta, b.probe.primary.ci)
        assert (a.base_primary.delta, a.base_primary.ci) == (b.primary.delta, b.primary.ci)
        assert a.verdict in ("include", "reject", "inconclusive")
    assert (out / "report.md").read_text().count("decided on the SFT probe") >= 1
