"""Task YAMLs over local data: what the eval cache key covers, how data paths resolve, and
`midtrain eval --check-tasks`. A random tiny model is enough: the tests look at which answers it
gets right, not how many."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midtrain.errors import MidtrainError

TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 128, "tie_word_embeddings": False,
}  # fmt: skip
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "grey"]

MC_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised tiny llama with a small BPE tokenizer, saved as a HF folder."""
    import torch
    from _data_fixtures import make_docs
    from transformers import LlamaConfig, LlamaForCausalLM

    from midtrain.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("evaltasks") / "ckpt"
    docs = make_docs(200) + [f"Question: what colour is the {c} box?" for c in COLOURS]
    tok = train_tokenizer(docs, 320, out)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **TINY)).save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`dataset_path: json` writes an Arrow cache: keep it inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def write_items(path: Path, flip: bool = False) -> Path:
    """Seven two-choice questions; `flip` moves every gold answer to the other choice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"question": f"What colour is the {c} box?", "choices": [c, COLOURS[i - 1]],
         "answer": int(flip)}
        for i, c in enumerate(COLOURS)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task(folder: Path, name: str, data: str | Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(MC_YAML.format(name=name, data=data), encoding="utf-8")
    return folder


def task_acc(out: Path, task: str) -> list[float]:
    recs = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    return [r["acc"] for r in sorted(recs, key=lambda r: r["doc_id"]) if r.get("task") == task]


def test_gold_answers_changed_in_an_outside_file_change_the_result(ckpt, tmp_path):
    from midtrain.eval import evaluate

    data = write_items(tmp_path / "data" / "items.jsonl")
    tasks = write_task(tmp_path / "tasks", "outside", data)
    first = evaluate(ckpt, tasks=["outside"], include_path=tasks, out=tmp_path / "e")
    before = task_acc(tmp_path / "e", "outside")
    write_items(data, flip=True)
    second = evaluate(ckpt, tasks=["outside"], include_path=tasks, out=tmp_path / "e")
    after = task_acc(tmp_path / "e", "outside")
    print(f"acc before {first.results.tasks['outside'].acc.mean:.3f} {before}; "
          f"after flipping every gold answer {second.results.tasks['outside'].acc.mean:.3f} {after}")  # fmt: skip
    assert len(before) == 7
    assert after == [1.0 - a for a in before]  # two choices: every answer's verdict flips
    assert second.key != first.key


def test_the_study_eval_stage_sees_changed_gold_answers(ckpt, tmp_path):
    """A study's runs are evaluated through the `eval` stage's jobs (cached, then run)."""
    from midtrain.eval.api import EvalSettings
    from midtrain.eval.stage import EvalJob
    from midtrain.jobs import Job, run_chain

    data = write_items(tmp_path / "data" / "items.jsonl")
    tasks = write_task(tmp_path / "tasks", "outside", data)
    spec = EvalJob(
        checkpoint=str(ckpt), settings=EvalSettings(tasks=["outside"], include_path=str(tasks))
    )
    job = Job.of("eval", "r/s0", tmp_path / "run" / "eval", spec)
    assert run_chain([job]).status == "done"
    before = task_acc(tmp_path / "run" / "eval", "outside")
    assert job.cached() is not None
    write_items(data, flip=True)
    stale = job.cached()
    print(f"after the change: cached() -> {'a result' if stale else None}")
    assert stale is None
    assert run_chain([job]).status == "done"
    assert task_acc(tmp_path / "run" / "eval", "outside") == [1.0 - a for a in before]
    assert job.cached() is not None


def test_relative_data_files_are_read_from_the_yamls_folder(ckpt, tmp_path, monkeypatch):
    from midtrain.eval import api as evaluation

    write_items(tmp_path / "data" / "items.jsonl")
    tasks = write_task(tmp_path / "tasks", "rel", "../data/items.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # lm-eval alone would look for elsewhere/../data/items.jsonl
    res = evaluation.evaluate(ckpt, tasks=["rel"], include_path=tasks, out=tmp_path / "e")
    assert res.results.tasks["rel"].acc.n == 7

    # A data file that does not exist: one line naming the YAML, the task and the resolved path,
    # before any model is loaded, nothing written.
    monkeypatch.setattr(evaluation, "_load", lambda *a, **k: pytest.fail("model loaded"))
    broken = write_task(tmp_path / "broken", "gone", "[items.jsonl, ../data/items.jsonl]")
    (broken / "items.jsonl").write_text("")  # the first exists, the second does not
    yaml = broken / "gone.yaml"
    resolved = tmp_path / "data" / "items.jsonl"
    resolved.unlink()
    with pytest.raises(MidtrainError) as e:
        evaluation.evaluate(ckpt, tasks=["gone"], include_path=broken, out=tmp_path / "x")
    assert str(e.value) == (
        f"{yaml}: task 'gone': data_files.test[1] '../data/items.jsonl' resolves to {resolved}, "
        "which does not exist (relative data files are read from the YAML's folder); correct "
        "the path in the YAML or create the file"
    )
    assert not (tmp_path / "x").exists()
    from midtrain.eval.lmeval import load_tasks  # the same error when lm-eval builds the task

    with pytest.raises(MidtrainError, match="gone.yaml: task 'gone': data_files.test.1. "):
        load_tasks(["gone"], broken)
    from midtrain.eval.api import tasks_key

    write_task(broken, "gone", "../data")
    with pytest.raises(
        MidtrainError,
        match=r"resolves to \S+/data, a folder; name its files or a glob \(../data/\*.jsonl\)",
    ):
        tasks_key(["gone"], broken)


def test_the_key_covers_every_file_a_task_reads_and_nothing_else(tmp_path):
    """data_files as a str, a list, a dict and a glob; an included YAML and a !function module
    outside the task folder; a group; contents only (a moved folder keeps its key)."""
    from midtrain.eval.api import tasks_key
    from midtrain.eval.lmeval import VERSION, preview_tasks, task_inputs

    root = tmp_path / "a"
    shared, data = root / "shared", root / "data"
    shared.mkdir(parents=True)
    head = MC_YAML.format(name="t", data="d").split("test_split:")[1]
    (shared / "template.yaml").write_text(
        "dataset_path: json\ntest_split:" + head + "process_docs: !function helpers.docs\n"
    )
    (shared / "helpers.py").write_text("def docs(ds):\n    return ds\n")
    for name in ("a1", "a2", "b", "c/x", "unused"):
        write_items(data / f"{name}.jsonl")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "a.yaml").write_text(
        "task: a\ninclude: ../shared/template.yaml\n"
        "dataset_kwargs:\n  data_files:\n    test: [../data/a1.jsonl, ../data/a2.jsonl]\n"
    )
    write_task(tasks, "b", "../data/b.jsonl")
    (tasks / "c.yaml").write_text(
        (tasks / "b.yaml").read_text().replace("task: b", "task: c").replace("b.jsonl", "c/*.jsonl")
    )
    (tasks / "g.yaml").write_text("group: g\ntask:\n  - b\nmetadata:\n  version: 1.0\n")
    names = ["a", "b", "c", "g"]
    sizes = {p.name: p.size for p in preview_tasks(names, tasks)}
    assert sizes == {"a": 14, "b": 7, "c": 7}  # lm-eval reads what the key hashes

    def key() -> str:
        return tasks_key(names, tasks)

    keys = [key()]
    group = tasks_key(["g"], tasks)
    for change in ("data/a2.jsonl", "data/b.jsonl", "data/c/x.jsonl", "data/c/y.jsonl",
                   "shared/template.yaml", "shared/helpers.py"):  # fmt: skip
        path = root / change
        if path.suffix == ".jsonl":
            write_items(path, flip=path.exists())
        else:
            path.write_text(path.read_text() + "\n# changed\n")
        keys.append(key())
        assert keys[-1] != keys[-2], change
        if change == "data/b.jsonl":
            assert tasks_key(["g"], tasks) != group  # the group's member reads b.jsonl
    write_items(data / "unused.jsonl", flip=True)
    assert key() == keys[-1]  # a file no task names
    import shutil

    shutil.copytree(root, tmp_path / "moved")
    assert tasks_key(names, tmp_path / "moved" / "tasks") == keys[-1]
    assert task_inputs(["hellaswag"], tasks) == {"hellaswag": {"lm_eval": VERSION}}


def doc_blocks() -> dict[str, str]:
    """The fenced blocks of docs/evaluation.md's "Your own tasks", by the file they show."""
    doc = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    section = doc.split("## Your own tasks", 1)[1].split("\n## ", 1)[0]
    blocks, parts = {}, section.split("```")
    for before, body in zip(parts[0::2], parts[1::2], strict=False):
        lang, _, text = body.partition("\n")
        label = before.strip().splitlines()[-1] if before.strip() else ""
        name = label.split("`")[1] if label.startswith("`my_tasks/") else lang
        blocks.setdefault(name, text)
    return blocks


def test_the_docs_task_example_loads_checks_and_evaluates(ckpt, tmp_path, monkeypatch, capsys):
    from midtrain.cli import main
    from midtrain.eval import evaluate

    blocks = doc_blocks()
    for name in ("my_tasks/capitals.yaml", "my_tasks/data/capitals.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(blocks[name])
    monkeypatch.chdir(tmp_path / "my_tasks" / "data")  # any working directory

    def cli(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main(["eval", *args])
        out, err = capsys.readouterr()
        return e.value.code, out, err

    tasks = str(tmp_path / "my_tasks")
    code, out, _ = cli("--check-tasks", "--tasks", "capitals", "--include-path", tasks)
    assert code == 0
    shown = [x for x in blocks["console"].splitlines() if not x.startswith("$")]
    printed = out.splitlines()
    data = tmp_path / "my_tasks" / "data" / "capitals.jsonl"
    assert printed[1] == f"  data_files: {{'test': '{data}'}}"
    assert printed[:1] + printed[2:] == shown[:1] + shown[2:]  # the doc's output, as printed

    res = evaluate(ckpt, tasks=["capitals"], include_path=tasks, out=tmp_path / "e")
    assert res.results.tasks["capitals"].acc.n == 5

    code, out, err = cli("--check-tasks", "--tasks", "capitals,nope", "--include-path", tasks)
    assert (code, out) == (2, "")
    assert err == "error: tasks: task 'nope' is not known to lm-eval; check the name\n"
    code, _, err = cli("--tasks", "capitals", "--include-path", tasks)
    assert code == 2 and err.startswith("error: eval: CHECKPOINT is required;")


GEN_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: items.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 3
  do_sample: false
{extra}metadata:
  version: 1.0
"""
TWO_FILTERS = """\
filter_list:
  - name: always-ok
    filter:
      - function: custom
        filter_fn: !function helpers.always_ok
      - function: take_first
  - name: raw
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CODE = """\
unsafe_code: true
metric_list:
  - metric: !function helpers.pass_at_1
    aggregation: mean
    higher_is_better: true
"""
HELPERS = '''\
import os


def always_ok(resps, docs):
    return [["ok"] for _ in resps]


def pass_at_1(references, predictions):
    """Runs no code: says whether lm-eval's code metrics would be allowed to."""
    return {"pass@1": float(os.environ.get("HF_ALLOW_CODE_EVAL") == "1")}
'''


def write_gen_tasks(folder: Path) -> Path:
    """`gen`: exact match under two filters (the first maps every output to the target "ok");
    `codey`: an lm-eval unsafe_code task whose pass@1 is 1 only when code execution is allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"Say ok to the {c} box.", "target": "ok"} for c in COLOURS]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "gen.yaml").write_text(GEN_YAML.format(name="gen", extra=TWO_FILTERS))
    (folder / "codey.yaml").write_text(GEN_YAML.format(name="codey", extra=CODE))
    return folder


def test_generative_task_records_one_exact_match_per_document(ckpt, tmp_path):
    from midtrain.eval import Examples, evaluate

    tasks = write_gen_tasks(tmp_path / "tasks")
    res = evaluate(ckpt, tasks=["gen"], include_path=tasks, out=tmp_path / "e")
    recs = list(Examples.load(tmp_path / "e").tasks["gen"].values())
    assert len(recs) == 7  # one record per document, not one per filter
    for r in recs:
        assert r.score == r.exact_match == 1.0 and r.score_metric == "exact_match"
        assert r.filter == "always-ok" and r.model_extra["exact_match,raw"] in (0.0, 1.0)
        assert r.acc is None and r.gold_logprob_per_byte is None
    summary = res.results.tasks["gen"]
    assert summary.score.mean == 1.0 and summary.score.n == 7 and summary.acc.n == 0

    # An evaluation written before generative tasks had scores is done again (the stage's cache)
    from midtrain.eval.api import EvalSettings
    from midtrain.eval.stage import EvalJob, EvalStage

    job = EvalJob(
        checkpoint=str(ckpt), settings=EvalSettings(tasks=["gen"], include_path=str(tasks))
    )
    assert EvalStage().cached(job, tmp_path / "e") == res
    old = json.loads((tmp_path / "e" / "eval.json").read_text())
    del old["results"]["tasks"]["gen"]["score"]
    (tmp_path / "e" / "eval.json").write_text(json.dumps(old))
    assert EvalStage().cached(job, tmp_path / "e") is None


def test_code_task_needs_allow_code_execution(ckpt, tmp_path, capsys, monkeypatch):
    import os

    from midtrain.cli import main
    from midtrain.eval import evaluate

    tasks = write_gen_tasks(tmp_path / "tasks")
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["eval", str(ckpt), "--tasks", "gen,codey", "--include-path", str(tasks),
              "--out", str(tmp_path / "refused")])  # fmt: skip
    err = capsys.readouterr().err
    assert e.value.code == 2 and not (tmp_path / "refused").exists()
    assert err == (
        "error: tasks: task 'codey' runs the code the model writes (lm-eval marks it "
        "unsafe_code); allow it with allow_code_execution = true in [eval] (midtrain eval "
        "--allow-code-execution), in a sandbox, or leave the task out\n"
    )
    res = evaluate(ckpt, tasks=["codey"], include_path=tasks, out=tmp_path / "e",
                   allow_code_execution=True)  # fmt: skip
    assert res.results.tasks["codey"].score.mean == 1.0  # HF_ALLOW_CODE_EVAL=1 during the call
    assert res.results.tasks["codey"].score_metric == "pass@1"
    assert "HF_ALLOW_CODE_EVAL" not in os.environ  # and as it was afterwards
