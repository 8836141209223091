"""Token-unigram similarity: the formulas on hand-computed vectors, seeded sampling, mixtures,
the CLI (errors and an end-to-end run on tiny stores) and a study's proximity table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import make_docs, train_tiny_tokenizer

from midtrain.cli import main
from midtrain.data.prepare import prepare_source, write_store
from midtrain.data.store import TokenStore
from midtrain.data.tokenizer import load_tokenizer
from midtrain.errors import MidtrainError
from midtrain.similarity import mixture, proximity_advantage, similarity, top_types
from midtrain.stats.proximity import (
    ALL_SETS,
    ProximityRow,
    ProximityTable,
    correlate,
    proximity_table,
)
from midtrain.unigram import Unigram, doc_bounds, raw_unigram, store_unigram


def uni(name: str, counts: list[float], tok: str = "t") -> Unigram:
    return Unigram(name, np.asarray(counts), tok, name)


# ------------------------------------------------------------------------------------------------
# Formulas


def test_identical_sets_score_one_and_disjoint_sets_the_floor():
    same = similarity(uni("a", [1, 2, 3, 0]), uni("b", [2, 4, 6, 0]))
    assert (same.cosine, same.jaccard, same.js, same.score) == pytest.approx((1, 1, 0, 1))
    assert same.k == 3  # the type no set uses is not compared
    apart = similarity(uni("a", [1, 1, 0, 0]), uni("b", [0, 0, 1, 1]))
    assert (apart.cosine, apart.jaccard, apart.js) == pytest.approx((0, 0, 1))
    assert apart.score == pytest.approx(0.3 / 2)  # 0.4 * 0 + 0.3 * 0 + 0.3 / (1 + 1)


def test_hand_computed_overlap():
    # p = (.5, .5, 0), q = (.5, 0, .5): cos = .25 / .5 = .5; Jaccard = |{0}| / |{0,1,2}| = 1/3;
    # M = (.5, .25, .25): KL(p||M) = .5 log2(.5/.5) + .5 log2(.5/.25) = .5 = KL(q||M), JS = .5
    s = similarity(uni("p", [1, 1, 0]), uni("q", [3, 0, 3]))
    assert s.cosine == pytest.approx(0.5)
    assert s.jaccard == pytest.approx(1 / 3)
    assert s.js == pytest.approx(0.5)
    assert s.score == pytest.approx(0.4 * 0.5 + 0.3 / 3 + 0.3 / 1.5)  # = 0.5


def test_top_k_ranks_by_the_sum_of_normalised_frequencies():
    p, q = np.array([0.5, 0.3, 0.2, 0.0]), np.array([0.1, 0.1, 0.1, 0.7])
    assert top_types(p, q, 2).tolist() == [0, 3]  # p + q = (.6, .4, .3, .7)
    assert top_types(np.array([0.5, 0.5]), np.array([0.5, 0.5]), 1).tolist() == [0]  # tie: low id
    # on types {0, 3}: p -> (1, 0), q -> (.125, .875); both use type 0, only q type 3
    s = similarity(p, q, top_k=2)
    assert s.k == 2 and s.jaccard == pytest.approx(0.5)
    assert s.cosine == pytest.approx(0.125 / np.hypot(0.125, 0.875))
    with pytest.raises(MidtrainError, match="--top-k 0"):
        similarity(p, q, top_k=0)


def test_mixture_is_the_ratio_weighted_average_of_normalised_distributions():
    a, b = uni("a", [1, 3, 0, 0]), uni("b", [0, 0, 10, 30])  # sizes differ: weights do not
    m = mixture({"a": a, "b": b}, {"a": 0.25, "b": 0.75}, "m")
    assert m.probs == pytest.approx(0.25 * a.probs + 0.75 * b.probs)
    assert proximity_advantage(a, a, b) == 0
    assert proximity_advantage(m, a, b) > 0  # the mix moved towards b
    with pytest.raises(MidtrainError, match="sum to"):
        mixture({"a": a, "b": b}, {"a": 0.5, "b": 0.6}, "m")
    with pytest.raises(MidtrainError, match="tokenizer"):
        mixture({"a": a, "c": uni("c", [1, 1, 1, 1], tok="other")}, {"a": 0.5, "c": 0.5}, "m")


# ------------------------------------------------------------------------------------------------
# Documents and sampling


def test_doc_bounds_split_on_eos_and_keep_a_trailing_run():
    start, end = doc_bounds(np.array([5, 6, 0, 0, 7, 0, 8, 9]), eos_id=0)
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == [(0, 2), (3, 3), (4, 5), (6, 8)]


def numbered_store(root: Path, name: str, n_docs: int, tok_hash: str = "t") -> TokenStore:
    """Document i is the token i + 1 repeated i + 1 times, then EOS (0): a count names its doc."""
    ids = np.concatenate([np.append(np.full(i + 1, i + 1), 0) for i in range(n_docs)])
    return write_store(root / name, name, [ids], vocab_size=n_docs + 1, eos_id=0,
                       tokenizer_hash=tok_hash)  # fmt: skip


def test_sampling_is_deterministic_in_the_seed(tmp_path):
    store = numbered_store(tmp_path, "s", 60)
    a, b = store_unigram(store, "s", docs=10, seed=0), store_unigram(store, "s", docs=10, seed=0)
    c = store_unigram(store, "s", docs=10, seed=1)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.doc_ids, b.doc_ids)
    assert not np.array_equal(a.doc_ids, c.doc_ids)
    assert a.n_docs == 10 and a.n_available == 60 and a.counts[0] == 0  # EOS is not counted
    picked = np.flatnonzero(a.counts)  # token i + 1 appears i + 1 times, once per sampled doc
    assert np.array_equal(picked - 1, a.doc_ids) and np.array_equal(a.counts[picked], picked)
    whole = store_unigram(store, "s", docs=1000)
    assert whole.n_docs == 60 and whole.n_tokens == sum(range(1, 61))


# ------------------------------------------------------------------------------------------------
# The paper's mode, against numbers computed here without the library

PAPER_CORPUS = {  # token ids 1-9 (EOS is 0); two documents longer than 512 tokens
    "a": [[1] * 600 + [2] * 100, [2, 3, 3, 4], [5, 1, 1]],
    "b": [[3, 4, 4, 6, 7], [7] * 520 + [8] * 30],
    "t": [[1, 2, 3, 9], [4, 4, 7, 8], [9] * 6],
}


def doc_store(root: Path, name: str, docs: list[list[int]]) -> TokenStore:
    ids = np.concatenate([np.append(np.asarray(d), 0) for d in docs])
    return write_store(root / name, name, [ids], vocab_size=10, eos_id=0, tokenizer_hash="t")


def by_hand(x: list[list[int]], y: list[list[int]], cut: int | None, log) -> tuple:
    """(cosine, Jaccard, JS, score) of two lists of documents, each cut to `cut` tokens: plain
    Python counts, JS = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2 in the `log` given."""
    from collections import Counter

    cx, cy = (Counter(t for d in docs for t in d[:cut]) for docs in (x, y))
    types = sorted(set(cx) | set(cy))
    p = np.array([cx[t] for t in types], float) / sum(cx.values())
    q = np.array([cy[t] for t in types], float) / sum(cy.values())
    m = (p + q) / 2
    js = sum(a * log(a / b) for v in (p, q) for a, b in zip(v, m, strict=True) if a > 0) / 2
    cos = float(p @ q / np.sqrt((p @ p) * (q @ q)))
    jac = sum(cx[t] > 0 and cy[t] > 0 for t in types) / len(types)
    return cos, jac, js, 0.4 * cos + 0.3 * jac + 0.3 / (1 + js)


def test_paper_mode_matches_a_computation_by_hand(tmp_path):
    import math

    c = PAPER_CORPUS
    sets = {n: store_unigram(doc_store(tmp_path, n, d), n, mode="paper") for n, d in c.items()}
    for x, y in (("a", "t"), ("b", "t"), ("a", "b")):
        s = similarity(sets[x], sets[y])
        want = by_hand(c[x], c[y], 512, math.log)  # natural log, first 512 tokens
        assert (s.cosine, s.jaccard, s.js, s.score) == pytest.approx(want, rel=1e-12)
    # a 50/50 mix by documents: as many documents of a as of b (a's 3 twice, b's 2 three times)
    mix = mixture({"a": sets["a"], "b": sets["b"]}, {"a": 0.5, "b": 0.5}, "m")
    want = by_hand(c["a"] * 2 + c["b"] * 3, c["t"], 512, math.log)
    got = similarity(mix, sets["t"])
    assert (got.cosine, got.jaccard, got.js, got.score) == pytest.approx(want, rel=1e-12)
    base = by_hand(c["a"], c["t"], 512, math.log)[3]
    assert proximity_advantage(mix, sets["a"], sets["t"]) == pytest.approx(want[3] - base)
    # the default mode keeps every token, counts JS in bits and mixes by tokens: other numbers
    full = {n: store_unigram(doc_store(tmp_path / "d", n, d), n) for n, d in c.items()}
    assert similarity(full["a"], full["t"]).js == pytest.approx(
        by_hand(c["a"], c["t"], None, math.log2)[2])  # fmt: skip
    assert similarity(full["a"], full["t"]).score != pytest.approx(
        similarity(sets["a"], sets["t"]).score
    )
    tokens = mixture({"a": full["a"], "b": full["b"]}, {"a": 0.5, "b": 0.5}, "m")
    assert tokens.probs == pytest.approx(0.5 * full["a"].probs + 0.5 * full["b"].probs)
    with pytest.raises(MidtrainError, match="counted in mode 'default'"):
        similarity(sets["a"], full["t"])
    apart = similarity(uni("p", [1, 0]), uni("q", [0, 1]), mode="paper")
    assert apart.js == pytest.approx(math.log(2)) and apart.score == pytest.approx(
        0.3 / (1 + math.log(2))
    )


def test_paper_mode_cuts_raw_documents_at_512_tokens(world):
    tok = load_tokenizer(world["tok"])
    text = " ".join(["12 + 34 = 46."] * 400)
    long = world["root"] / "long.jsonl"
    long.write_text(json.dumps({"text": text}) + "\n")
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n > 512
    assert raw_unigram(long, "l", tok, mode="paper").n_tokens == 512
    assert raw_unigram(long, "l", tok).n_tokens == n


def test_the_cli_mode_reaches_every_number(tmp_path, monkeypatch, capsys):
    import math

    c = PAPER_CORPUS
    a, b, t = (doc_store(tmp_path, n, c[n]).path for n in ("a", "b", "t"))
    args = ["similarity", a, b, "--to", t, "--mix", "m=a:0.5,b:0.5", "--base", "a:1.0", "--json"]
    code, out, err = run_cli([*args, "--mode", "paper"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["settings"]["mode"] == "paper"
    assert res["matrix"]["b"]["t"]["js"] == pytest.approx(by_hand(c["b"], c["t"], 512, math.log)[2])
    mixed = by_hand(c["a"] * 2 + c["b"] * 3, c["t"], 512, math.log)[3]
    assert res["proximity"]["m"]["targets"]["t"]["mix_score"] == pytest.approx(mixed)
    code, out, err = run_cli(args[:-1], monkeypatch, capsys)
    assert code == 0, err
    assert "mode paper" not in out and "mode default (JS in bits)" in out


# ------------------------------------------------------------------------------------------------
# CLI


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_a_tokenizer_mismatch_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    a, b = numbered_store(tmp_path, "a", 5, "t1"), numbered_store(tmp_path, "b", 5, "t2")
    png = tmp_path / "m.png"
    code, out, err = run_cli(["similarity", a.path, "--to", b.path, "--plot", png],
                             monkeypatch, capsys)  # fmt: skip
    assert code == 2 and out == "" and not png.exists()
    assert err.count("\n") == 1 and err.startswith("error: b (")
    assert "tokenizer" in err and "; " in err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--mix", "m=a:1.0"], "--mix and --base go together"),
        (["--mix", "m=zz:1.0", "--base", "a:1.0"], "'zz' is not a SOURCE"),
        (["--mix", "m=a:0.5", "--base", "a:1.0"], "sum to 0.5"),
        (["--docs", "0"], "--docs 0"),
        (["--mode", "exact"], "--mode 'exact': unknown; use one of default, paper"),
        (["--plot", "x.pdf"], "not a .png"),
        (["--study", "nowhere"], "--study: takes no SOURCE"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, monkeypatch, capsys, extra, match):
    a = numbered_store(tmp_path, "a", 5)
    code, out, err = run_cli(["similarity", a.path, "--to", a.path, *extra], monkeypatch, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and match in err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny tokenizer, stores `web` (varied prose) and `math` (sums), SFT rows of sums."""
    root = tmp_path_factory.mktemp("simworld")
    tok_dir = train_tiny_tokenizer(root / "tok")
    tok = load_tokenizer(tok_dir)
    rng = np.random.default_rng(0)
    sums = [(int(a), int(b)) for a, b in rng.integers(0, 99, size=(200, 2))]
    (root / "web.jsonl").write_text("".join(json.dumps({"text": d}) + "\n"
                                            for d in make_docs(120, seed=1)))  # fmt: skip
    (root / "math.jsonl").write_text("".join(json.dumps({"text": f"{a} + {b} = {a + b}."}) + "\n"
                                             for a, b in sums[:150]))  # fmt: skip
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": f"{a} + {b}?",
                                                        "response": str(a + b)}) + "\n"
                                            for a, b in sums[150:]))  # fmt: skip
    for name in ("web", "math"):
        prepare_source(name, [root / f"{name}.jsonl"], root / "stores" / name, tok,
                       heldout_fraction=0.0, seed=0, text_field="text")  # fmt: skip
    return {"root": root, "tok": tok_dir, "web": root / "stores" / "web",
            "math": root / "stores" / "math", "sft": root / "sft.jsonl"}  # fmt: skip


def test_end_to_end_on_tiny_stores(world, tmp_path, monkeypatch, capsys):
    png = tmp_path / "heat.png"
    args = ["similarity", world["web"], f"m={world['math']}", "--to", f"sums={world['sft']}",
            "--to", world["web"], "--tokenizer", world["tok"], "--docs", 50, "--json",
            "--plot", png, "--mix", "m30=web:0.7,m:0.3", "--base", "web:1.0"]  # fmt: skip
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert set(res["matrix"]) == {"web", "m"} and set(res["matrix"]["web"]) == {"sums", "web"}
    assert res["matrix"]["web"]["web"]["score"] == pytest.approx(1.0)
    assert res["matrix"]["m"]["sums"]["score"] > res["matrix"]["web"]["sums"]["score"]
    assert res["sets"]["m"]["docs"] == 50 and res["sets"]["sums"]["available_docs"] == 50
    adv = res["proximity"]["m30"]["targets"]
    assert adv["sums"]["advantage"] > 0 > adv["web"]["advantage"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(["similarity", world["web"], "--to", world["sft"]], monkeypatch, capsys)
    assert code == 2 and "pass --tokenizer" in err
    clash = ["similarity", world["web"], "--to", f"web={world['sft']}", "--tokenizer", world["tok"]]
    code, _, err = run_cli(clash, monkeypatch, capsys)
    assert code == 2 and "the name 'web' is taken by SOURCE" in err


def test_raw_files_are_sampled_by_seed_and_sft_rows_rendered(world):
    tok = load_tokenizer(world["tok"])
    web = world["root"] / "web.jsonl"
    a, b = raw_unigram(web, "w", tok, docs=10, seed=0), raw_unigram(web, "w", tok, docs=10, seed=0)
    c = raw_unigram(web, "w", tok, docs=10, seed=1)
    assert np.array_equal(a.counts, b.counts) and a.n_available == 120 and a.n_docs == 10
    assert not np.array_equal(a.doc_ids, c.doc_ids)
    sft = raw_unigram(world["sft"], "s", tok)  # rendered: "Question: {prompt}\nAnswer: {response}"
    question = tok("Question", add_special_tokens=False)["input_ids"][0]
    assert sft.n_docs == 50 and sft.counts[question] >= 50


# ------------------------------------------------------------------------------------------------
# Study integration


def row(arm: str, s: str, adv: float, gain: float | None) -> ProximityRow:
    return ProximityRow(arm, s, {}, 0.3, False, 0.5 + adv, 0.5, adv, gain)


def arms_on(x: list[float], y: list[float], s: str = "x") -> list[ProximityRow]:
    return [row(f"a{i}", s, xi, yi) for i, (xi, yi) in enumerate(zip(x, y, strict=True))]


def test_correlation_over_arms_keeps_arms_whole_and_leaves_out_missing_gains():
    rows = [row(f"a{i}", s, i * k, 2 * i * k) for i in range(5) for k, s in ((1, "x"), (2, "y"))]
    rows.append(row("none", "x", 9.0, None))  # no probe result: left out
    one = correlate(rows, "x", resamples=200)
    assert (one.n_arms, one.n_points) == (5, 5)
    assert one.pearson == pytest.approx(1) and one.spearman == pytest.approx(1)
    pooled = correlate(rows, ALL_SETS, resamples=200)
    assert (pooled.n_arms, pooled.n_points) == (5, 10)
    # the pooled test permutes whole arms (5! orders), not the 10 points (10! orders)
    assert pooled.spearman_p == pytest.approx(2 / 120) and "5 arms (120 orders)" in pooled.p_test
    flat = correlate([row(f"a{i}", "x", 0.1, float(i)) for i in range(4)], "x")
    assert flat.pearson is None and flat.pearson_p is None and flat.resamples == 0  # no spread


def test_three_arms_give_the_points_an_exact_p_and_no_interval():
    # the case of issue 25: 3 arms in perfect order printed Spearman 1.00, p 0, CI [1.00, 1.00]
    c = correlate(arms_on([0.01, 0.02, 0.10], [0.1, 0.3, 0.6]), "x")
    assert c.spearman == pytest.approx(1) and c.pearson == pytest.approx(0.953, abs=1e-3)
    # 3! = 6 orders; only the observed one reaches rho = 1: two-sided p = 2 x 1/6
    assert c.spearman_p == pytest.approx(1 / 3) and c.pearson_p == pytest.approx(1 / 3)
    assert c.pearson_ci is None and c.spearman_ci is None and c.interval is None
    assert c.resamples == 0 and "too few arms for an interval (3 arms, 5 needed)" in c.notes[0]
    four = correlate(arms_on([1, 2, 3, 4], [1, 3, 2, 4]), "x")
    assert four.spearman == pytest.approx(0.8) and four.pearson_ci is None
    # orders of 4 ranks with rho >= 0.8: the identity and the 3 single adjacent swaps
    assert four.spearman_p == pytest.approx(2 * 4 / 24)


def test_permutation_p_matches_scipy_and_is_never_zero():
    from scipy import stats

    rng = np.random.default_rng(3)
    for n in (4, 6):
        x, y = rng.normal(size=n), rng.normal(size=n)
        c = correlate(arms_on(list(x), list(y)), "x")
        for name, f in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
            ref = stats.permutation_test((x,), lambda v, f=f, y=y: f(v, y).statistic,
                                         permutation_type="pairings", n_resamples=np.inf)  # fmt: skip
            assert getattr(c, f"{name}_p") == pytest.approx(ref.pvalue)
    x = np.arange(12.0)
    big = correlate(arms_on(list(x), list(x**2)), "x", seed=1)
    # only the observed order reaches rho = 1: one-sided 1 / (9,999 + 1), two-sided twice that
    assert big.spearman_p == pytest.approx(2 / 10_000)
    assert "9,999 random orders" in big.p_test
    assert correlate(arms_on(list(x), list(x**2)), "x", seed=1).pearson_p == big.pearson_p


def test_intervals_by_number_of_arms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=10)
    y = x + rng.normal(size=10)
    six = correlate(arms_on(list(x[:6]), list(y[:6])), "x")
    assert six.interval == "fisher-z" and six.resamples == 0
    lo, hi = six.pearson_ci
    assert -1 < lo < six.pearson < hi < 1 and hi - lo > 0.5  # wide with 6 arms
    ten = correlate(arms_on(list(x), list(y)), "x", resamples=300)
    assert ten.interval == "bootstrap" and 0 < ten.resamples <= 300
    assert ten.pearson_ci[0] < ten.pearson < ten.pearson_ci[1]
    assert ten.spearman_ci[0] < ten.spearman_ci[1]


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8, 9])
def test_no_degenerate_interval_and_no_zero_p_ever(n):
    x = np.arange(float(n))
    cases = {"perfect": x**3, "reversed": -x, "near": x + 1e-6 * np.sin(x), "noisy": np.sin(3 * x)}
    for what, y in cases.items():
        for rows in (arms_on(list(x), list(y)),
                     arms_on(list(x), list(y)) + arms_on(list(x + 1), list(y - 1), "z")):  # fmt: skip
            for scope in ("x", ALL_SETS):
                c = correlate(rows, scope, resamples=100)
                for ci in (c.pearson_ci, c.spearman_ci):
                    assert ci is None or ci[1] - ci[0] >= 0.01, (what, scope, ci)
                assert c.pearson_p > 0 and c.spearman_p > 0
                if n < 5:
                    assert c.pearson_ci is None and c.spearman_ci is None
                elif what == "noisy":
                    assert c.pearson_ci is not None and c.spearman_ci is not None
    perfect = correlate(arms_on(list(x), list(x**3)), "x", resamples=200)
    assert perfect.spearman_ci is None  # every resample (or Fisher z) gives rho = 1
    assert n < 5 or any("spearman: no interval" in note for note in perfect.notes)


def test_arms_on_different_sets_get_no_p_value():
    rows = arms_on([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) + [row("a0", "y", 0.3, 0.2)]
    pooled = correlate(rows, ALL_SETS)
    assert pooled.pearson is not None and pooled.pearson_p is None and pooled.spearman_p is None
    assert "different sets" in pooled.notes[0]


def fake_study(world: dict[str, Path], out: Path) -> Path:
    """study.json + results.json of a study with a probe on `sums` (gains chosen by the test)."""
    from midtrain.mix.spec import MixComponent
    from midtrain.study import results as R
    from midtrain.study.config import parse_study

    cfg = parse_study({
        "checkpoint": str(world["tok"]), "stores": {"web": str(world["web"]),
        "math": str(world["math"])}, "base": {"web": 1.0}, "tokens": 4096,
        "candidates": [{"name": "math", "mix": {"math": 1.0}, "fractions": [0.1, 0.3, 0.6]}],
        "sft_probe": {"sets": [{"name": "sums", "train": str(world["sft"])}]},
    })  # fmt: skip
    cost = R.Cost(runs=1, tokens=1, flops=1.0, wall_s=1.0, share_of_full_run=None)
    arms = [
        R.ArmResult(verdict="include", reason="", name=f"math@{f}", arm=f"math@{f}",
                    mix=[MixComponent(source="web", ratio=1 - f), MixComponent(source="math", ratio=f)],
                    candidate_mix={"math": 1.0}, fraction=f, seeds=[0], runs=[], checkpoints=[],
                    cost=cost, probe=R.ArmProbe(sets={"sums": R.SftSetDelta(
                        delta_val_loss=-f, ci=[-f - 0.1, -f + 0.1], n_examples=5)}))
        for f in (0.1, 0.3, 0.6)
    ]  # fmt: skip
    res = R.StudyResult(
        study="fake", arms=arms, confidence=0.95, study_flags=[], start=R.StartPoint(),
        control=R.ControlResult(seeds=[0], runs=[], noise_floor=None, scores={}, domains={},
                                cost=cost),
        eval=R.EvalInfo(include_path=None, tasks=[], domains=[], primary_metric="acc", limit=None,
                        num_fewshot=0),
        probe=R.ProbeInfo(sets=["sums"], lrs=[1e-4], epochs=1, seeds=None, tasks=False, domains=[],
                          decide_on="base"),
    )  # fmt: skip
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"config": cfg.model_dump(mode="json")}))
    res.save(out / "results.json")
    return out


def test_study_proximity_table(world, tmp_path, monkeypatch, capsys):
    study = fake_study(world, tmp_path / "study")
    table = proximity_table(study, docs=50, resamples=100)
    assert [r.arm for r in table.rows] == ["math@0.1", "math@0.3", "math@0.6"]
    adv = [r.advantage for r in table.rows]
    assert 0 < adv[0] < adv[1] < adv[2]  # more math, closer to the sums
    assert [r.sft_gain for r in table.rows] == pytest.approx([0.1, 0.3, 0.6])
    assert table.rows[0].sft_gain_ci == pytest.approx([0.0, 0.2])
    pooled = table.correlations[0]
    assert pooled.scope == ALL_SETS and pooled.n_arms == 3 and pooled.spearman == pytest.approx(1)
    assert set(table.matrix) == {"web", "math"} and "sums" in table.matrix["web"]
    png = tmp_path / "scatter.png"
    args = ["similarity", "--study", study, "--json", "--docs", 50, "--plot", png]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert png.read_bytes()[:4] == b"\x89PNG"
    back = ProximityTable.from_dict(json.loads(out))
    assert back.rows[2].advantage == pytest.approx(adv[2]) and back.correlations[0].n_arms == 3
    assert back.correlations[0].spearman_p == pytest.approx(1 / 3)
    code, out, err = run_cli(["similarity", "--study", study, "--docs", 50], monkeypatch, capsys)
    assert code == 0, err
    assert "too few arms" in out and "0.333" in out and "[+1.00, +1.00]" not in out
    assert "math@0.6" in out  # the points, printed


def test_study_report_says_too_few_arms(world, tmp_path):
    from midtrain.report import write_report
    from midtrain.stats.proximity import load_study_dir

    cfg, res = load_study_dir(fake_study(world, tmp_path / "study"))
    paths = write_report(res, cfg, tmp_path / "study")
    for text in (paths["md"].read_text(), paths["html"].read_text()):
        part = text[text.index("Proximity and SFT gain") :]
        assert "too few arms" in part and "0.333" in part and "1.00, +1.00" not in part
        assert "| 0 |" not in part and ">0<" not in part
    saved = json.loads((tmp_path / "study" / "proximity.json").read_text())
    assert (
        saved["format"] == "midtrain-proximity/2" and saved["correlations"][0]["pearson_ci"] is None
    )
