"""Timing x weight: `starts = [...]` runs the study from each start with its own control and
crosses start with fraction, on the tiny world of test_study_e2e."""

from __future__ import annotations

import json

import pytest
from test_integrate import main_code
from test_study_e2e import TINY_MODEL, study_file, world  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow

ITEMS = """
[[candidates]]
name = "task-items"
mix = { taskitems = 1.0 }
fractions = [0.25, 0.6]
max_repetition = 50.0
"""


@pytest.fixture(scope="module")
def early(world, tmp_path_factory):  # noqa: F811 - the fixture
    """An earlier start: the base's recipe stopped at half its tokens."""
    from midtrain import train
    from midtrain.data.store import TokenStore

    web = TokenStore.open(world["root"] / "stores" / "web")
    out = tmp_path_factory.mktemp("early")
    rc = {  # test_study_e2e's base, at half its tokens
        "model": dict(TINY_MODEL, vocab_size=web.vocab_size),
        "tokenizer": str(world["root"] / "tokenizer"),
        "stores": {"web": str(web.path)},
        "mix": [{"source": "web", "ratio": 1.0, "max_repetition": 5.0}],
        "tokens": 30 * 2048, "seq_len": 128, "batch_tokens": 2048, "micro_batch": 16, "seed": 0,
        "schedule": {"name": "constant", "start_lr": 3e-3, "warmup_steps": 5},
        "checkpoint_every": 0,
    }  # fmt: skip
    train.run(rc, out, progress=False)
    return out / "final"


@pytest.mark.slow
def test_starts_cross_start_with_fraction(world, early, tmp_path):  # noqa: F811
    path = study_file(world, tmp_path, ITEMS)
    path.write_text(f'starts = ["{early}"]\n' + path.read_text())
    out = tmp_path / "grid"
    assert main_code(["study", "run", str(path), "--out", str(out), "--dry-run"]) == 0
    assert not (out / "grid.json").exists()
    assert main_code(["study", "run", str(path), "--out", str(out)]) == 0
    grid = json.loads((out / "grid.json").read_text())
    starts = grid["starts"]
    assert [s["tokens_seen"] for s in starts] == [30 * 2048, 60 * 2048]  # earliest first
    assert [s["label"] for s in starts] == ["31%", "61%"]  # of full_run_tokens = 200,000
    cells = {(c["start"], c["fraction"]): c for c in grid["cells"]}
    assert set(cells) == {(s, f) for s in ("31%", "61%") for f in (0.25, 0.6)}
    for s in starts:  # each cell is its start's own study: its arm against its own control
        res = json.loads((out / s["dir"] / "results.json").read_text())
        assert res["control"]["seeds"] == [0, 1]
        for arm in res["arms"]:
            c = cells[(s["label"], arm["fraction"])]
            assert c["delta"] == arm["primary"]["delta"] and c["verdict"] == arm["verdict"]
        runs = json.loads((out / s["dir"] / "study.json").read_text())["config"]["checkpoint"]
        assert runs == s["checkpoint"]
    assert all(c["delta"] > 0 for c in cells.values()), cells  # the tasks' own items help
    md = (out / "grid.md").read_text()
    assert "## task-items" in md and "| 31% |" in md and (out / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_to_end_trains_each_start_to_the_end_of_the_full_run(world, early, tmp_path):  # noqa: F811
    """starts_mode = "to_end": the early start's runs train what it has left of the full run (its
    control too), the late one's theirs; the stable-phase starts take the study's schedule from
    their own LR."""
    from midtrain.train.checkpoint import read_trainer_state

    one = ITEMS.replace("fractions = [0.25, 0.6]", "fractions = [0.6]")
    path = study_file(world, tmp_path, one, seeds=(0,))
    full = 60 * 2048 + 4 * 2048  # the base has seen 60 steps: 4 left; the early start 34
    text = path.read_text().replace("full_run_tokens = 200000", f"full_run_tokens = {full}")
    path.write_text(f'starts = ["{early}"]\nstarts_mode = "to_end"\n' + text)
    out = tmp_path / "grid"
    assert main_code(["study", "run", str(path), "--out", str(out)]) == 0
    grid = json.loads((out / "grid.json").read_text())
    assert grid["mode"] == "to_end" and [s["tokens"] for s in grid["starts"]] == [34 * 2048,
                                                                                 4 * 2048]  # fmt: skip
    for s in grid["starts"]:
        assert s["dir"].endswith("-to_end") and s["schedule_from"] == "study"
        lr = read_trainer_state(s["checkpoint"]).lr
        res = json.loads((out / s["dir"] / "results.json").read_text())
        runs = res["control"]["runs"] + res["arms"][0]["runs"]
        assert len(runs) == 2 and all(r["tokens"] == s["tokens"] for r in runs)
        for r in runs:
            sched = json.loads((out / s["dir"] / r["dir"] / "config.json").read_text())
            sched = sched["resolved"]["schedule"]
            assert (sched["name"], sched["final_lr"]) == ("linear", 0.0)
            assert sched["start_lr"] == lr and sched["total_steps"] == s["tokens"] // 2048
    assert "Each start trained to the end of the full run (131,072 tokens" in (
        out / "grid.md").read_text()  # fmt: skip
