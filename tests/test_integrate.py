"""Integration rounds: the round file, propose (shares, budgets, caps), run (reused control,
ablation, merge of seeds) and the round-over-round table, on the tiny world of test_study_e2e."""

from __future__ import annotations

import os

import pytest
from test_study_e2e import CANDS, _with_shards, study_file, world  # noqa: F401 - the fixture

from midtrain.cli import main
from midtrain.errors import MidtrainError
from midtrain.integrate.config import RoundSpec, check_round, round_study
from midtrain.integrate.guards import DOMAIN_TOLERANCE, TASK_TOLERANCE

ROUND = {
    "name": "r1",
    "anchor": {"web": 1.0},
    "anchor_share": 0.5,
    "sources": {"math": 0.3, "code": 0.2},
    "previous": {"web": 1.0},
    "ablate": ["math"],
}


def _spec(**kw) -> RoundSpec:
    return RoundSpec.model_validate(ROUND | kw)


def test_round_mix_and_ablation_give_the_share_back_to_the_anchor():
    s = _spec()
    assert s.mix() == {"code": 0.2, "math": 0.3, "web": 0.5}
    assert s.mix(without="math") == {"code": 0.2, "web": 0.8}
    two = _spec(anchor={"web": 0.5, "books": 0.5})
    assert two.mix(without="code") == {"books": 0.35, "math": 0.3, "web": 0.35}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"anchor_share": 0.6}, "sources: anchor_share (0.6) plus"),
        (
            {"budgets": {"math+code": 0.4}},
            "budgets.math+code: the mix gives these sources 0.5 > 0.4",
        ),
        ({"budgets": {"math+books": 0.4}}, "budgets.math+books: 'books' is not a source"),
        ({"ablate": ["web"]}, "ablate[0]: 'web' is not one of the round's sources"),
        ({"sources": {"web": 0.5}}, "sources.web: is an anchor source"),
        ({"previous": {"web": 0.5, "math": 0.3, "code": 0.2}}, "previous: equals the round's mix"),
        ({"sources": {"math": 0.5}, "ablate": ["math"]}, "ablate[0]: leaving 'math' out gives"),
    ],
)
def test_round_constraints_are_one_line_errors(change, where):
    with pytest.raises(MidtrainError, match="^" + where.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):  # fmt: skip
        check_round(_spec(**change))


def test_round_compiles_to_a_study_with_previous_as_control(tmp_path):
    from midtrain.study.plan import arm_list, arm_mix

    data = ROUND | {
        "checkpoint": str(tmp_path), "tokens": 4096,
        "stores": {"web": "w", "math": "m", "code": "c"},
        "max_repetition": {"math": 3.0}, "merge_seeds": True,
    }  # fmt: skip
    spec, cfg = round_study(data, base_dir=tmp_path)
    arms = {a: (c, f) for a, c, f in arm_list(cfg)}
    assert list(arms) == ["control", "r1@1", "r1-no-math@1"]
    mix = {m.source: (m.ratio, m.max_repetition) for m in arm_mix(cfg, *arms["r1@1"])}
    assert mix == {"code": (0.2, 1.0), "math": (0.3, 3.0), "web": (0.5, 1.0)}
    assert {m.source: m.ratio for m in arm_mix(cfg, *arms["control"])} == {"web": 1.0}
    assert cfg.merge_seeds == ["r1@1"]
    with pytest.raises(MidtrainError, match="base: is set by the round"):
        round_study(data | {"base": {"web": 1.0}}, base_dir=tmp_path)


def test_round_file_errors_leave_no_history(tmp_path, capsys):
    bad = tmp_path / "round.toml"
    bad.write_text('name = "r1"\nanchor = {web = 1.0}\nanchor_share = 0.5\nsources = {math = 0.3}\n'
                   'previous = {web = 1.0}\ncheckpoint = "x"\ntokens = 10\nstores = {}\n')  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(["integrate", "run", str(bad), "--out", str(tmp_path / "hist")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: sources: anchor_share (0.5)"), err
    assert not (tmp_path / "hist").exists()


def test_anchor_share_below_the_minimum_is_refused_unless_no_anchor():
    with pytest.raises(MidtrainError, match=r"^anchor_share: 0.2 is below the minimum anchor "
                       r"share 0.3 \(.*\); raise it .*, or set no_anchor = true"):  # fmt: skip
        check_round(_spec(anchor_share=0.2, sources={"math": 0.5, "code": 0.3}))
    free = _spec(anchor_share=0.0, sources={"math": 0.5, "code": 0.5}, no_anchor=True)
    check_round(free)
    assert free.mix() == {"code": 0.5, "math": 0.5}  # no zero-share anchor source in the mix


def _guarded_round(tmp_path, **kw) -> tuple:  # noqa: ANN003
    data = ROUND | {
        "checkpoint": str(tmp_path), "tokens": 4096,
        "stores": {"web": "w", "math": "m", "code": "c"},
        "eval": {"tasks": ["t1", "t2", "t3"]},
    } | kw  # fmt: skip
    return round_study(data, base_dir=tmp_path)


def test_round_guards_base_domains_and_untargeted_tasks_and_user_guards_override(tmp_path):
    spec, cfg = _guarded_round(tmp_path, targets=["t1"],
                               guards=[{"task": "t2", "tolerance": 0.05}])  # fmt: skip
    got = {(g.domain or g.task): g.tolerance for g in cfg.guards}
    # web: the anchor (base) domain; t3: not targeted; t2: the user's tolerance; t1: targeted
    assert got == {"t2": 0.05, "web": DOMAIN_TOLERANCE, "t3": TASK_TOLERANCE}, got
    assert all(c.targets == ["t1"] for c in cfg.candidates)
    _, cfg = _guarded_round(tmp_path, guards=[{"domain": "web", "tolerance": 0.1}])
    got = {(g.domain or g.task): g.tolerance for g in cfg.guards}
    assert got == {"web": 0.1, "t1": 0.01, "t2": 0.01, "t3": 0.01}, got  # no targets: all tasks
    _, cfg = _guarded_round(tmp_path, eval={"tasks": ["t1"], "domains": ["math"]})
    assert [(g.domain, g.task) for g in cfg.guards] == [(None, "t1")]  # web is not scored
    with pytest.raises(MidtrainError, match=r"^targets\[0\]: 'nope' is not in eval.tasks"):
        _guarded_round(tmp_path, targets=["nope"])


def _propose(study, out, *extra) -> list:  # noqa: ANN001
    return ["integrate", "propose", str(study), "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--anchor-share", "0"], "error: --anchor-share 0: below the minimum anchor share 0.3"),
        (["--anchor-share", "0.2"], "error: --anchor-share 0.2: below the minimum anchor share"),
        (["--tokens-scale", "0"], "error: --tokens-scale 0: must be a number > 0"),
        (["--tokens-scale", "2", "--tokens", "9000"], "error: --tokens-scale: --tokens is given"),
    ],
)
def test_propose_bad_anchor_or_scale_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys,
                                                                          extra, line):  # fmt: skip
    from test_optimize import BIG, _fake_study

    study = _fake_study(tmp_path, BIG)
    out = tmp_path / "round.toml"
    before = sorted(tmp_path.rglob("*"))
    assert main_code(_propose(study, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert sorted(tmp_path.rglob("*")) == before


def test_propose_no_anchor_tokens_scale_and_targets(tmp_path, capsys):
    from test_optimize import BIG, _fake_study

    from midtrain.integrate.config import load_round
    from midtrain.io import atomic_write_json, read_json

    study = _fake_study(tmp_path, BIG)
    meta = read_json(study / "study.json")
    meta["config"]["candidates"][0]["targets"] = ["t1"]  # code aims at t1
    atomic_write_json(study / "study.json", meta)
    out = tmp_path / "round.toml"
    assert main_code(_propose(study, out, "--anchor-share", "0", "--no-anchor",
                              "--tokens-scale", "10")) == 0  # fmt: skip
    spec, cfg = load_round(out)
    assert spec.no_anchor and spec.anchor_share < 1e-5  # three shares of 1/3, rounded down
    assert cfg.tokens == 10 * 4096 and "10 x the study's 4,096" in out.read_text()
    assert spec.targets == ["t1"] and [g.domain for g in cfg.guards] == ["web"]  # t1 aimed at
    assert (
        "Automatic guards" in out.read_text()
        and "automatic guards: none" in capsys.readouterr().out
    )


@pytest.mark.slow
def test_rounds_end_to_end(world, tmp_path):  # noqa: F811 - the fixture
    from midtrain.integrate.report import load_history
    from midtrain.integrate.run import RoundResult

    path = study_file(
        world,
        tmp_path,
        CANDS,
        seeds=(0, 1, 2),  # task-items@0.5: 2 df alone
        extra="[analysis]\nallow_task_regression = true",
    )  # math: world_facts falls
    path.write_text("merge_seeds = true\n" + path.read_text())
    _with_shards(world, path)
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "study")]) == 0
    study = tmp_path / "study"
    assert {m.arm for m in _results(study).merges} == {"control", "null@0.3", "task-items@0.5",
                                                        "math@0.3"}  # fmt: skip
    # propose: the winners (task-items and math), web as the anchor at 0.5
    r1 = tmp_path / "round1.toml"
    args = ["integrate", "propose", str(study), "--out", str(r1), "--anchor-share", "0.5",
            "--ablate", "taskitems", "--merge-seeds"]  # fmt: skip
    assert main_code(args) == 0
    text = r1.read_text()
    assert "taskitems = 0.25" in text and "math = 0.25" in text, text  # both winners, equal shares
    assert 'previous_name = "base"' in text and "anchor_share = 0.5" in text, text
    hist = tmp_path / "hist"
    assert main_code(["integrate", "run", str(r1), "--out", str(hist)]) == 0
    rec = RoundResult.load(hist / "round-1" / "round.json")
    assert rec.mix == {"math": 0.25, "taskitems": 0.25, "web": 0.5}
    # the control (base mix, same tokens and seeds) was reused from the study: same files
    ctl = sorted((hist / "round-1" / "runs").glob("control-s0-*"))[0]
    src = sorted((study / "runs").glob("control-s0-*"))[0]
    assert os.stat(ctl / "final" / "model.safetensors").st_ino == os.stat(
        src / "final" / "model.safetensors").st_ino  # fmt: skip
    assert rec.primary is not None and rec.primary.ci[0] > 0, rec.primary  # the items help
    (ab,) = rec.ablations  # same seeds in every group: the contrast is the difference of deltas
    assert ab.source == "taskitems" and ab.vs_previous is not None, ab
    assert ab.contribution == pytest.approx(rec.primary.delta - ab.vs_previous.delta, abs=1e-9)
    assert ab.ci[0] < ab.contribution < ab.ci[1]
    assert (
        rec.merge is not None and rec.merge.status == "done" and len(rec.merge.per_seed_delta) == 3
    )
    # round 2 keeps round 1's sources and beats its mix: its control is round 1's arm, reused
    r2 = tmp_path / "round2.toml"
    assert main_code(["integrate", "propose", str(study), "--history", str(hist), "--out", str(r2),
                      "--anchor-share", "0.6", "--name", "r2"]) == 0  # fmt: skip
    assert main_code(["integrate", "run", str(r2), "--out", str(hist)]) == 0
    r2_control = sorted((hist / "r2" / "runs").glob("control-s0-*"))[0]
    r1_arm = sorted((hist / "round-1" / "runs").glob("round-1-1-s0-*"))[0]
    assert os.stat(r2_control / "final" / "model.safetensors").st_ino == os.stat(
        r1_arm / "final" / "model.safetensors").st_ino  # fmt: skip
    rounds = load_history(hist)
    assert [r.name for r in rounds] == ["round-1", "r2"] and rounds[1].previous == rec.mix
    assert (hist / "rounds.md").is_file() and (hist / "rounds.png").is_file()
    assert "− taskitems" in (hist / "rounds.md").read_text()


def main_code(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _results(study):
    from midtrain.study.results import StudyResult

    return StudyResult.load(study / "results.json")
