"""The demo world: determinism, held-out tasks, source roles, lm-eval loading offline."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from midtrain.demo.world import (
    TASKS,
    GeneratedWorld,
    WorldRecord,
    generate_world,
    read_world,
    task_prompt,
)
from midtrain.demo.world_entities import ATTRIBUTES, build_world
from midtrain.demo.world_sft import SFT_SETS, sft_rows
from midtrain.demo.world_skills import Skills
from midtrain.demo.world_sources import FLAN, INFOBOX, Ctx, hq_doc
from midtrain.errors import MidtrainError
from midtrain.io import hash_tree

SCALE = 0.05
SOURCES = ("web", "hq", "flan", "math", "code")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return generate_world(tmp_path_factory.mktemp("w") / "world", seed=0, scale=SCALE)


def texts(world: dict, name: str) -> list[str]:
    lines = world["source_paths"][name].read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def items(world: dict, task: str) -> list[dict]:
    return [json.loads(x) for x in world["task_paths"][task].read_text().splitlines()]


def sft(world: dict, name: str, split: str) -> list[dict]:
    path = world["sft_paths"][name][split]
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_layout_and_counts(world):
    root = world["path"]
    meta = read_world(root)
    assert meta["seed"] == 0 and meta["scale"] == SCALE
    assert set(meta) == WorldRecord.__required_keys__  # the types name every key
    assert set(world) == GeneratedWorld.__required_keys__
    for name in SOURCES:
        data = world["source_paths"][name].read_bytes()
        assert data.count(b"\n") == meta["sources"][name]["docs"] > 0
        assert len(data) == meta["sources"][name]["bytes"]
        assert all(t.strip() for t in texts(world, name))
    for task in TASKS:
        assert len(items(world, task)) == meta["tasks"][task] >= 50
        assert (root / "tasks" / f"{task}.yaml").is_file()
    n_train, n_val = sft_rows(SCALE)
    for name in SFT_SETS:
        for split, n in (("train", n_train), ("val", n_val)):
            rows = sft(world, name, split)
            assert len(rows) == n == meta["sft"][name][split]
            assert all(set(r) == {"prompt", "response"} and r["response"].strip() for r in rows)
    assert meta["content_hash"] == hash_tree(root, exclude=("world.json",))
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_same_seed_is_byte_identical_and_other_seed_differs(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, scale=SCALE)
    other = generate_world(tmp_path / "other", seed=1, scale=SCALE)
    assert hash_tree(again["path"]) == hash_tree(world["path"])
    assert again["content_hash"] == world["content_hash"]
    for name in SOURCES:
        a, b = world["source_paths"][name], other["source_paths"][name]
        assert a.read_bytes() != b.read_bytes()
    for task in TASKS:
        assert world["task_paths"][task].read_bytes() != other["task_paths"][task].read_bytes()
    for name in SFT_SETS:
        for split in ("train", "val"):
            a, b = world["sft_paths"][name][split], again["sft_paths"][name][split]
            assert a.read_bytes() == b.read_bytes()
            assert a.read_bytes() != other["sft_paths"][name][split].read_bytes()


def test_scale_multiplies_sizes(world, tmp_path):
    big = generate_world(tmp_path / "big", seed=0, scale=2 * SCALE)
    for name in SOURCES:
        ratio = big["sources"][name]["bytes"] / world["sources"][name]["bytes"]
        assert 1.8 < ratio < 2.2


def test_task_items_are_held_out_of_every_source(world):
    corpus = "\n".join(t for name in SOURCES for t in texts(world, name))
    for task in TASKS:
        for it in items(world, task):
            gold = it["choices"][it["answer"]]
            assert task_prompt(task, it) + " " + gold not in corpus
            key = it["program"] if task == "world_code" else it["question"]
            assert key not in corpus, f"{task}: {key!r} appears in a training source"


def test_sft_sets_hold_no_task_item(tmp_path):
    """No SFT prompt is a task question or program, at a scale with many rows; the answers are
    right; train and val share no prompt."""
    from midtrain.demo.world_skills import run_program

    w = generate_world(tmp_path / "w", seed=0, scale=1.0)
    held = set()
    for task in TASKS:
        for it in items(w, task):
            held.add(it["program"] if task == "world_code" else it["question"])
    w0 = build_world(0)
    answers = {
        f.question(i): f.value for f in w0.facts for i in range(len(ATTRIBUTES[f.attr].questions))
    }
    for name in SFT_SETS:
        train, val = sft(w, name, "train"), sft(w, name, "val")
        assert len(train) == 256 and len(val) == 64
        prompts = [r["prompt"] for r in train + val]
        assert len(set(prompts)) == len(prompts)
        for r in train + val:
            p = r["prompt"]
            body = p.split("\n", 1)[1] if name == "code" else p
            assert p not in held and body not in held, (name, p)
            if name == "facts":
                assert answers[p] == r["response"]
            elif name == "code":
                assert run_program(body) == r["response"]
            elif p.startswith("What is "):
                a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", p).groups()
                assert int(r["response"]) == eval(f"{a} {op} {b}")  # noqa: S307


def test_task_facts_are_taught_in_other_phrasings():
    """Held out does not mean absent: hq articles state every fact of their subject, and QA in
    training uses every phrasing of a question except the one reserved for the task."""
    w = build_world(0)
    ctx = Ctx(w, Skills(0, w))
    rng = random.Random(0)
    for _ in range(100):
        doc = hq_doc(rng, ctx)
        subject = doc.split("\n")[0]
        assert all(f.value in doc for f in w.by_subject[subject])
    for f in w.facts[:50]:
        asked = {f.train_question(rng) for _ in range(60)}
        n = len(ATTRIBUTES[f.attr].questions)
        assert f.task_question not in asked and len(asked) == n - 1


def test_web_follows_popularity_and_hq_covers_the_long_tail():
    """Web text mentions entities by a Zipf popularity, so the head is repeated and the tail is
    rare; hq has one article per entity whatever its popularity, with an infobox of its facts."""
    from midtrain.demo.world_sources import web_doc

    w = build_world(0)
    ctx = Ctx(w, Skills(0, w))
    people = sorted(w.people, key=lambda p: -w.popularity[p])
    assert sum(w.popularity[p] for p in people) == pytest.approx(len(people))
    rng = random.Random(0)
    web = "\n".join(web_doc(rng, ctx) for _ in range(3000))
    head, tail = people[:8], people[-8:]
    n_head = sum(web.count(p) for p in head)
    n_tail = sum(web.count(p) for p in tail)
    assert n_head > 10 * max(n_tail, 1)
    subjects = [hq_doc(rng, ctx).split("\n")[0] for _ in range(3000)]
    counts = [subjects.count(p) for p in people]
    assert min(counts) > 0 and max(counts) < 4 * min(counts)  # uniform: the tail has articles too
    subject, box, _ = hq_doc(random.Random(1), ctx).split("\n\n")
    assert all(f"{INFOBOX[f.attr]}: {f.value}" in box for f in w.by_subject[subject])


def test_items_are_well_formed_multiple_choice(world):
    for task in TASKS:
        for it in items(world, task):
            assert len(it["choices"]) == 4 == len(set(it["choices"]))
            assert 0 <= it["answer"] < 4
    answers = [it["answer"] for it in items(world, "world_facts")]
    assert len(set(answers)) == 4  # the gold position is shuffled


def test_source_roles(world):
    hq = texts(world, "hq")
    assert not any("Question:" in t or "Answer:" in t or "?" in t for t in hq)
    web = "\n".join(texts(world, "web"))
    assert "Question:" in web and "Thread:" in web and "print(" in web
    assert re.search(r"\d+ [+-] \d+ = \d+", web)
    flan = texts(world, "flan")
    # flan: many templates, each used many times (short and repetitive)
    heads = {t.split("\n")[0].split(":")[0] for t in flan}
    assert len(FLAN) >= 15 and len(heads) >= 15
    assert sum(len(t) for t in flan) / len(flan) < 400
    math = "\n".join(texts(world, "math"))
    assert "Solution:" in math and "carry" in math
    code = texts(world, "code")
    assert all("print(" in t for t in code) and any("Output: " in t for t in code)


def test_code_outputs_are_what_the_programs_print(world):
    from midtrain.demo.world_skills import run_program

    for it in items(world, "world_code")[:50]:
        assert run_program(it["program"]) == it["choices"][it["answer"]]


def test_arith_answers_are_correct(world):
    for it in items(world, "world_arith"):
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", it["question"]).groups()
        assert int(it["choices"][it["answer"]]) == eval(f"{a} {op} {b}")  # noqa: S307


def test_bad_arguments_fail_before_writing(tmp_path):
    for kwargs in ({"seed": -1}, {"scale": 0}, {"scale": "big"}, {"seed": 1.5}):
        with pytest.raises(MidtrainError):
            generate_world(tmp_path / "w", **kwargs)
    assert not (tmp_path / "w").exists()


def test_failed_generation_leaves_old_world(world, tmp_path, monkeypatch):
    out = tmp_path / "w"
    shutil.copytree(world["path"], out)
    before = hash_tree(out)
    from midtrain.demo import world as world_mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(world_mod, "_write_tasks", boom)
    with pytest.raises(RuntimeError):
        generate_world(out, seed=3, scale=SCALE)
    assert hash_tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_lm_eval_loads_tasks_offline_from_a_moved_copy(world, tmp_path, monkeypatch):
    """TaskManager finds the YAMLs; the JSONL path resolves next to them from any cwd."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    moved = tmp_path / "moved"
    shutil.copytree(world["path"], moved)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(moved / "tasks"))
    assert {"world", *TASKS} <= set(tm.all_tasks)
    loaded = tm.load_task_or_group(list(TASKS))
    tasks = {t.config.task: t for t in _leaves(loaded)}
    assert set(tasks) == set(TASKS)
    for name, task in tasks.items():
        docs = list(task.test_docs())
        expected = items(world, name)
        assert len(docs) == len(expected)
        for doc, it in zip(docs, expected, strict=True):
            assert task.doc_to_text(doc) == task_prompt(name, it)
            choices = task.doc_to_choice(doc)
            target = task.doc_to_target(doc)
            assert choices == it["choices"] and isinstance(target, int) and 0 <= target < 4
            assert choices[target] == it["choices"][it["answer"]]
    assert os.listdir(elsewhere) == []


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    else:
        yield obj


def test_world_json_is_location_independent(world, tmp_path):
    text = (world["path"] / "world.json").read_text()
    assert str(world["path"]) not in text
    assert str(Path(world["path"]).parent) not in "".join(
        p.read_text() for p in (world["path"] / "tasks").glob("*.yaml")
    )


def test_generative_arithmetic_asks_world_ariths_problems_for_a_written_answer(world, tmp_path):
    """world_arith_gen: world_arith's held-out problems, answered by generation (lm-eval's
    generate_until: greedy, a newline stops it, the first number is compared by exact match)."""
    from midtrain.demo.world import GEN_TASKS
    from midtrain.eval.lmeval import load_tasks

    assert set(GEN_TASKS) == {"world_arith_gen"} and world["tasks"]["world_arith_gen"] >= 50
    gen, mc = items(world, "world_arith_gen"), items(world, "world_arith")
    assert [g["question"] for g in gen] == [m["question"] for m in mc]
    for g, m in zip(gen, mc, strict=True):
        assert g["answer"] == m["choices"][m["answer"]]
    task = load_tasks(["world_arith_gen"], world["path"] / "tasks")["world_arith_gen"]
    doc = task.eval_docs[0]
    assert task.OUTPUT_TYPE == "generate_until" and task.doc_to_target(doc) == gen[0]["answer"]
    assert task.doc_to_text(doc) == task_prompt("world_arith_gen", gen[0])
    kwargs = task.config.generation_kwargs
    assert kwargs["until"] == ["\n"] and kwargs["max_gen_toks"] == 4
