"""`[train] command`: every run of a study trained by an external trainer (tests/external_trainer.py,
transformers only), then evaluated and analysed as usual; resume, failures and bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from _train_fixtures import build_world, save_tiny_model

from midtrain.cli import main
from midtrain.demo.world import LOADER_PY, TASK_YAML
from midtrain.io import read_json

TRAINER = str(Path(__file__).resolve().parent / "external_trainer.py")
SPEC_FIELDS = {"format", "checkpoint", "tokenizer", "out", "log", "metrics_log", "sources",
               "tokens", "steps", "seq_len", "batch_tokens", "batch_sequences", "micro_batch",
               "seed", "schedule", "optimizer", "vocab_size", "data_order", "command"}  # fmt: skip
SOURCE_FIELDS = {"name", "ratio", "tokens", "max_repetition", "store", "tokens_file", "dtype",
                 "offset", "n_tokens", "eos_id", "megatron_prefix"}  # fmt: skip


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    """Stores web and math, a tiny Llama without midtrain_state, one local multiple-choice task."""
    root = tmp_path_factory.mktemp("ext")
    world = build_world(root)
    world["ckpt"] = save_tiny_model(root, "llama", world["tokenizer"])
    tasks = root / "tasks"
    tasks.mkdir()
    items = [{"question": f"{a} plus {a}", "choices": [str(2 * a), str(a)], "answer": 0}
             for a in range(8)]  # fmt: skip
    (tasks / "ext_a.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tasks / "ext_a.yaml").write_text(
        TASK_YAML.format(name="ext_a", doc_to_text="Question: {{question}}\\nAnswer:")
    )
    (tasks / "world_data.py").write_text(LOADER_PY)
    world["tasks"] = tasks
    return world


def study(w: dict, tmp: Path, command, tasks: bool = False, extra: str = "", seeds=(0,)) -> Path:
    """A control and math@0.3 per seed, 2 steps of 128 tokens each, trained by `command`."""
    stores = "".join(f'{k} = "{v}"\n' for k, v in w["stores"].items())
    ev = f'[eval]\ntasks = ["ext_a"]\ninclude_path = "{w["tasks"]}"\n' if tasks else ""
    text = (
        f'name = "ext"\ncheckpoint = "{w["ckpt"]}"\ntokens = 256\nseq_len = 32\n'
        f"batch_tokens = 128\nmicro_batch = 2\nseeds = {list(seeds)}\n{extra}[stores]\n{stores}"
        "[base]\nweb = 1.0\n[schedule]\nstart_lr = 1e-3\n"
        '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\nmax_repetition = 50.0\n'
        f"{ev}[train]\nthreads = 1\ncommand = {json.dumps(command)}\n"
    )
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "study.toml").write_text(text)
    return tmp / "study.toml"


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # for the trainer's imports
    with pytest.raises(SystemExit) as e:
        main()
    got = capsys.readouterr()
    return e.value.code, got.out, got.err


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").iterdir() if not p.name.startswith("start-"))


def test_every_run_is_trained_by_the_command_then_evaluated_and_never_rerun(
    w, tmp_path, monkeypatch, capsys
):
    from midtrain.study.config import load_study
    from midtrain.study.plan import make_plan

    cmd = [sys.executable, TRAINER, "{spec}", "{out}"]
    path, out = study(w, tmp_path, cmd, tasks=True), tmp_path / "o"
    args = ["study", "run", path, "--out", out]
    code, text, err = run_cli([*args, "--dry-run"], monkeypatch, capsys)
    assert code == 0 and "training: every run by train.command" in text, err
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    runs = run_dirs(out)
    assert len(runs) == 2
    for r in runs:
        spec = read_json(r / "spec.json")
        assert set(spec) == SPEC_FIELDS and spec["format"] == "midtrain-external-spec/1"
        assert spec["checkpoint"] == str(w["ckpt"]) and spec["out"] == str(r / "final")
        assert spec["command"] == cmd and spec["steps"] == 2 and spec["tokens"] == 256
        assert (spec["seq_len"], spec["batch_tokens"], spec["batch_sequences"]) == (32, 128, 4)
        assert spec["schedule"]["start_lr"] == 1e-3 and len(spec["schedule"]["lrs"]) == 2
        assert {s["name"] for s in spec["sources"]} <= {"web", "math"}
        for s in spec["sources"]:
            assert set(s) == SOURCE_FIELDS and Path(s["tokens_file"]).is_file()
        assert abs(sum(s["ratio"] for s in spec["sources"]) - 1) < 1e-9
        log = (r / "external.log").read_text()
        assert log.count("\n== ") + log.startswith("== ") == 1 and "saved to" in log
        assert (r / "final" / "model.safetensors").is_file()
        assert (r / "final" / "tokenizer.json").is_file()  # copied: the trainer saved none
        m = read_json(r / "metrics.json")
        assert m["tokens"] == 256 and m["flops"] > 0 and m["final_loss"] is not None
        assert read_json(r / "status.json")["status"] == "done"
        assert (r / "eval" / "eval.json").is_file()
    res = read_json(out / "results.json")
    assert [a["arm"] for a in res["arms"]] == ["math@0.3"]
    # one seed: the verdict table is written; its verdict waits for a second seed's noise
    assert res["arms"][0]["verdict"] == "no-verdict" and res["arms"][0]["primary"] is not None
    assert (
        "| math@0.3 | math 30% / web 70% | 1 | **no-verdict** |" in (out / "report.md").read_text()
    )
    # Rerun: nothing is trained again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    logs = {r: (r / "external.log").read_text() for r in runs}
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert {r: (r / "external.log").read_text() for r in runs} == logs
    # Another command is another run (its identity includes the command and the spec format).
    plan = make_plan(load_study(path), out)
    assert all(r.run_config.pair_base is None for r in plan.runs)  # the order is the trainer's
    ids = {r.run_id for r in plan.runs}
    other = study(w, tmp_path / "b", [*cmd, "--resize", "0"], tasks=True)
    assert ids.isdisjoint(r.run_id for r in make_plan(load_study(other), out).runs)


@pytest.mark.parametrize(
    ("command", "error", "attempts"),
    [
        ("echo {out} >&2; exit 1", "train.command: exited with status 1 (", 2),
        ("echo training into {out}", "train.command: exited 0 but wrote no HF model folder", 1),
        # the start checkpoint copied with a larger vocab_size written into its config.json
        ("cp -r {checkpoint} {out} && sed -i 's/\"vocab_size\": /&1/' {out}/config.json",
         "train.command: the checkpoint at ", 1),
    ],
    ids=["exit-1", "no-checkpoint", "vocab"],
)  # fmt: skip
def test_a_failed_command_fails_its_run_and_the_study_exits_1_with_its_report(
    command, error, attempts, w, tmp_path, monkeypatch, capsys
):
    path, out = study(w, tmp_path, command), tmp_path / "o"
    code, _, err = run_cli(["study", "run", path, "--out", out], monkeypatch, capsys)
    assert code == 1, err
    assert (out / "report.md").is_file() and (out / "results.json").is_file()
    res = read_json(out / "results.json")
    runs = res["control"]["runs"] + [r for a in res["arms"] for r in a["runs"]]
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["error"].startswith(error) for r in failed), failed
    assert f"failed run control/s0 (failed): {error}" in err
    for r in run_dirs(out):
        st = read_json(r / "status.json")
        assert st["status"] == "failed" and st["reason"].startswith(error)
        assert (r / "external.log").read_text().count("== ") == attempts  # retried when it crashed


@pytest.mark.parametrize(
    ("command", "extra", "start"),
    [
        ("python train.py --spec {spec}", "", "train.command: has no {out}"),
        (["python", 3], "", "train.command: must be a string"),
        ("t {out}", "[resources]\nprocesses = 2\n", "resources.processes: an external trainer"),
        ("t {out}", "[eval]\npoints = [0.5, 1.0]\n", "eval.points: an external trainer"),
    ],
    ids=["no-out", "not-strings", "processes", "points"],
)
def test_bad_commands_are_one_line_exit_2_and_write_nothing(
    command, extra, start, w, tmp_path, monkeypatch, capsys
):
    path = study(w, tmp_path, command)
    if extra:  # a table after [train] would take the following keys; put it before
        text = path.read_text().replace("[train]", extra + "[train]")
        path.write_text(text)
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: study.toml: {start}"), lines[0]
    assert not (tmp_path / "o").exists()
