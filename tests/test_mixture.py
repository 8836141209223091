"""Mixture sampler: exact ratios, seeded order, resume = uninterrupted, no whole-source reads."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from _data_fixtures import decode_row, synthetic_store
from rich.console import Console

from midtrain.data.store import TokenStore
from midtrain.errors import MidtrainError
from midtrain.mix import MixComponent, MixtureSampler, allocate, validate_mix

SEQ = 8
NAMES = ["web", "hq", "flan", "math", "code"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    sizes = [400, 300, 120, 90, 60]  # windows per source
    return {
        n: synthetic_store(root, n, i, w, SEQ)
        for i, (n, w) in enumerate(zip(NAMES, sizes, strict=True))
    }


def mix_of(ratios: dict[str, float], rep: float = 10.0) -> list[MixComponent]:
    return [MixComponent(source=s, ratio=r, max_repetition=rep) for s, r in ratios.items()]


def sources_of(x: np.ndarray) -> list[str]:
    return [NAMES[decode_row(r)[0]] for r in x]


def test_allocate_is_largest_remainder():
    assert allocate([0.5, 0.3, 0.2], 7) == [4, 2, 1]  # quotas 3.5 2.1 1.4: the .5 wins
    assert allocate([1 / 3] * 3, 10) == [4, 3, 3]  # tie: the earlier entry wins
    assert allocate([0.0, 1.0], 5) == [0, 5]


@pytest.mark.parametrize(
    "ratios",
    [
        {"web": 0.5, "hq": 0.5},
        {"web": 0.7, "hq": 0.3},
        {"web": 0.7, "hq": 0.15, "flan": 0.15},
        {"web": 1 / 3, "hq": 1 / 3, "math": 1 / 3},
        {"web": 0.123457, "hq": 0.876543},
        {"web": 0.01, "hq": 0.29, "flan": 0.3, "math": 0.25, "code": 0.15},
        {"web": 0.6, "hq": 0.4, "code": 0.0},
    ],
)
@pytest.mark.parametrize("total", [997, 1000])
def test_exact_ratios_over_the_budget(stores, ratios, total):
    s = MixtureSampler(stores, mix_of(ratios), SEQ, total, seed=3)
    got = Counter(sources_of(s.sequences(0, total)))
    assert sum(got.values()) == total
    for src, r in ratios.items():
        assert abs(got[src] * SEQ - r * total * SEQ) < SEQ  # within one sequence of tokens
        row = next(p for p in s.plan() if p.source == src)
        assert row.sequences == got[src]
    # the ratio holds along the run too: every prefix is within a few sequences of its share
    labels = np.array(sources_of(s.sequences(0, total)))
    for src, r in ratios.items():
        run = np.cumsum(labels == src)
        assert np.max(np.abs(run - r * np.arange(1, total + 1))) <= len(ratios) + 1


def test_each_window_once_per_epoch_and_repetition_spreads_evenly(stores):
    s = MixtureSampler(stores, mix_of({"flan": 0.5, "math": 0.5}, rep=2.0), SEQ, 300, seed=0)
    uses = Counter(decode_row(r) for r in s.sequences(0, 300))
    flan = [uses[(2, w)] for w in range(120)]
    assert sum(flan) == 150 and set(flan) == {1, 2}  # 1.25 epochs: every window once, some twice
    math_ = [uses[(3, w)] for w in range(90)]
    assert sum(math_) == 150 and set(math_) == {1, 2}


def test_order_is_a_function_of_the_seed(stores):
    ratios = {"web": 0.8, "hq": 0.1, "flan": 0.1}  # web: exactly one epoch of its 400 windows
    a = MixtureSampler(stores, mix_of(ratios), SEQ, 500, seed=7).sequences(0, 500)
    b = MixtureSampler(stores, mix_of(ratios), SEQ, 500, seed=7).sequences(0, 500)
    c = MixtureSampler(stores, mix_of(ratios), SEQ, 500, seed=8).sequences(0, 500)
    assert np.array_equal(a, b)
    assert sources_of(a) != sources_of(c)  # source order differs
    wa = [decode_row(r) for r in a if decode_row(r)[0] == 0]
    wc = [decode_row(r) for r in c if decode_row(r)[0] == 0]
    assert wa != wc and sorted(wa) == sorted(wc)  # same windows, another order
    listed_reversed = MixtureSampler(stores, mix_of(dict(reversed(ratios.items()))), SEQ, 500, 7)
    assert np.array_equal(listed_reversed.sequences(0, 500), a)  # list order does not matter


def test_resume_equals_uninterrupted(stores, tmp_path):
    ratios = {"web": 0.4, "hq": 0.3, "code": 0.3}
    batch, total = 4, 400  # code needs 120 sequences from 60 windows: 2 epochs
    full = MixtureSampler(stores, mix_of(ratios, rep=2.0), SEQ, total, seed=11)
    first = [full.sequences(b * batch, batch) for b in range(40)]
    uninterrupted = [full.sequences(b * batch, batch) for b in range(40, 48)]
    # "restart": reopen the stores and rebuild the sampler; the saved state is the position only
    state = json.loads(json.dumps({"position": 40 * batch}))
    reopened = {n: TokenStore.open(st.path) for n, st in stores.items()}
    resumed = MixtureSampler(reopened, mix_of(ratios, rep=2.0), SEQ, total, seed=11)
    for b in range(8):
        got = resumed.sequences(state["position"] + b * batch, batch)
        assert np.array_equal(got, uninterrupted[b])
    # batch size does not change the stream either
    assert np.array_equal(np.concatenate(first), full.sequences(0, 40 * batch))


def test_fingerprint_tracks_config(stores):
    base = MixtureSampler(stores, mix_of({"web": 0.5, "hq": 0.5}), SEQ, 100, seed=0)
    same = MixtureSampler(stores, mix_of({"web": 0.5, "hq": 0.5}), SEQ, 100, seed=0)
    assert base.fingerprint() == same.fingerprint()
    for other in (
        MixtureSampler(stores, mix_of({"web": 0.5, "hq": 0.5}), SEQ, 100, seed=1),
        MixtureSampler(stores, mix_of({"web": 0.6, "hq": 0.4}), SEQ, 100, seed=0),
        MixtureSampler(stores, mix_of({"web": 0.5, "hq": 0.5}), SEQ, 101, seed=0),
    ):
        assert other.fingerprint() != base.fingerprint()


def test_token_table_shows_requested_available_and_epochs(stores):
    s = MixtureSampler(stores, mix_of({"web": 0.5, "code": 0.5}, rep=3.0), SEQ, 160, seed=0)
    console = Console(record=True, width=120)
    console.print(s.token_table())
    text = console.export_text()
    assert "code" in text and "web" in text
    code = next(r for r in s.plan() if r.source == "code")
    assert code.tokens_requested == 80 * SEQ and code.tokens_available == 60 * SEQ
    assert f"{80 / 60:.3f}" in text


def test_never_loads_a_whole_source(tmp_path):
    """A 1 GiB (sparse) source: building and sampling stay far below its size in RAM."""
    seq = 4096
    small = synthetic_store(tmp_path, "big", 0, 4, seq)
    man = json.loads((small.path / "manifest.json").read_text())
    n_tokens = 1 << 29  # 1 GiB of uint16
    with open(small.path / "train.bin", "r+b") as f:
        f.truncate(n_tokens * 2)
    man["train"]["n_tokens"] = n_tokens
    (small.path / "manifest.json").write_text(json.dumps(man))
    store = TokenStore.open(small.path)
    tracemalloc.start()
    s = MixtureSampler({"big": store}, mix_of({"big": 1.0}), seq, 1000, seed=0)
    x = s.sequences(500, 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.shape == (64, seq)
    assert isinstance(store.train_tokens(), np.memmap)
    assert peak < 16 << 20  # the source is 1 GiB


def test_mix_errors_name_the_field(stores):
    names = set(stores)
    cases = {
        "mix[1].ratio": [{"source": "web", "ratio": 1.2}, {"source": "hq", "ratio": -0.2}],
        "mix[*].ratio": [{"source": "web", "ratio": 0.5}, {"source": "hq", "ratio": 0.4}],
        "mix[0].source": [{"source": "nope", "ratio": 1.0}],
        "mix[1].source": [{"source": "web", "ratio": 0.5}, {"source": "web", "ratio": 0.5}],
        "mix[0].max_repetition": [{"source": "web", "ratio": 1.0, "max_repetition": 0.5}],
        "mix[0].weight": [{"source": "web", "ratio": 1.0, "weight": 2}],
    }
    for field, mix in cases.items():
        with pytest.raises(MidtrainError) as e:
            validate_mix(mix, names)
        assert str(e.value).startswith(field) and "\n" not in str(e.value)
    assert validate_mix([{"source": "web", "ratio": 1 - 5e-7}], names)[0].ratio < 1


def test_source_too_small_unless_repetition_covers_it(stores):
    with pytest.raises(MidtrainError, match=r"mix\[1\]\.max_repetition.*'code'"):
        MixtureSampler(stores, mix_of({"web": 0.5, "code": 0.5}, rep=1.0), SEQ, 200, seed=0)
    ok = MixtureSampler(stores, mix_of({"web": 0.5, "code": 0.5}, rep=2.0), SEQ, 200, seed=0)
    assert next(r for r in ok.plan() if r.source == "code").epochs == pytest.approx(100 / 60)


def test_empty_source_and_tokenizer_mismatch(stores, tmp_path):
    tiny = synthetic_store(tmp_path, "tiny", 0, 0, SEQ)  # only a half-window tail
    with pytest.raises(MidtrainError, match=r"mix\[1\]\.source.*'tiny'.*less than one sequence"):
        MixtureSampler({**stores, "tiny": tiny}, mix_of({"web": 0.9, "tiny": 0.1}), SEQ, 10, 0)
    other = synthetic_store(tmp_path, "other", 1, 50, SEQ, tokenizer_hash="different")
    with pytest.raises(MidtrainError, match=r"mix\[1\]\.source.*another tokenizer"):
        MixtureSampler({**stores, "other": other}, mix_of({"web": 0.5, "other": 0.5}), SEQ, 10, 0)


def test_shards_are_disjoint_whole_documents_covering_the_store(tmp_path):
    from midtrain.data.prepare import shard_store, write_store

    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 500, size=int(rng.integers(3, 40))) for _ in range(101)]
    flat = np.concatenate([np.append(d, 0) for d in docs])
    store = write_store(tmp_path / "web", "web", [flat[:700], flat[700:]], vocab_size=512,
                        eos_id=0, tokenizer_hash="t")  # fmt: skip
    shards = shard_store(store, 3, tmp_path / "shards")
    assert [s.name for s in shards] == ["web-shard0", "web-shard1", "web-shard2"]
    assert [s.n_train_docs for s in shards] == [34, 34, 33]
    got = [
        tuple(d)
        for s in shards
        for d in np.split(s.train_tokens(), np.flatnonzero(s.train_tokens() == 0) + 1)
        if len(d)
    ]
    assert sorted(got) == sorted(tuple(np.append(d, 0)) for d in docs)  # each document once
    assert all(s.tokenizer_hash == "t" and s.eos_id == 0 for s in shards)
    assert len({s.content_hash for s in shards}) == 3
    with pytest.raises(MidtrainError, match="cannot make 200 shards"):
        shard_store(store, 200, tmp_path / "many")


# -- paired streams (common random numbers) --------------------------------------------------------


def paired(stores, base, arm, total=1000, seed=5):
    control = MixtureSampler(stores, mix_of(base), SEQ, total, seed=seed)
    run = MixtureSampler(stores, mix_of(arm), SEQ, total, seed=seed, pair_base=base)
    return control, run


@pytest.mark.parametrize(
    ("base", "arm"),
    [
        ({"web": 1.0}, {"web": 0.7, "math": 0.3}),
        ({"web": 0.6, "hq": 0.4}, {"web": 0.42, "hq": 0.28, "math": 0.15, "code": 0.15}),
        ({"web": 0.6, "hq": 0.4}, {"web": 0.8, "hq": 0.2}),  # more web than the control has
        ({"web": 1.0}, {"hq": 1.0}),  # nothing shared
    ],
)
def test_paired_run_shares_the_controls_stream(stores, base, arm):
    """Wherever the run draws a base source it has the control's very row at the same step; every
    source gets exactly its largest-remainder count; the other sources fill the freed steps."""
    control, run = paired(stores, base, arm)
    x, c = run.sequences(0, 1000), control.sequences(0, 1000)
    src = np.array(run.sources_at(0, 1000))
    counts = Counter(src.tolist())
    assert [counts[m.source] for m in run.components] == allocate(
        [m.ratio for m in run.components], 1000
    )
    assert sources_of(x) == src.tolist()
    for name in base:
        shared = min(counts[name], Counter(control.sources_at(0, 1000))[name])
        same = (src == name) & (x == c).all(axis=1)
        assert same.sum() == shared  # every kept base row sits where the control has it


def test_paired_arms_of_one_fraction_give_way_at_the_same_steps(stores):
    base = {"web": 0.6, "hq": 0.4}
    _, a = paired(stores, base, {"web": 0.42, "hq": 0.28, "math": 0.3})
    _, b = paired(stores, base, {"web": 0.42, "hq": 0.28, "code": 0.15, "flan": 0.15})
    sa, sb = np.array(a.sources_at(0, 1000)), np.array(b.sources_at(0, 1000))
    base_a, base_b = np.isin(sa, list(base)), np.isin(sb, list(base))
    assert (base_a == base_b).all()
    assert (a.sequences(0, 1000)[base_a] == b.sequences(0, 1000)[base_b]).all()


def test_paired_candidate_is_spread_over_the_run(stores):
    _, run = paired(stores, {"web": 1.0}, {"web": 0.7, "math": 0.3}, total=2000)
    is_math = np.array(run.sources_at(0, 2000)) == "math"
    prefix = np.cumsum(is_math) / np.arange(1, 2001)
    assert np.abs(prefix[99:] - 0.3).max() < 0.02  # every prefix of >= 100 holds the ratio


def test_paired_stream_has_its_own_fingerprint_and_is_resumable(stores):
    control, run = paired(stores, {"web": 1.0}, {"web": 0.7, "math": 0.3})
    plain = MixtureSampler(stores, mix_of({"web": 0.7, "math": 0.3}), SEQ, 1000, seed=5)
    assert run.fingerprint() != plain.fingerprint()
    assert (run.sequences(0, 1000)[400:460] == run.sequences(400, 60)).all()
    assert not (run.sequences(0, 1000) == plain.sequences(0, 1000)).all()


def test_paired_cap_is_checked_against_the_controls_draw(stores):
    with pytest.raises(MidtrainError, match="pair_base: the paired control"):
        MixtureSampler(
            stores, mix_of({"math": 0.6, "hq": 0.4}, rep=1.0), SEQ, 150, seed=0,
            pair_base={"math": 1.0},
        )  # fmt: skip
