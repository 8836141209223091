"""`midtrain study import`: lm-eval sample files written by the real lm-eval CLI and HF checkpoint
folders decided as a study; bad import tables as one-line errors with nothing written."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from _cli import run_cli

TASKS = ["world_arith", "world_facts", "world_arith_gen"]  # two multiple choice, one generated
LIMIT = 10
RUNS = [("control", 0), ("control", 1), ("math@0.3", 0), ("math@0.3", 1)]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 256,
        "tie_word_embeddings": False}  # fmt: skip

# lm-eval's own CLI entry point (what `python -m lm_eval` runs: its argument parsing, evaluation and
# EvaluationTracker writing the sample files), once per argv in one interpreter. Each call indexes
# lm-eval's ~12k task YAMLs again (TaskIndex.build, ~12 s here, the same files every time): the
# index is built once per path list and copied for each call; nothing else is changed.
DRIVER = """
import json, sys
from lm_eval.__main__ import cli_evaluate
from lm_eval.tasks._index import TaskIndex

build, built = TaskIndex.build, {}

def build_once(paths, **kw):
    paths = list(paths)
    key = (tuple(map(str, paths)), tuple(sorted(kw.items())))
    if key not in built:
        built[key] = build(paths, **kw)
    return dict(built[key])

TaskIndex.build = staticmethod(build_once)
for argv in json.loads(sys.argv[1]):
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
"""


def _model(root: Path, name: str, tokenizer: str, seed: int) -> Path:
    """A random tiny Llama (its seed makes it differ) with the world's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from midtrain.data.tokenizer import load_tokenizer, vocab_size

    tok = load_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=vocab_size(tok), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **TINY)  # fmt: skip
    torch.manual_seed(seed)
    out = root / "models" / name
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _lm_eval_argv(model: Path, tasks_dir: Path, out: Path) -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={model}", "--tasks", ",".join(TASKS),
            "--include_path", str(tasks_dir), "--limit", str(LIMIT), "--device", "cpu",
            "--batch_size", "8", "--log_samples", "--output_path", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tasks of the demo world, two stores, a start and four run models; the lm-eval CLI is
    started on the four (in the background: `samples` waits for it)."""
    from _train_fixtures import build_world

    from midtrain.demo.world import generate_world

    root = tmp_path_factory.mktemp("import").resolve()
    tasks_dir = generate_world(root / "world", scale=0.05)["tasks_dir"]
    w = build_world(root / "tw")
    models = {run: _model(root, f"{run[0].replace('@', '-')}-s{run[1]}", w["tokenizer"],
                          seed=(0 if run[0] == "control" else 10) + run[1]) for run in RUNS}  # fmt: skip
    start = _model(root, "start", w["tokenizer"], seed=99)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HOME=str(root / "hf"))  # fmt: skip
    (root / "driver.py").write_text(DRIVER)
    outs = {run: root / "lm-eval" / f"{run[0]}-s{run[1]}" for run in RUNS}
    argvs = [_lm_eval_argv(models[r], tasks_dir, outs[r]) for r in RUNS]
    with open(root / "lm-eval.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(root / "driver.py"), json.dumps(argvs)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    yield {"root": root, "tasks": tasks_dir, "stores": w["stores"], "models": models,
           "start": start, "proc": proc, "outs": outs}  # fmt: skip
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def samples(world):
    """The world with each run's `--log_samples` files and lm-eval's own aggregate results."""
    proc, outs = world["proc"], world["outs"]
    proc.wait(timeout=600)
    assert proc.returncode == 0, (world["root"] / "lm-eval.log").read_text()[-3000:]
    world["samples"] = {r: sorted(glob.glob(str(outs[r] / "*" / "samples_*.jsonl"))) for r in RUNS}
    world["lm_results"] = {r: json.loads(Path(glob.glob(str(outs[r] / "*" / "results_*.json"))[0])
                                         .read_text())["results"] for r in RUNS}  # fmt: skip
    return world


def _study(world, runs: list[dict], **over) -> dict:
    study = {
        "name": "imported", "checkpoint": str(world["start"]), "stores": world["stores"],
        "base": {"web": 1.0}, "candidates": [{"name": "math", "mix": {"math": 1.0}}],
        "tokens": 1024, "seq_len": 32, "batch_tokens": 128, "seeds": [0, 1],
        "eval": {"tasks": TASKS, "include_path": str(world["tasks"]), "limit": LIMIT},
        "import": {"runs": runs},
    }  # fmt: skip
    study.update(over)
    return study


def _sample_runs(world) -> list[dict]:
    return [{"arm": a, "seed": s, "samples": world["samples"][(a, s)]} for a, s in RUNS]


def _write(path: Path, data: dict) -> Path:
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


@pytest.fixture(scope="module")
def imported(world, request):
    """The same four runs imported twice: from the CLI's sample files (the study's checkpoint and
    stores not here, as where only sample logs were kept) and from the checkpoints."""
    from midtrain.driver.importer import import_study
    from midtrain.study.results import StudyResult

    root = world["root"]
    ckpts = [{"arm": a, "seed": s, "checkpoint": str(world["models"][(a, s)])} for a, s in RUNS]
    import_study(_write(root / "ckpts.toml", _study(world, ckpts)), root / "out-ckpts")
    world = request.getfixturevalue("samples")  # the lm-eval CLI ran meanwhile
    gone = {"checkpoint": "not-here/ckpt", "stores": {"web": "not-here/web", "math": "not-here/m"}}
    by_samples = _write(root / "samples.toml", _study(world, _sample_runs(world), **gone))
    import_study(by_samples, root / "out-samples")
    return {k: StudyResult.load(root / f"out-{k}" / "results.json") for k in ("samples", "ckpts")}


def test_samples_import_gives_the_study_table_and_lm_evals_numbers(world, samples, imported,
                                                                     monkeypatch, capsys):  # fmt: skip
    from midtrain.study.results import StudyResult

    r = imported["samples"]
    assert [a.arm for a in r.arms] == ["math@0.3"] and r.control.seeds == [0, 1]
    arm = r.arms[0]
    assert arm.seeds == [0, 1] and arm.verdict in ("include", "reject", "inconclusive")
    assert arm.primary is not None and arm.primary.tasks == ["world_arith", "world_facts"]
    assert set(arm.tasks) == set(TASKS)  # world_arith_gen: by exact match (no log-likelihoods)
    out = world["root"] / "out-samples"
    for run in r.control.runs + arm.runs:  # the records are what lm-eval computed, doc by doc
        recs = [json.loads(x) for x in (out / run.dir / "eval" / "examples.jsonl").open()]
        agg = world["lm_results"][(run.arm, run.seed)]
        for task, key in (("world_arith", "acc,none"), ("world_facts", "acc,none"),
                          ("world_arith_gen", "exact_match,first-number")):  # fmt: skip
            mine = [x for x in recs if x["task"] == task]
            assert len(mine) == LIMIT
            assert sum(x["score"] for x in mine) / LIMIT == pytest.approx(agg[task][key], abs=1e-12)
        norm = [x["acc_norm"] for x in recs if x["task"] == "world_arith"]
        assert sum(norm) / LIMIT == pytest.approx(agg["world_arith"]["acc_norm,none"], abs=1e-12)
        assert all(x["gold_logprob_per_byte"] < 0 for x in recs if x["task"] != "world_arith_gen")
        assert run.checkpoint is None and run.status == "done"
    assert r.imported is not None and r.imported.start is None
    assert any("data order" in n for n in r.imported.not_checked)
    assert any("start checkpoint" in n for n in r.imported.notes)
    report = (out / "report.md").read_text()
    assert "Imported runs" in report and "data order" in report
    code, stdout, _ = run_cli(["study", "show", out], monkeypatch, capsys)
    assert code == 0 and "math@0.3" in stdout
    again = ["study", "import", world["root"] / "samples.toml", "--out", out]  # through the CLI
    code, stdout, err = run_cli(again, monkeypatch, capsys)
    assert code == 0 and "4 imports, 4 already done" in err and "math@0.3" in stdout, err
    assert StudyResult.load(out / "results.json").arms[0].primary == arm.primary


def test_checkpoint_import_equals_samples_import(imported, world):
    s, c = imported["samples"], imported["ckpts"]
    a, b = s.arms[0], c.arms[0]
    assert b.primary.delta == pytest.approx(a.primary.delta, abs=1e-4)
    assert b.primary.ci == pytest.approx(a.primary.ci, abs=1e-4)
    for t in TASKS:
        assert b.tasks[t].delta == pytest.approx(a.tasks[t].delta, abs=1e-4)
    assert set(b.domains) == {"web", "math"} and not a.domains  # held-out loss: checkpoints only
    assert c.imported.start is not None and c.start.primary is not None  # the study's checkpoint
    assert b.runs[0].checkpoint == str(world["models"][("math@0.3", 0)])


BAD = {
    "an arm the study does not have": (
        lambda rs, w: rs + [{"arm": "hq@0.3", "seed": 0, "checkpoint": str(w["start"])}],
        "import.runs[4].arm: 'hq@0.3' is not an arm of this study; use one of control, math@0.3"),
    "a seed the study does not have": (
        lambda rs, w: rs[:3] + [{**rs[3], "seed": 7}],
        "import.runs[3].seed: 7 is not a seed of this study (seeds = [0, 1])"),
    "a missing control seed": (
        lambda rs, w: rs[:1] + rs[2:],
        "import.runs: no control run for seed 1; every seed needs its control"),
    "samples of a task the study does not list": (
        lambda rs, w: rs, "holds task 'world_arith_gen', which the study does not list in eval.tasks"),
    "a checkpoint that does not exist": (
        lambda rs, w: rs[:3] + [{"arm": "math@0.3", "seed": 1, "checkpoint": "no/such/ckpt"}],
        "import.runs[3].checkpoint: "),
    "sample files that do not exist": (
        lambda rs, w: [{**rs[0], "samples": ["lm-eval/nothing/samples_world_arith_*.jsonl"]}] + rs[1:],
        "import.runs[0].samples[0]: "),
    "samples of another limit": (
        lambda rs, w: rs, "import.runs[0].samples[0]: lm-eval scored 10 of world_arith's 50 "
        "documents (results_"),
    "samples of another few-shot": (
        lambda rs, w: rs, "import.runs[0].samples[0]: lm-eval ran world_arith 0-shot (results_"),
}  # fmt: skip
EVAL = {  # the study's [eval] of a case, where it differs
    "samples of a task the study does not list": {"tasks": TASKS[:2]},
    "samples of another limit": {"limit": 5},
    "samples of another few-shot": {"num_fewshot": 1},
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_import_tables_are_one_line_errors(case, world, samples, tmp_path, monkeypatch,
                                               capsys):  # fmt: skip
    change, message = BAD[case]
    ev = {"tasks": TASKS, "include_path": str(world["tasks"]), "limit": LIMIT} | EVAL.get(case, {})
    study = _study(world, change(_sample_runs(world), world), eval=ev)
    path = _write(tmp_path / "runs.toml", study)
    code, _, err = run_cli(
        ["study", "import", path, "--out", tmp_path / "out"], monkeypatch, capsys
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: runs.toml: "), err
    assert message in lines[0] and "; " in lines[0], err
    assert not (tmp_path / "out").exists()


def test_a_logged_sample_gives_the_in_process_record():
    """A sample as `simple_evaluate` returns it and as lm-eval's EvaluationTracker writes it
    (its own `sanitize_list`, `gen_args_i`/`arg_j`, `str(target)`) make the same record; eleven
    choices keep their order (gen_args_10 after gen_args_9)."""
    from lm_eval.utils import sanitize_list

    from midtrain.eval.samples import logged_sample, task_example

    choices = [f" {i}" for i in range(11)]
    lls = [(-1.0 - 0.1 * i, i == 3) for i in range(11)]
    s = {"doc_id": 4, "target": 3, "arguments": [("Q:", c) for c in choices],
         "resps": [[x] for x in lls], "filtered_resps": lls, "filter": "none",
         "metrics": ["acc", "acc_norm"], "acc": 0.0, "acc_norm": 1.0}  # fmt: skip
    written = dict(s, resps=sanitize_list(s["resps"]), target=str(s["target"]),
                   filtered_resps=sanitize_list(s["filtered_resps"]),
                   arguments={f"gen_args_{i}": {f"arg_{j}": x for j, x in enumerate(a)}
                              for i, a in enumerate(s["arguments"])})  # fmt: skip
    back = json.loads(json.dumps(written))
    assert task_example("t", logged_sample(back)) == task_example("t", s)
    assert task_example("t", s).choices == 11 and task_example("t", s).margin is not None
