"""Presets: each published protocol written as a study for a user's checkpoint and stores, dry-run
(every input check, the plan), its arms as the protocol says, and bad input as one line. The end-to-
end runs on the quick demo world are in test_preset_demos.py."""

from __future__ import annotations

import json
import tomllib

import pytest
from test_config_docs import _tiny_checkpoint
from test_integrate import main_code

from midtrain.study.presets import PRESETS

ROLES = ("web", "flan", "hq", "math", "code", "qa")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's checkpoint, six stores named after the roles, one SFT set."""
    from _data_fixtures import make_docs, train_tiny_tokenizer

    from midtrain.data.prepare import prepare_source
    from midtrain.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("presets")
    tok = load_tokenizer(train_tiny_tokenizer(root / "tok"))
    for i, name in enumerate(ROLES):
        src = root / f"{name}.txt"
        src.write_text("\n".join(make_docs(60, seed=i)))
        prepare_source(name, [src], root / "data" / name, tok, heldout_fraction=0.0)
    ckpt = _tiny_checkpoint(root, tok)
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n"
                           for i in range(40)))  # fmt: skip
    early = _tiny_checkpoint(root / "early", tok)
    return {"root": root, "ckpt": ckpt, "sft": sft, "early": early}


def _init(user, tmp_path, preset, *extra, stores=ROLES) -> tuple[int, str]:
    out = tmp_path / f"{preset}.toml"
    args = ["study", "init", str(user["ckpt"]), "--preset", preset, "--out", str(out),
            "--base", "web", "--tokens", "4096", "--start-lr", "3e-4"]  # fmt: skip
    for s in stores:
        args += ["--store", f"{s}={user['root'] / 'data' / s}"]
    return main_code([*args, *extra]), out


def _arms(path) -> dict[str, tuple[dict, list, bool]]:
    data = tomllib.loads(path.read_text())
    return {c["name"]: (c["mix"], c["fractions"], c.get("continued_pretraining", False))
            for c in data["candidates"]}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_writes_a_study_that_dry_runs(user, tmp_path, preset):
    extra = ["--sft", f"chat={user['sft']}"] if PRESETS[preset].sft else []
    if preset == "liu2025":
        extra += ["--start", str(user["early"])]
    code, path = _init(user, tmp_path, preset, *extra)
    assert code == 0, path
    text = path.read_text()
    assert text.startswith(f"# midtrain preset {preset}: ") and "# Source: " in text
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert not (tmp_path / "run" / "results.json").exists()  # a dry run runs nothing


def test_presets_follow_their_protocols(user, tmp_path):
    sft = ["--sft", f"chat={user['sft']}"]
    marin = _arms(_init(user, tmp_path, "marin")[1])
    assert marin["flan"][1] == [0.3] and marin["flan+hq"] == (
        {"flan": 0.5, "hq": 0.5},
        [0.3],
        False,
    )
    assert set(marin) == {"flan", "hq", "math", "code", "qa", "flan+hq"}  # 70/30, 70/15/15
    olmo2 = tomllib.loads(_init(user, tmp_path, "olmo2")[1].read_text())
    assert olmo2["seeds"] == [0, 1, 2] and olmo2["merge_seeds"] is True
    assert {tuple(c["fractions"]) for c in olmo2["candidates"]} == {(0.5,)}
    olmo3 = tomllib.loads(_init(user, tmp_path, "olmo3", *sft)[1].read_text())
    assert {tuple(c["fractions"]) for c in olmo3["candidates"]} == {(0.5,)} and olmo3["sft_probe"]
    liu = _arms(_init(user, tmp_path, "liu2025", *sft, "--start", str(user["early"]))[1])
    assert {n: f for n, (_, f, _) in liu.items()} == {
        "flan": [0.1, 0.3, 0.5, 0.8],
        "hq": [0.2],
        "math": [0.12],
        "code": [0.2],
        "qa": [0.2],
    }
    assert all(cpt for _, _, cpt in liu.values())  # each against continued pretraining
    llama = _arms(_init(user, tmp_path, "llama3")[1])
    assert llama == {"hq": ({"hq": 1.0}, [0.3], False)}
    data = tomllib.loads((tmp_path / "llama3.toml").read_text())
    assert data["schedule"] == {"name": "linear", "final_lr_fraction": 0.0, "start_lr": 3e-4}


@pytest.mark.parametrize(
    ("preset", "extra", "stores", "message"),
    [
        ("nope", [], ROLES, "error: --preset 'nope': unknown; use one of marin, olmo2"),
        ("llama3", [], ("web", "math"), "error: --preset llama3: needs a hq store"),
        ("olmo3", [], ROLES, "error: --preset olmo3: the protocol has an SFT probe"),
        ("marin", ["--role", "flan=nope"], ROLES, "error: --role[0]: store 'nope' is not one"),
        ("marin", ["--start", "x"], ROLES, "error: --start[0]"),
    ],
)
def test_preset_bad_input_is_one_line_and_writes_nothing(user, tmp_path, capsys, preset, extra,
                                                         stores, message):  # fmt: skip
    capsys.readouterr()
    code, out = _init(user, tmp_path, preset, *extra, stores=stores)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()
