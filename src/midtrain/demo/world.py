"""The demo world: a synthetic, deterministic set of training sources and held-out lm-eval tasks.

`generate_world(out, seed, scale)` writes::

    OUT/sources/<web|hq|flan|math|code>/data.jsonl   one {"text": ...} per line
    OUT/tasks/world_{facts,arith,code}.{yaml,jsonl}  lm-eval multiple-choice tasks (test split)
    OUT/tasks/world_arith_gen.{yaml,jsonl}           the arithmetic answered by generation
    OUT/tasks/world.yaml                             group `world` bundling the three MC tasks
    OUT/tasks/world_data.py                          loads the JSONL next to the YAML
    OUT/sft/<facts|arith|code>/{train,val}.jsonl     SFT sets ({"prompt", "response"} rows)
    OUT/world.json                                   seed, scale, counts, content hash

The task YAMLs name their JSONL relative to the tasks folder and load it through
`custom_dataset: !function world_data.load_test`, which lm-eval resolves next to the YAML, so the
world folder can be moved or copied and still loads offline from any working directory.
Entities, facts and held-out items depend on the seed only; `scale` multiplies source sizes and
task item counts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TypedDict

from midtrain.demo.world_entities import ATTRIBUTES, Fact, World, build_world
from midtrain.demo.world_sft import SFT_SETS, sft_rows, sft_set
from midtrain.demo.world_skills import Skills, fmt, number_distractors, value
from midtrain.demo.world_sources import SOURCES, Ctx
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, atomic_write_json, hash_tree

FORMAT = "midtrain-world/3"  # 2: Zipf web, encyclopedic hq, SFT sets; 3: a generative task
TASK_ITEMS_AT_SCALE_1 = 300
MIN_TASK_ITEMS = 50


class SourceCounts(TypedDict):
    docs: int
    bytes: int  # of data.jsonl


class WorldRecord(TypedDict):
    """world.json (`read_world`): what `generate_world` wrote, counted, and the tree's hash."""

    format: str
    seed: int
    scale: float
    sources: dict[str, SourceCounts]
    tasks: dict[str, int]  # items of each task
    sft: dict[str, dict[str, int]]  # rows of each SFT set's splits (train, val)
    content_hash: str


class GeneratedWorld(WorldRecord):
    """`generate_world`'s result: world.json's record and where its files are."""

    path: Path
    tasks_dir: Path
    source_paths: dict[str, Path]
    task_paths: dict[str, Path]
    sft_paths: dict[str, dict[str, Path]]  # set -> split -> file


TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
custom_dataset: !function world_data.load_test
test_split: test
output_type: multiple_choice
doc_to_text: "{doc_to_text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

# The arithmetic problems answered by generation (GSM8K-style): greedy, at most 4 new tokens,
# stopped at a newline; the first number of the output (a regex filter, as GSM8K's strict-match)
# is compared with the answer by exact match.
GEN_YAML = r"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
custom_dataset: !function world_data.load_test
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until:
    - "\n"
  max_gen_toks: 4
  do_sample: false
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(-?\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GROUP_YAML = """\
group: world
task:
  - world_facts
  - world_arith
  - world_code
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
  - metric: acc_norm
    weight_by_size: true
metadata:
  version: 1.0
"""

LOADER_PY = '''\
"""Loads a task's JSONL from this folder (the data_files path is relative to this file)."""

import json
from pathlib import Path

import datasets


def load_test(data_files=None, **_):
    path = Path(__file__).parent / data_files["test"]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
'''

DOC_TO_TEXT = {
    "world_facts": "Question: {{question}}\\nAnswer:",
    "world_arith": "Question: {{question}}\\nAnswer:",
    "world_code": "```python\\n{{program}}\\n```\\nOutput:",
}


def _mc(rng: random.Random, answer: str, wrong: list[str]) -> tuple[list[str], int]:
    choices = [answer, *wrong[:3]]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def facts_items(world: World, n: int, rng: random.Random) -> list[dict]:
    """One item per fact (a sample of n facts), asked with the fact's reserved phrasing.

    Distractors are the answers of other facts of the same kind, drawn as often as they occur,
    so a right answer is no more frequent in the sources than a wrong one: a model cannot win
    by preferring common (hence shorter-tokenised) values.
    """
    items = []
    for f in rng.sample(world.facts, min(n, len(world.facts))):
        items.append(_fact_item(world, f, rng))
    return items


def _fact_item(world: World, f: Fact, rng: random.Random) -> dict:
    others = [g.value for g in world.facts if g.attr == f.attr and g.value != f.value]
    rng.shuffle(others)
    wrong = list(dict.fromkeys(others))[:3]
    if len(wrong) < 3:  # few distinct answers of this kind: top up from the whole pool
        pool = [v for v in world.pools[ATTRIBUTES[f.attr].pool] if v != f.value and v not in wrong]
        wrong += rng.sample(pool, 3 - len(wrong))
    choices, answer = _mc(rng, f.value, wrong)
    return {"question": f.task_question, "choices": choices, "answer": answer, "kind": f.attr}


def arith_items(skills: Skills, n: int, rng: random.Random) -> list[dict]:
    items = []
    for t in skills.task_triples[:n]:
        choices, answer = _mc(rng, str(value(t)), number_distractors(rng, value(t)))
        items.append(
            {"question": f"What is {fmt(t)}?", "choices": choices, "answer": answer, "kind": t[1]}
        )
    return items


def code_items(skills: Skills, n: int, rng: random.Random) -> list[dict]:
    items = []
    for p in skills.task_programs[:n]:
        choices, answer = _mc(rng, p.output, list(p.wrong))
        items.append({"program": p.src, "choices": choices, "answer": answer, "kind": p.family})
    return items


def arith_gen_items(skills: Skills, n: int, rng: random.Random) -> list[dict]:
    """world_arith's problems, to be answered by writing the number."""
    return [{"question": f"What is {fmt(t)}?", "answer": str(value(t)), "kind": t[1]}
            for t in skills.task_triples[:n]]  # fmt: skip


TASKS = {"world_facts": facts_items, "world_arith": arith_items, "world_code": code_items}
GEN_TASKS = {"world_arith_gen": arith_gen_items}  # generate_until, exact match


def task_prompt(task: str, item: dict) -> str:
    """The text lm-eval scores for `item` (doc_to_text rendered), without the answer."""
    if task == "world_code":
        return f"```python\n{item['program']}\n```\nOutput:"
    return f"Question: {item['question']}\nAnswer:"


def _check_args(seed: int, scale: float) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise MidtrainError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(scale, int | float) and 0 < scale <= 100):
        raise MidtrainError(f"scale must be a number in (0, 100], got {scale!r}")


def _write_source(path: Path, name: str, ctx: Ctx, seed: int, scale: float) -> SourceCounts:
    src = SOURCES[name]
    rng = random.Random(f"midtrain-world:{seed}:source:{name}")
    target = int(src.bytes_at_scale_1 * scale)
    lines, n_bytes = [], 0
    while n_bytes < target:
        line = json.dumps({"text": src.doc(rng, ctx)}, ensure_ascii=True) + "\n"
        lines.append(line)
        n_bytes += len(line)
    path.mkdir(parents=True)
    text = "".join(lines)
    (path / "data.jsonl").write_text(text, encoding="utf-8")
    return {"docs": len(lines), "bytes": len(text)}


def _write_tasks(
    path: Path, world: World, skills: Skills, seed: int, scale: float
) -> dict[str, int]:
    path.mkdir(parents=True)
    n = max(MIN_TASK_ITEMS, round(TASK_ITEMS_AT_SCALE_1 * scale))
    counts = {}
    for name, make in {**TASKS, **GEN_TASKS}.items():
        rng = random.Random(f"midtrain-world:{seed}:task:{name}")
        items = make(world if name == "world_facts" else skills, n, rng)
        body = "".join(json.dumps(it, ensure_ascii=True, sort_keys=True) + "\n" for it in items)
        (path / f"{name}.jsonl").write_text(body, encoding="utf-8")
        yaml = (
            GEN_YAML.format(name=name)
            if name in GEN_TASKS
            else TASK_YAML.format(name=name, doc_to_text=DOC_TO_TEXT[name])
        )
        (path / f"{name}.yaml").write_text(yaml, encoding="utf-8")
        counts[name] = len(items)
    (path / "world.yaml").write_text(GROUP_YAML, encoding="utf-8")
    (path / "world_data.py").write_text(LOADER_PY, encoding="utf-8")
    return counts


def _write_sft(path: Path, ctx: Ctx, seed: int, scale: float) -> dict[str, dict[str, int]]:
    n_train, n_val = sft_rows(scale)
    counts = {}
    for name in SFT_SETS:
        (path / name).mkdir(parents=True)
        splits = sft_set(name, ctx, seed, n_train, n_val)
        for split, rows in splits.items():
            body = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows)
            (path / name / f"{split}.jsonl").write_text(body, encoding="utf-8")
        counts[name] = {split: len(rows) for split, rows in splits.items()}
    return counts


def generate_world(out: str | Path, seed: int = 0, scale: float = 1.0) -> GeneratedWorld:
    """Write the demo world for (seed, scale) into `out` atomically; return paths and counts.

    The same (seed, scale) gives byte-identical files. An existing `out` is replaced only once
    the new world is complete.
    """
    _check_args(seed, scale)
    out = Path(out).resolve()
    world = build_world(seed)
    skills = Skills(seed, world)
    ctx = Ctx(world, skills)
    with atomic_dir(out) as tmp:
        sources = {n: _write_source(tmp / "sources" / n, n, ctx, seed, scale) for n in SOURCES}
        tasks = _write_tasks(tmp / "tasks", world, skills, seed, scale)
        sft = _write_sft(tmp / "sft", ctx, seed, scale)
        meta: WorldRecord = {
            "format": FORMAT,
            "seed": seed,
            "scale": scale,
            "sources": sources,
            "tasks": tasks,
            "sft": sft,
            "content_hash": hash_tree(tmp),
        }
        atomic_write_json(tmp / "world.json", meta)
    return {
        **meta,
        "path": out,
        "tasks_dir": out / "tasks",
        "source_paths": {n: out / "sources" / n / "data.jsonl" for n in SOURCES},
        "task_paths": {n: out / "tasks" / f"{n}.jsonl" for n in [*TASKS, *GEN_TASKS]},
        "sft_paths": {
            n: {split: out / "sft" / n / f"{split}.jsonl" for split in ("train", "val")}
            for n in SFT_SETS
        },
    }


def read_world(path: str | Path) -> WorldRecord:
    """The `world.json` of a generated world (MidtrainError when missing or not a world)."""
    meta_path = Path(path) / "world.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MidtrainError(
            f"{meta_path}: not a demo world ({e}); run `generate_world` again"
        ) from e
    if meta.get("format") != FORMAT:
        raise MidtrainError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta
