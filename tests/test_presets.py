"""Presets: each published protocol written as a study for a user's checkpoint and stores, dry-run
(every input check, the plan), its arms as the protocol says, and bad input as one line. The end-to-
end runs on the quick demo world are in test_preset_demos.py."""

from __future__ import annotations

import json
import tomllib

import pytest
from test_config_docs import _tiny_checkpoint
from test_integrate import main_code

from midtrain.design.presets import PRESETS, protocol_tokens
from midtrain.integrate.guards import DOMAIN_TOLERANCE

ROLES = ("web", "flan", "hq", "math", "code", "qa")
TOKENS = 6000  # what each preset's share of full_run_tokens() comes to: one step, within the stores


def full_run_tokens(preset: str) -> int:
    """A full run whose protocol share is about TOKENS anneal tokens."""
    return round(TOKENS / PRESETS[preset].scale.share)


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


def _init(user, tmp_path, preset, *extra, stores=ROLES, base="web", full=True) -> tuple[int, str]:
    out = tmp_path / f"{preset}.toml"
    args = ["study", "init", str(user["ckpt"]), "--preset", preset, "--out", str(out),
            "--base", base, "--start-lr", "3e-4"]  # fmt: skip
    args += (
        ["--full-run-tokens", str(full_run_tokens(preset))] if full and preset in PRESETS else []
    )
    for s in stores:
        args += ["--store", f"{s}={user['root'] / 'data' / s}"]
    return main_code([*args, *extra]), out


def _said(capsys) -> str:
    """What was printed, its lines joined (rich wraps long lines at the console's width)."""
    return " ".join(capsys.readouterr().out.split())


def _arms(path) -> dict[str, tuple[dict, list, bool]]:
    data = tomllib.loads(path.read_text())
    return {c["name"]: (c["mix"], c["fractions"], c.get("continued_pretraining", False))
            for c in data["candidates"]}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_writes_a_study_that_dry_runs(user, tmp_path, capsys, preset):
    """Its tokens are the protocol's share of --full-run-tokens, it writes full_run_tokens and a
    guard on the base domain, and its dry run shows all three."""
    extra = ["--sft", f"chat={user['sft']}"] if PRESETS[preset].sft else []
    if preset == "liu2025":
        extra += ["--start", str(user["early"])]
    code, path = _init(user, tmp_path, preset, *extra)
    assert code == 0, path
    text = path.read_text()
    assert text.startswith(f"# midtrain preset {preset}: ") and "# Source: " in text
    data, full = tomllib.loads(text), full_run_tokens(preset)
    assert data["full_run_tokens"] == full and data["tokens"] == protocol_tokens(preset, full)
    assert abs(data["tokens"] / full - PRESETS[preset].scale.share) < 1e-4
    assert data["guards"] == [{"domain": "web", "tolerance": DOMAIN_TOLERANCE}]
    assert "# checkpoint_tokens = ..." in text  # the checkpoint has no midtrain_state
    capsys.readouterr()
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    shown = _said(capsys)
    steps = data["tokens"] // data.get("batch_tokens", 4096)  # the table shows whole steps
    assert f"{steps * 4096:,}" in shown and "guards: domain web <= +0.02" in shown, shown
    if steps * 4096 != data["tokens"]:
        assert f"tokens: {data['tokens']:,} asked; a run trains whole optimizer steps" in shown
    assert "checkpoint: the tokens it has seen are unknown" in shown
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
    assert olmo2["seeds"] == [0, 1, 2] and olmo2["merge_seeds"] == ["final-mix@0.5"]
    assert {tuple(c["fractions"]) for c in olmo2["candidates"]} == {(0.5,)}
    final = olmo2["candidates"][-1]["mix"]  # every candidate together, 50/50 with web
    assert set(final) == {"flan", "hq", "math", "code", "qa"} and set(final.values()) == {0.2}
    olmo3 = tomllib.loads(_init(user, tmp_path, "olmo3", *sft)[1].read_text())
    assert {tuple(c["fractions"]) for c in olmo3["candidates"]} == {(0.5,)} and olmo3["sft_probe"]
    liu = _arms(_init(user, tmp_path, "liu2025", *sft, "--start", str(user["early"]))[1])
    assert {n: f for n, (_, f, _) in liu.items()} == {  # the weight grid: code by default
        "flan": [0.05],
        "hq": [0.2],
        "math": [0.12],
        "code": [0.1, 0.3, 0.5, 0.8],
        "qa": [0.2],
    }
    assert all(cpt for _, _, cpt in liu.values())  # each against continued pretraining
    llama = _arms(_init(user, tmp_path, "llama3")[1])
    assert llama == {"hq": ({"hq": 1.0}, [0.3], False)}
    data = tomllib.loads((tmp_path / "llama3.toml").read_text())
    assert data["schedule"] == {"name": "linear", "final_lr_fraction": 0.0, "start_lr": 3e-4}


def test_liu2025_grid_role_default_code_and_chosen(user, tmp_path):
    sft, start = ["--sft", f"chat={user['sft']}"], ["--start", str(user["early"])]
    code, path = _init(user, tmp_path, "liu2025", *sft, *start)
    assert code == 0
    text = path.read_text()
    assert _arms(path)["code"][1] == [0.1, 0.3, 0.5, 0.8]
    assert tomllib.loads(text)["starts_mode"] == "cooldown"  # no midtrain_state: seen unknown
    assert "# Starts: the checkpoint, --start " in text and 'starts_mode = "to_end"' in text
    path.unlink()
    code, path = _init(user, tmp_path, "liu2025", *sft, *start, "--grid-role", "math")
    grids = {n for n, (_, f, _) in _arms(path).items() if len(f) == 4}
    assert code == 0 and grids == {"math"}


def _with_state(src, dst, seen: int):
    import shutil

    from midtrain.train.checkpoint import STATE_DIR, TrainerState

    shutil.copytree(src, dst)
    (dst / STATE_DIR).mkdir()
    (dst / STATE_DIR / "trainer.json").write_text(
        TrainerState(lr=3e-4, tokens_seen=seen).model_dump_json()
    )
    return dst


def test_liu2025_starts_run_to_the_end_when_every_start_knows_its_place(user, tmp_path, capsys):
    """Checkpoint and start with midtrain_state: starts_mode = "to_end" (each start trains the
    rest of the run); a start with no step left before the end is one line, nothing written."""
    full = full_run_tokens("liu2025")
    me = dict(user, ckpt=_with_state(user["ckpt"], tmp_path / "ckpt", full - 5000))
    early = _with_state(user["early"], tmp_path / "early", 2000)
    code, path = _init(me, tmp_path, "liu2025", "--sft", f"chat={user['sft']}", "--start",
                       str(early))  # fmt: skip
    assert code == 0
    data = tomllib.loads(path.read_text())
    assert data["starts_mode"] == "to_end" and data["full_run_tokens"] == full
    assert 'subtracted (starts_mode = "to_end", as the paper ran them)' in path.read_text()
    late = _with_state(user["early"], tmp_path / "late", full - 100)
    path.unlink()
    capsys.readouterr()
    code, path = _init(me, tmp_path, "liu2025", "--sft", f"chat={user['sft']}", "--start",
                       str(late))  # fmt: skip
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err.startswith("error: --start[0]: ") and "no step before" in err, err
    assert not path.exists()


@pytest.mark.parametrize(
    ("extra", "stores", "message"),
    [
        (["--grid-role", "code"], ROLES, "error: --grid-role code: the weight grid comes with"),
        (["--start", "EARLY", "--grid-role", "nope"], ROLES, "error: --grid-role nope: not a role"),
        (["--start", "EARLY"], ("web", "flan", "math"), "error: --grid-role code: no store plays"),
    ],
)
def test_liu2025_grid_role_bad_input(user, tmp_path, capsys, extra, stores, message):
    extra = [str(user["early"]) if x == "EARLY" else x for x in extra]
    capsys.readouterr()
    code, out = _init(user, tmp_path, "liu2025", "--sft", f"chat={user['sft']}", *extra,
                      stores=stores)  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


@pytest.mark.parametrize(
    ("preset", "extra", "stores", "message"),
    [
        ("nope", [], ROLES, "error: --preset 'nope': unknown; use one of marin, olmo2"),
        ("llama3", [], ("web", "math"), "error: --preset llama3: needs a hq store"),
        ("olmo3", [], ROLES, "error: --preset olmo3: the protocol has an SFT probe"),
        ("marin", ["--role", "flan=nope"], ROLES, "error: --role[0]: store 'nope' is not one"),
        ("marin", ["--start", "x"], ROLES, "error: --start[0]"),
        ("marin", ["--no-full"], ROLES, "error: --full-run-tokens: required with --preset; give"),
        ("marin", ["--base", "web:0.7,qa"], ROLES, "error: --base web:0.7,qa: some stores have"),
        ("marin", ["--base", "web:0.7,qa:0.2"], ROLES, "error: --base web:0.7,qa:0.2: ratios sum"),
        ("marin", ["--base", "web,nope"], ROLES, "error: --base web,nope: 'nope' is not one of"),
        ("marin", ["--role", "flan=web"], ROLES, "error: --role[0]: store 'web' is in the base"),
        ("llama3", ["--tokens", "0"], ROLES, "error: --tokens 0: must be > 0"),
    ],
)
def test_preset_bad_input_is_one_line_and_writes_nothing(user, tmp_path, capsys, preset, extra,
                                                         stores, message):  # fmt: skip
    capsys.readouterr()
    full = "--no-full" not in extra
    extra = [x for x in extra if x != "--no-full"]
    code, out = _init(user, tmp_path, preset, *extra, stores=stores, full=full)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()


def test_several_base_stores_make_a_base_mix_and_each_is_guarded(user, tmp_path, capsys):
    """--base NAME:RATIO,... is the base mix as given; NAME,NAME shares by the stores' tokens;
    either way every base store is guarded and none is a candidate."""
    code, path = _init(user, tmp_path, "olmo3", "--sft", f"chat={user['sft']}",
                       base="web:0.7,qa:0.3")  # fmt: skip
    data = tomllib.loads(path.read_text())
    assert code == 0 and data["base"] == {"web": 0.7, "qa": 0.3}
    assert [g["domain"] for g in data["guards"]] == ["web", "qa"]
    assert "qa" not in {c["name"] for c in data["candidates"]}
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "guards: domain web <= +0.02, domain qa <= +0.02" in _said(capsys)
    path.write_text("checkpoint_tokens = 1000\n" + path.read_text())  # what the header asks for
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert "(0%; checkpoint-too-early, the least is 50%)" in _said(capsys)
    from midtrain.driver.collect import _study_flags
    from midtrain.study.config import load_study

    assert _study_flags(load_study(path)) == ["checkpoint-too-early"]  # the flag can fire
    from midtrain.data.store import TokenStore

    sizes = {n: TokenStore.open(user["root"] / "data" / n).n_train_tokens for n in ("web", "qa")}
    path.unlink()
    assert _init(user, tmp_path, "marin", base="web,qa")[0] == 0
    base = tomllib.loads((tmp_path / "marin.toml").read_text())["base"]
    assert base == pytest.approx({n: v / sum(sizes.values()) for n, v in sizes.items()})


@pytest.mark.parametrize("preset", ["olmo2", "olmo3"])
def test_the_next_step_is_a_complete_command(user, tmp_path, capsys, preset):
    """The file's `# Then:` line is the command the CLI prints, with the study's folder filled in
    and the protocol's token scale (olmo3: --tokens-scale 10); its options parse."""
    import shlex

    capsys.readouterr()
    sft = ["--sft", f"chat={user['sft']}"] if preset == "olmo3" else []
    code, path = _init(user, tmp_path, preset, *sft)
    printed = capsys.readouterr().out
    then = next(x for x in path.read_text().splitlines() if x.startswith("# Then: "))[8:]
    scale = {"olmo2": "--tokens-scale 5", "olmo3": "--tokens-scale 10 --merge-seeds"}[preset]
    assert code == 0 and "".join(f"`{then}`".split()) in "".join(printed.split())
    assert scale in then
    folder = str(path.with_suffix(""))
    assert then.startswith(f"midtrain integrate propose {folder} --out {folder}-")
    assert main_code(shlex.split(then)[1:]) == 2  # the study has not run yet:
    assert "not a finished study" in capsys.readouterr().err  # every option was understood


def test_liu2025_midtrains_to_the_end_of_the_run():
    """From a checkpoint that knows its place, liu2025 takes the rest of the run; the other
    protocols (and liu2025 without it) their published share."""
    assert protocol_tokens("liu2025", 1000, seen=700) == 300
    assert protocol_tokens("liu2025", 61_035) == 21_035
    assert protocol_tokens("llama3", 15 * 10**12, seen=7 * 10**12) == 40 * 10**9
    assert protocol_tokens("olmo2", 4 * 10**12) == 10 * 10**9
    assert protocol_tokens("marin", 12_750 * 10**9) == 50 * 10**9


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_demo_builds_each_preset_as_a_valid_study(tmp_path, preset):
    """`midtrain demo --preset` (not run here): its study is the preset's, with the demo's own
    tokens and its full run, and parses as a study whose merges name its arms."""
    from types import SimpleNamespace

    from midtrain.demo.pipeline import QUICK
    from midtrain.demo.presets import DEMO_ROLES, preset_demo_study
    from midtrain.design.preset_file import preset_text
    from midtrain.study.config import parse_study
    from midtrain.study.plan import arm_list

    names = ("web", "flan", "hq", "math", "code")
    ctx = {"stores": {n: SimpleNamespace(path=tmp_path / "stores" / n) for n in names},
           "world": {"tasks": ["world_facts"]}, "world_dir": tmp_path / "world"}  # fmt: skip
    starts = [str(tmp_path / "early")] if preset == "liu2025" else []
    study = preset_demo_study(preset, ctx, tmp_path / "base", QUICK, tmp_path, True, starts)
    path = tmp_path / f"{preset}.toml"
    cfg = parse_study(tomllib.loads(preset_text(preset, study, path, DEMO_ROLES)), source="demo")
    assert (cfg.tokens, cfg.full_run_tokens) == (QUICK.anneal_tokens, QUICK.full_run_tokens)
    assert [g.domain for g in cfg.guards] == ["web"]
    arms = [a for a, _, _ in arm_list(cfg)]
    assert cfg.merge_seeds is False or set(cfg.merge_seeds) <= set(arms) - {"control"}


def test_the_starter_takes_full_run_tokens_and_a_base_of_several_stores(user, tmp_path):
    """Without --preset: --full-run-tokens is optional and written; --base keeps every store."""
    out = tmp_path / "starter.toml"
    args = ["study", "init", str(user["ckpt"]), "--out", str(out), "--base", "web:0.6,hq:0.4",
            "--full-run-tokens", "10000000", "--start-lr", "3e-4"]  # fmt: skip
    for s in ("web", "hq", "math"):
        args += ["--store", f"{s}={user['root'] / 'data' / s}"]
    assert main_code(args) == 0
    data = tomllib.loads(out.read_text())
    assert data["full_run_tokens"] == 10_000_000 and data["base"] == {"web": 0.6, "hq": 0.4}
    assert [c["name"] for c in data["candidates"]] == ["math"] and data["seeds"] == [0, 1, 2]
