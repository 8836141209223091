"""Schedule values: every registered shape at its endpoints and midpoint, warmup, and errors."""

from __future__ import annotations

import math

import pytest

from midtrain.errors import MidtrainError
from midtrain.train.schedules import SCHEDULES, make_schedule, resolve_final_lr

START, FINAL, N = 1e-3, 1e-4, 10

# lr at progress 0.5 (step 5 of 10) for start 1e-3, final 1e-4: the formulas, computed by hand.
MIDPOINT = {
    "constant": 1e-3,
    "linear": 1e-4 + 9e-4 * 0.5,
    "cosine": 1e-4 + 9e-4 * 0.5,  # (1 + cos(pi/2)) / 2 = 0.5
    "1-sqrt": 1e-4 + 9e-4 * (1 - math.sqrt(0.5)),
    "exp": 1e-3 * 0.1**0.5,
}


def test_every_registered_shape_is_covered():
    assert set(SCHEDULES) == set(MIDPOINT)


@pytest.mark.parametrize("name", sorted(MIDPOINT))
def test_endpoints_and_midpoint(name):
    s = make_schedule(name, START, FINAL if name != "constant" else START, N)
    assert s.lr_at(0) == pytest.approx(START, rel=1e-12)  # first step trains at the start LR
    end = START if name == "constant" else FINAL
    assert s.lr_at(N) == pytest.approx(end, rel=1e-12)  # the run ends exactly at the final LR
    assert s.lr_at(5) == pytest.approx(MIDPOINT[name], rel=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine", "1-sqrt", "exp"])
def test_decays_monotonically(name):
    s = make_schedule(name, START, FINAL, N)
    lrs = [s.lr_at(i) for i in range(N + 1)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_shapes_differ_where_they_should():
    """1-sqrt drops fastest early; cosine stays highest early; all equal at the ends."""
    at = {n: make_schedule(n, START, FINAL, N).lr_at(1) for n in ("linear", "cosine", "1-sqrt")}
    assert at["1-sqrt"] < at["linear"] < at["cosine"]


def test_one_sqrt_matches_hagele_factor():
    s = make_schedule("1-sqrt", 1.0, 0.0, 100)
    for step in (0, 25, 64, 100):
        assert s.lr_at(step) == pytest.approx(1 - math.sqrt(step / 100), abs=1e-12)


def test_warmup_then_decay():
    s = make_schedule("linear", 1.0, 0.0, 14, warmup_steps=4)
    assert [s.lr_at(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.lr_at(4) == 1.0  # decay starts at the start LR after warmup
    assert s.lr_at(9) == pytest.approx(0.5)
    assert s.lr_at(14) == 0.0


def test_constant_with_warmup_holds_the_lr():
    s = make_schedule("constant", 3e-3, 3e-3, 50, warmup_steps=10)
    assert s.lr_at(0) == pytest.approx(3e-4)
    assert {s.lr_at(i) for i in range(9, 51)} == {3e-3}


def test_final_lr_resolution():
    assert resolve_final_lr("linear", 1e-3, None, None) == 0.0
    assert resolve_final_lr("linear", 1e-3, None, 0.1) == pytest.approx(1e-4)
    assert resolve_final_lr("cosine", 1e-3, 2e-5, None) == 2e-5
    assert resolve_final_lr("exp", 1e-3, None, None) == pytest.approx(1e-5)  # default 1%
    assert resolve_final_lr("constant", 1e-3, None, None) == 1e-3


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: resolve_final_lr("exp", 1e-3, 0.0, None), "schedule.final_lr"),
        (lambda: resolve_final_lr("exp", 1e-3, None, 0.0), "schedule.final_lr"),
        (lambda: resolve_final_lr("linear", 1e-3, 1e-4, 0.1), "schedule"),
        (lambda: make_schedule("wsd", 1e-3, 0.0, 10), "schedule.name"),
        (lambda: make_schedule("linear", 0.0, 0.0, 10), "schedule.start_lr"),
        (lambda: make_schedule("linear", 1e-3, 0.0, 10, warmup_steps=11), "warmup_steps"),
    ],
)
def test_errors_name_the_field(call, field):
    with pytest.raises(MidtrainError, match=field):
        call()
