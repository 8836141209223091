"""Trajectories (issue 27): eval points along each run's anneal, evaluated and then deleted;
every arm's deltas at each point with intervals; `still-moving`; the late-point noise of the task
screen. (`predict_tokens` was removed: measured no better than the plain delta.)"""

from __future__ import annotations

import numpy as np
import pytest
from _train_fixtures import build_world, save_tiny_model
from test_analysis import DOMAINS, TASKS, make_eval, study
from test_study_ux import _task_folder

from midtrain.io import read_json
from midtrain.stats import analysis, contrast, trajectory
from midtrain.stats.trajectory import PointData


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("traj")
    world = build_world(root)
    world["ckpt"] = save_tiny_model(root, "llama", world["tokenizer"])
    world["tasks"] = _task_folder(root / "tasks")
    return world


def study_text(w: dict, points: str) -> str:
    """Control and math@0.3, 2 seeds of 4 steps, two local tasks, a web guard."""
    stores = "".join(f'{k} = "{v}"\n' for k, v in w["stores"].items())
    return (
        f'name = "t"\ncheckpoint = "{w["ckpt"]}"\ntokens = 512\nseq_len = 32\nbatch_tokens = 128\n'
        f"micro_batch = 2\nseeds = [0, 1]\n[stores]\n{stores}[base]\nweb = 1.0\n"
        "[schedule]\nstart_lr = 1e-3\n"
        '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\nmax_repetition = 50.0\n'
        f'[eval]\ntasks = ["ux_a", "ux_b"]\ninclude_path = "{w["tasks"]}"\npoints = {points}\n'
        '[[guards]]\ndomain = "web"\ntolerance = 0.5\n[train]\nthreads = 1\n'
    )


def run(w: dict, out, points: str):
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    out.mkdir(parents=True, exist_ok=True)
    toml = out.parent / f"{out.name}.toml"
    toml.write_text(study_text(w, points))
    return run_study(load_study(toml), out)


@pytest.fixture(scope="module")
def two_points(w, tmp_path_factory):
    out = tmp_path_factory.mktemp("points") / "study"
    return out, run(w, out, "[0.5, 1.0]")


def test_each_run_evaluates_its_points_and_deletes_their_weights(two_points):
    out, res = two_points
    runs = sorted((out / "runs").glob("*-s[01]-*"))
    assert len(runs) == 4
    for r in runs:
        ev = r / "eval-points" / "step-2"
        assert (ev / "eval.json").is_file() and (ev / "examples.jsonl").is_file()
        assert read_json(ev / "eval.json")["checkpoint"] == str(r / "points" / "step-2")
        ckpt = r / "points" / "step-2"
        assert not list(ckpt.glob("*.safetensors"))  # deleted once evaluated
        assert (ckpt / "midtrain_state" / "trainer.json").is_file()  # the record stays
        assert read_json(ckpt / "midtrain_state" / "trainer.json")["run"]["step"] == 2
        assert (r / "final" / "model.safetensors").is_file()  # the end keeps its weights
        assert read_json(r / "config.json")["save_points"] == [0.5]


def test_results_carry_one_trajectory_entry_per_point_with_intervals(two_points):
    out, res = two_points
    saved = read_json(out / "results.json")
    (arm,) = saved["arms"]
    traj = arm["trajectory"]
    assert [p["fraction"] for p in traj["points"]] == [0.5, 1.0]
    assert [p["tokens"] for p in traj["points"]] == [256, 512]
    for p in traj["points"]:
        lo, hi = p["primary"]["ci"]
        assert lo < p["primary"]["delta"] < hi
        assert set(p["tasks"]) == {"ux_a", "ux_b"} and set(p["domains"]) == {"web", "math"}
        assert [g["target"] for g in p["guards"]] == ["domain web"]
    # the end of the trajectory is the verdict's own contrast (same runs, same machinery)
    assert traj["points"][-1]["primary"]["delta"] == pytest.approx(arm["primary"]["delta"])
    assert traj["points"][-1]["primary"]["ci"] == pytest.approx(arm["primary"]["ci"])
    assert traj["change"] is not None and traj["still_moving"] in (True, False)
    assert ("still-moving" in arm["flags"]) == traj["still_moving"]
    info = saved["trajectories"]
    assert info["fractions"] == [0.5, 1.0] and info["tokens"] == [256, 512]
    assert 0 < info["eval_share"] < 1 and info["eval_seconds"] > 0
    assert [c["fraction"] for c in info["control"]] == [0.5, 1.0]
    assert set(info["control"][-1]["drop"]) == {"web"}  # the base mix's domains


def test_a_finished_study_evaluates_nothing_again(w, two_points):
    out, _ = two_points
    evals = {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")}
    run(w, out, "[0.5, 1.0]")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")} == evals


def test_a_study_stopped_after_a_point_resumes_without_evaluating_it_again(w, tmp_path):
    """A run whose point was evaluated (and its weights deleted) but whose end was not: the
    next invocation evaluates the end only."""
    out = tmp_path / "study"
    run(w, out, "[0.5, 1.0]")
    r = sorted((out / "runs").glob("math-0.3-s0-*"))[0]
    point, end = r / "eval-points" / "step-2" / "eval.json", r / "eval" / "eval.json"
    before = point.stat().st_mtime_ns
    end.unlink()  # as if killed after the point's evaluation, before the end's
    res = run(w, out, "[0.5, 1.0]")
    assert end.is_file() and point.stat().st_mtime_ns == before
    assert res.arms[0].trajectory is not None and len(res.arms[0].trajectory.points) == 2


def test_the_end_alone_reproduces_the_verdicts_and_run_ids_of_no_points(w, two_points, tmp_path):
    """points = [1.0]: run ids without save_points (as before points existed), no trajectory,
    and the same verdict and interval as the study with a point at 0.5 (saving weights midway
    does not change training)."""
    _, res = two_points
    end = run(w, tmp_path / "end", "[1.0]")
    assert end.arms[0].trajectory is None and end.trajectories.control == []
    assert end.arms[0].verdict == res.arms[0].verdict
    assert end.arms[0].primary.delta == pytest.approx(res.arms[0].primary.delta, abs=1e-9)
    assert end.arms[0].primary.ci == pytest.approx(res.arms[0].primary.ci, abs=1e-9)
    for r in (tmp_path / "end" / "runs").glob("*-s[01]-*"):
        assert read_json(r / "config.json").get("save_points") is None
        assert not (r / "points").exists() and not (r / "eval-points").exists()


# -- still-moving ----------------------------------------------------------------------------------


def points_data(shifts: list[float], seeds: int = 3, seed0: int = 0) -> list[PointData]:
    """Synthetic points: the arm's shift at each, fresh run and example noise at every point."""
    out = []
    for k, shift in enumerate(shifts):
        groups = {}
        for g, s in (("control", 0.0), ("arm@0.3", shift)):
            groups[g] = [make_eval(np.random.default_rng([seed0, k, r, g == "control"]),
                                   task_shift=s) for r in range(seeds)]  # fmt: skip
        d = analysis.StudyData(groups, None, designs={"arm@0.3": "0.3"})
        out.append(PointData(fraction=(k + 1) / len(shifts), tokens=(k + 1) * 1000, data=d))
    return out


def traj(shifts, **kw):
    cfg = study(extra=kw.pop("extra", None))
    return trajectory.arm_trajectory(points_data(shifts, **kw), "arm@0.3", cfg, TASKS, ["math"],
                                     0.95)  # fmt: skip


def test_still_moving_fires_when_the_delta_changes_sign_or_moves_and_not_when_flat():
    flat = traj([0.1, 0.1, 0.1])
    assert flat.still_moving is False and flat.why_moving == ""
    assert flat.change.ci[0] < 0 < flat.change.ci[1]
    flipped = traj([0.1, 0.1, -0.1])
    assert flipped.still_moving is True and "changed sign" in flipped.why_moving
    grew = traj([0.1, 0.2, 0.4])
    assert grew.still_moving is True and "moved +0.2" in grew.why_moving
    assert grew.change.ci[0] > 0
    assert [p.primary.delta for p in grew.points] == pytest.approx([0.1, 0.2, 0.4], abs=0.02)
    assert set(grew.points[0].domains) == set(DOMAINS)


def test_still_moving_is_the_contrast_of_the_change_between_the_last_two_points():
    change = contrast.Contrast(0.01, 0.1, 4.0, 0.95, contrast.Pooled(0.01, 4), 0.01, 0.0, 3)
    assert trajectory.still_moving(0.2, 0.21, change, 0.05) == (False, "")
    assert trajectory.still_moving(0.01, -0.01, change, 0.05)[0]  # a change of sign
    big = contrast.Contrast(0.5, 0.1, 4.0, 0.95, contrast.Pooled(0.01, 4), 0.01, 0.0, 3)
    assert trajectory.still_moving(0.2, 0.7, big, 0.05)[0]


def test_the_report_shows_the_trajectories_plot_and_the_eval_share(two_points):
    out, res = two_points
    md = (out / "report.md").read_text()
    assert "## Trajectories" in md and "![trajectories](plots/trajectories.png)" in md
    section = md.split("## Trajectories")[1].split("## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| math@0.3 | "))
    assert row.count("[") == 3  # an interval at each of the two points and for the change
    assert "Evaluation took" in md and "late-point noise" in md
    assert (out / "plots" / "trajectories.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "<h2>Trajectories</h2>" in html and 'alt="trajectories"' in html
