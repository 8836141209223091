"""`midtrain bench eval` and `midtrain bench prepare` on tiny inputs: the JSON they print, and
that both sides of each ratio processed the same examples / tokens (what makes it like for like)."""

from __future__ import annotations

import sys

import pytest

from midtrain.cli import main
from midtrain.errors import MidtrainError


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["eval", "--rounds", "0"], ["eval", "--limit", "0"], ["prepare", "--copies", "1"],
     ["prepare", "--scale", "0"]],
)  # fmt: skip
def test_bad_options_are_one_error_line(argv, monkeypatch, capsys):
    code, err = run_cli(["bench", *argv], monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert argv[1] in lines[0]


def test_prepare_counts_the_same_tokens_on_both_sides(tmp_path):
    from midtrain.bench.prepare import run_bench

    res = run_bench(scale=0.02, rounds=1, copies=2, workdir=tmp_path)
    tokens = res["tokens"]
    assert set(tokens) == {"ours", "encode_batch", "encode_batch_fast"}
    assert len(set(tokens.values())) == 1 and tokens["ours"] > 1000
    tps = res["tokens_per_s"]
    assert res["ratio"] == pytest.approx(tps["ours"] / tps["encode_batch"], rel=1e-2)
    assert res["meets_target"] == (res["ratio"] >= 0.9) and res["documents"] > 100
    assert res["input_bytes"]["x2"] == 2 * res["input_bytes"]["x1"]
    rss = res["peak_rss_mib"]
    assert set(rss) == {"imports_and_tokenizer", "x1", "x2"} and all(v > 50 for v in rss.values())
    grew = res["prepare_rss_growth_mib"]
    assert set(grew) == set(rss) and all(0 <= v < 200 for v in grew.values())
    assert res["rss_growth"] == pytest.approx(rss["x2"] / rss["x1"], rel=1e-2)
    assert all(len(v) == 1 for v in res["rounds"].values())
    assert not any(tmp_path.iterdir())  # its temporary folder is gone


def test_prepare_fails_when_the_sides_count_different_tokens(tmp_path, monkeypatch):
    from midtrain.bench import prepare as bench

    real = bench._reference
    monkeypatch.setattr(bench, "_reference", lambda tok, docs, m: real(tok, docs[1:], m))
    with pytest.raises(MidtrainError, match="different tokens"):
        bench.run_bench(scale=0.02, rounds=1, rss=False, workdir=tmp_path)


def test_the_eval_reference_runs_lm_eval_as_installed():
    import lm_eval.evaluator

    from midtrain.eval import lmeval

    lmeval._patch()  # what building our first TaskManager does
    ours = lm_eval.evaluator.add_env_info
    with lmeval.unpatched():
        theirs = lm_eval.evaluator.add_env_info
        assert theirs is not ours and theirs.__module__.startswith("lm_eval")
    assert lm_eval.evaluator.add_env_info is ours


@pytest.mark.slow
def test_eval_scores_the_same_examples_on_both_sides(tmp_path):
    from midtrain.bench.evalspeed import TASKS, run_bench

    res = run_bench(limit=3, batch=4, rounds=1, scale=0.05, threads=1, workdir=tmp_path)
    assert res["examples"]["ours"] == res["examples"]["lm_eval"] == dict.fromkeys(TASKS, 3)
    assert res["examples_total"] == 9
    eps = res["examples_per_s"]
    assert eps["ours"] > 0 and eps["lm_eval"] > 0
    assert res["ratio"] == pytest.approx(eps["ours"] / eps["lm_eval"], rel=1e-2)
    assert res["config"]["batch_size"] == 4 and res["config"]["threads"] == 1
    assert not any(tmp_path.iterdir())
