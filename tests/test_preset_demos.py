"""Every preset end to end on the quick demo world (`midtrain demo --quick --preset NAME`).

Marked `presets`: `make test` leaves them out to stay fast; `.ci/run` runs them after it
(`make test-presets`). One cache for all: the quick base is pretrained once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.presets]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("preset-cache")


def _demo(preset: str, out, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MIDTRAIN_CACHE=str(cache))
    return subprocess.run(
        [sys.executable, "-m", "midtrain.cli", "demo", "--quick", "--preset", preset, "--out",
         str(out)], env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip


@pytest.mark.parametrize("preset", ["llama3", "marin", "olmo2", "olmo3", "liu2025"])
def test_preset_runs_on_the_demo_world(preset, cache, tmp_path):
    out = tmp_path / preset
    proc = _demo(preset, out, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / f"{preset}.toml").read_text().startswith(f"# midtrain preset {preset}: ")
    if preset == "liu2025":  # the timing grid: two starts, code at four weights, each with @cpt
        grid = json.loads((out / "study" / "grid.json").read_text())
        assert len(grid["starts"]) == 2
        code = {(c["start"], c["fraction"]) for c in grid["cells"] if c["candidate"] == "code"}
        assert {f for _, f in code} == {0.1, 0.3, 0.5, 0.8, None}
        assert all(c["sft"] is not None for c in grid["cells"])  # the SFT probe in every cell
        assert "timing x weight" in proc.stdout
        return
    res = json.loads((out / "study" / "results.json").read_text())
    fracs = {a["fraction"] for a in res["arms"]}
    assert fracs == ({0.5} if preset in ("olmo2", "olmo3") else {0.3}), fracs
    assert all(a["verdict"] != "failed" for a in res["arms"])
    if preset == "olmo2":  # three seeds; the final mix's merged, no other arm's
        assert res["control"]["seeds"] == [0, 1, 2]
        assert [(m["arm"], m["status"]) for m in res["merges"]] == [("final-mix@0.5", "done")]
    if preset == "olmo3":  # SFT probe, then the integration round with its merge
        assert res["probe"] is not None
        rnd = json.loads((out / "rounds" / "round-1" / "round.json").read_text())
        # the anchor takes a third, or more where a winner's repetition cap binds (said in the file)
        assert rnd["anchor"] == {"web": 1.0} and rnd["anchor_share"] >= 0.33 - 1e-6
        assert rnd["merge"]["status"] == "done" and rnd["primary"] is not None
        study = json.loads((out / "study" / "study.json").read_text())["config"]
        assert rnd["tokens"] == 10 * study["tokens"]  # Olmo 3: rounds at ~10x the microanneals
    if preset == "marin":
        assert "flan+hq@0.3" in {a["arm"] for a in res["arms"]}
