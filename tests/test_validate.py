"""`midtrain validate`: pairs (the control included), ties, the Wilson interval, and a reference
planned on seeds disjoint from the study's (synthetic run directories, no training)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from test_report import fake_world, write_run

from midtrain.cli import main
from midtrain.driver.collect import collect
from midtrain.io import atomic_write_json
from midtrain.stats.validate import (
    Validation,
    compare,
    count,
    pair_up,
    reference_config,
    wilson,
)
from midtrain.study.config import parse_study
from midtrain.study.plan import make_plan


def shifted_study(tmp_path: Path, name: str, shifts: dict[str, float], **over) -> Path:
    """A finished synthetic study (study.json as `study run` writes it, results.json): each
    candidate's runs score `shift` above the control's."""
    (tmp_path / name).mkdir()
    data = fake_world(tmp_path / name)
    data["candidates"] = [{"name": c, "mix": {"math": 1.0}} for c in shifts]
    cfg = parse_study({**data, **over}, base_dir=tmp_path / name)
    out = tmp_path / name / "study"
    fake_run_study(cfg, out, shifts)
    return out


def fake_run_study(cfg, out: Path, shifts: dict[str, float], workers: int = 1) -> None:  # noqa: ANN001
    plan = make_plan(cfg, out)
    for r in plan.runs:
        write_run(plan, r.dir, 0.0 if r.arm == "control" else shifts[r.candidate], r.seed)
    runs = [{"arm": r.arm, "seed": r.seed, "name": r.name} for r in plan.runs]
    atomic_write_json(out / "study.json", {"config": cfg.model_dump(mode="json"), "runs": runs})
    collect(plan).save(out / "results.json")


def outcomes(deltas: dict[str, float], ref: dict[str, float]) -> dict[tuple[str, str], str]:
    return {(p.a, p.b): p.outcome for p in pair_up(deltas, ref)}


# ------------------------------------------------------------------------------------------------
# Pairs, ties, the interval


def test_pairs_include_the_control_as_a_point_with_delta_zero():
    got = outcomes({"a": 0.3, "b": 0.15, "c": -0.2}, {"a": 0.1, "b": 0.4, "c": -0.3})
    assert got == {("a", "b"): "disagree", ("a", "c"): "agree", ("b", "c"): "agree",
                   ("a", "control"): "agree", ("b", "control"): "agree",
                   ("c", "control"): "agree"}  # fmt: skip
    # the arms keep their order, but b's gain is a loss at scale: only the control pair sees it
    pairs = pair_up({"a": 0.2, "b": 0.1}, {"a": 0.3, "b": -0.1})
    arms, signs = count(pairs[:1]), count(pairs[1:])
    assert arms.accuracy == 1.0 and (signs.agree, signs.disagree) == (1, 1)
    assert count(pairs).accuracy == pytest.approx(2 / 3) and count(pairs).pairs == 3


def test_ties_are_counted_apart_not_as_disagreements():
    got = outcomes({"a": 0.2, "b": 0.2 + 1e-12, "c": 0.0}, {"a": 0.3, "b": 0.1, "c": 0.1})
    assert got[("a", "b")] == "tie"  # equal in the study
    assert got[("b", "c")] == "tie"  # equal in the reference
    assert (
        got[("c", "control")] == "tie"
    )  # c's delta is 0: it cannot be ordered against the control
    assert got[("a", "c")] == "agree" and got[("a", "control")] == "agree"
    c = count(pair_up({"a": 0.2, "b": 0.2, "c": 0.0}, {"a": 0.3, "b": 0.1, "c": 0.1}))
    assert (c.pairs, c.agree, c.disagree, c.ties, c.accuracy) == (6, 3, 0, 3, 1.0)
    everything_tied = count(pair_up({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 2.0}))
    assert everything_tied.ties == 3 and everything_tied.accuracy is None


def test_wilson_interval():
    def by_hand(k: int, n: int, z: float = 1.959963984540054) -> list[float]:
        p = k / n
        mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return [(mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)]

    for k, n in ((9, 10), (10, 10), (0, 3), (7, 15)):
        assert wilson(k, n) == pytest.approx(by_hand(k, n))
    assert wilson(9, 10) == pytest.approx([0.596, 0.982], abs=1e-3)
    lo, hi = wilson(10, 10)
    assert lo == pytest.approx(0.722, abs=1e-3) and hi == pytest.approx(1.0)  # never [1, 1]
    assert wilson(0, 0) is None
    narrow = wilson(9, 10, confidence=0.5)
    assert lo < narrow[0] and narrow[1] <= hi


# ------------------------------------------------------------------------------------------------
# Studies


def test_validate_counts_pairs_ordered_the_same_and_verdicts(tmp_path):
    small = shifted_study(tmp_path, "small", {"a": 0.3, "b": 0.15, "c": -0.2})
    same = shifted_study(tmp_path, "same", {"a": 0.5, "b": 0.2, "c": -0.1})
    flipped = shifted_study(tmp_path, "flip", {"a": 0.1, "b": 0.4, "c": -0.3})
    agree = compare(small, same)
    assert agree.pairs == 6 and agree.pairwise_accuracy == 1.0 and agree.ties == 0
    assert agree.arm_pairs.pairs == 3 and agree.control_pairs.pairs == 3
    assert agree.verdict_agreement == 1.0 and agree.significant_pairs == 6
    assert agree.significant_pairs_kept == 1.0 and agree.reference_separable == 1.0
    lo, hi = agree.pairwise_accuracy_ci
    assert lo == pytest.approx(wilson(6, 6)[0]) and lo < 1 and hi == pytest.approx(1)
    flip = compare(small, flipped)
    assert flip.pairwise_accuracy == pytest.approx(5 / 6)  # a-b flipped; the rest kept
    assert flip.arm_pairs.accuracy == pytest.approx(2 / 3) and flip.control_pairs.accuracy == 1.0
    assert flip.significant_pairs_kept == pytest.approx(5 / 6)
    assert flip.reference_separated_accuracy == pytest.approx(5 / 6)
    assert [a.arm for a in flip.arms] == ["a@0.3", "b@0.3", "c@0.3"]
    assert flip.arms[1].reference_delta > flip.arms[0].reference_delta
    assert flip.seeds == [0, 1] and flip.shared_seeds == [0, 1]  # built on the same seeds here
    assert "reuses seeds 0, 1" in flip.summary() and "[0." in flip.summary()
    back = json.loads(flip.model_dump_json())  # the old keys and the new ones
    for key in ("pairs", "pairwise_accuracy", "verdict_agreement", "significant_pairs",
                "significant_pairs_kept", "reference_separable", "arms", "tokens",
                "reference_tokens", "reference_wall_s", "pairwise_accuracy_ci", "ties",
                "tied_pairs", "arm_pairs", "control_pairs", "reference_separated_accuracy",
                "seeds", "reference_seeds", "shared_seeds", "interval_note"):  # fmt: skip
        assert key in back
    assert Validation.model_validate(back) == flip


def test_a_scaled_reference_runs_on_other_seeds(tmp_path):
    study = shifted_study(tmp_path, "s", {"a": 0.3, "b": -0.2}, seeds=[0, 1, 7])
    cfg, out = reference_config(study, 4)
    assert cfg.tokens == 4 * 8192 and out == study / "reference-x4"
    assert cfg.seeds == [1000, 1001, 1007]
    plan = make_plan(cfg, out)
    own = {r.run_config.seed for r in make_plan(parse_study_record(study), study).runs}
    assert own == {0, 1, 7} and {r.run_config.seed for r in plan.runs} == {1000, 1001, 1007}
    assert {r.seed for r in plan.runs if r.arm == "control"} == {1000, 1001, 1007}
    same, same_out = reference_config(study, 4, reuse_seeds=True)
    assert same.seeds == [0, 1, 7] and same_out == study / "reference-x4-same-seeds"
    wide = shifted_study(tmp_path, "w", {"a": 0.3}, seeds=[0, 2500])  # spans more than 1000
    assert set(reference_config(wide, 2)[0].seeds).isdisjoint({0, 2500})
    with pytest.raises(Exception, match="N >= 2"):
        reference_config(study, 1)


def parse_study_record(study: Path):  # noqa: ANN201
    from midtrain.study.config import StudyConfig

    return StudyConfig.model_validate(json.loads((study / "study.json").read_text())["config"])


def test_an_auto_study_gets_every_seed_its_control_ran_shifted(tmp_path):
    study = shifted_study(tmp_path, "auto", {"a": 0.3, "b": -0.2})
    record = json.loads((study / "study.json").read_text())
    record["config"]["seeds"] = "auto"
    record["runs"] += [{"arm": "control", "seed": 2, "name": "control/s2"}]  # a third look
    atomic_write_json(study / "study.json", record)
    assert reference_config(study, 2)[0].seeds == [1000, 1001, 1002]


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_validate_scale_tokens_end_to_end(tmp_path, monkeypatch, capsys):
    shifts = {"a": 0.3, "b": 0.15, "c": -0.2}
    study = shifted_study(tmp_path, "s", shifts)
    ran = []

    def run_study(cfg, out, workers=1):  # noqa: ANN001 - training replaced by synthetic runs
        ran.append(cfg)
        fake_run_study(cfg, out, {"a": 0.5, "b": -0.1, "c": 0.2})

    monkeypatch.setattr("midtrain.driver.runner.run_study", run_study)
    code, out, err = run_cli(
        ["validate", study, "--scale-tokens", 2, "--json"], monkeypatch, capsys
    )
    assert code == 0, err
    res = json.loads(out)
    assert ran[0].seeds == [1000, 1001] and ran[0].tokens == 2 * 8192
    assert res["reference_seeds"] == [1000, 1001] and res["shared_seeds"] == []
    # arm pairs: a-b kept, a-c kept, b-c flipped; control: a kept, b and c flipped
    assert (res["agreements"], res["disagreements"], res["ties"]) == (3, 3, 0)
    assert res["control_pairs"]["accuracy"] == pytest.approx(1 / 3)
    assert res["pairwise_accuracy"] == pytest.approx(0.5) and len(res["pairwise_accuracy_ci"]) == 2
    code, out, err = run_cli(["validate", study, "--reference", study / "reference-x2"],
                             monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert "flipped" in out and "Wilson, approximate" in out and "reuses seeds" not in out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--reuse-seeds"], "--reuse-seeds: only with --scale-tokens"),
        (["--reference", "x", "--scale-tokens", "2"], "give one"),
        (["--scale-tokens", "1"], "N >= 2"),
    ],
)
def test_bad_validate_options_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, match):
    study = shifted_study(tmp_path, "s", {"a": 0.3, "b": -0.2})
    before = sorted(p.name for p in study.iterdir())
    code, out, err = run_cli(["validate", study, *extra], monkeypatch, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and match in err
    assert sorted(p.name for p in study.iterdir()) == before


def test_the_reference_has_no_eval_points(tmp_path):
    """...and a study.json of the release that had `predict_tokens` (recorded as null) reads."""
    study = shifted_study(tmp_path, "s", {"a": 0.3, "b": -0.2})
    record = json.loads((study / "study.json").read_text())
    record["config"]["eval"]["points"] = [0.25, 0.5, 1.0]
    record["config"]["analysis"]["predict_tokens"] = None
    atomic_write_json(study / "study.json", record)
    cfg, _ = reference_config(study, 4)
    assert cfg.eval.point_fractions == [1.0] and "predict_tokens" not in cfg.analysis.model_dump()
    assert cfg.tokens == 4 * record["config"]["tokens"]
