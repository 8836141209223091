"""`midtrain study export`: every run's mix and schedule in Megatron-LM and OLMo-core terms,
checked against the packages' own code.

megatron-core 0.19.2 (Python >= 3.12) and ai2-olmo-core 3.0.0 (pins rich < 14, filelock < 4) do
not install into this project's CI environment. Where they load (tests/_megatron.py; olmo_core
importable) the tests parse and build with them directly; elsewhere they use what the packages
said once about the same export (tests/fixtures/exports, scripts/make_export_fixtures.py), after
checking that the export is still byte-identical to the one those files were made from.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from _export_study import SHAPES, build_study, rooted
from _megatron import data_path, megatron_datasets, megatron_lrs, megatron_scheduler

from midtrain.study.export import load_runs, render
from midtrain.train.schedules import make_schedule

FIX = Path(__file__).parent / "fixtures" / "exports"
MEGATRON = json.loads((FIX / "megatron_checked.json").read_text())
OLMO = json.loads((FIX / "olmo_core_checked.json").read_text())
SHARES = {  # arm -> token share per source: (1 - f) x {web 0.8, code 0.2} + f x math
    "control": {"code": 0.2, "web": 0.8},
    "math@0.3": {"code": 0.14, "math": 0.3, "web": 0.56},
    "math@0.5": {"code": 0.1, "math": 0.5, "web": 0.4},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study").resolve()
    build_study(root)
    return root


def test_export_is_the_one_checked_with_the_real_packages(root):
    _, runs = load_runs(root / "study.toml")
    assert [r.name for r in runs] == [f"{a}/s{s}" for a in SHARES for s in (0, 1)]
    for fmt, name in (("megatron", "study.megatron.txt"), ("olmo-core", "study.olmo-core.json")):
        assert rooted(render(runs, fmt, "study.toml"), root) == (FIX / name).read_text(), fmt


def test_megatron_data_path_is_token_shares_of_the_stores(root, monkeypatch, capsys):
    code, out, err = run_cli(["study", "export", root / "study.toml", "--format", "megatron"],
                             monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    found = megatron_datasets()  # megatron-core's own parser, else what it said (fixture)
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    names = [
        x[2:] for x in out.splitlines() if x.startswith("# ") and "/s" in x and " " not in x[2:]
    ]
    assert len(lines) == 6 and names == [f"{a}/s{s}" for a in SHARES for s in (0, 1)]
    for name, line in zip(names, lines, strict=True):
        if found is not None:
            prefixes, weights = found[1].get_blend_from_list(data_path(shlex.split(line)))
        else:
            blend = MEGATRON["blends"][rooted(line, root)]
            prefixes = [p.replace("/ROOT", str(root)) for p in blend["prefixes"]]
            weights = blend["weights"]
        want = SHARES[name.split("/")[0]]
        assert prefixes == [str(root / "stores" / s / "train") for s in want]
        assert weights == list(want.values())  # exact: the token shares, not rounded
        assert math.isclose(sum(weights), 1.0)
        assert all(Path(p + ".bin").is_file() for p in prefixes)
        assert f"--seed {name[-1]} " in line


@pytest.mark.parametrize(("shape", "warmup"), SHAPES)
def test_megatron_schedule_gives_midtrains_lr_at_every_step(shape, warmup, tmp_path):
    study = build_study(tmp_path / "s", shape, warmup)
    _, runs = load_runs(study)
    line = render(runs[:1], "megatron", "study.toml").splitlines()
    args = shlex.split(line[-1])
    sched = megatron_scheduler()
    if sched is not None:
        theirs = megatron_lrs(sched, args)
    else:
        recorded = MEGATRON["lr"][f"{shape}/{warmup}"]
        assert recorded["args"] == rooted(line[-1], tmp_path / "s")
        theirs = recorded["lr"]
    s = runs[0].schedule
    ours = [make_schedule(shape, s.start_lr, s.final_lr, s.steps, warmup).lr_at(i)
            for i in range(s.steps)]  # fmt: skip
    assert len(theirs) == s.steps == 64
    if shape == "exp":  # Megatron has no geometric decay: different curve, and the export says so
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) > 1e-5
        assert any("the curves differ" in x for x in line if x.startswith("# note:"))
        return
    assert np.allclose(ours[warmup:], theirs[warmup:], rtol=1e-12, atol=0)
    assert np.allclose(ours[:warmup], theirs[1 : warmup + 1], rtol=1e-12, atol=0)  # one step on
    assert any("one step later" in x for x in line) == (warmup > 0)


def test_olmo_core_config_is_built_by_olmo_core(root, monkeypatch, capsys):
    code, out, err = run_cli(["study", "export", root / "study.toml", "--format", "olmo-core"],
                             monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    exported = json.loads(out)
    try:
        from olmo_core.data.source_mixture import SourceMixtureDatasetConfig
    except Exception:  # not installable here: what OLMo-core 3.0.0 said of the same export
        SourceMixtureDatasetConfig = None
    for run in exported:
        mix = run["source_mixture_config"]
        if SourceMixtureDatasetConfig is not None:
            cfg = SourceMixtureDatasetConfig.from_dict(mix)
            cfg.validate()  # ratios sum to 1, caps >= 1, paths given
            as_dict = cfg.as_config_dict()
            built = cfg.build(npdtype=np.uint16, sequence_length=run["sequence_length"])
            tokens = {s.name: sum(p.tokens for p in s.path_tokens) for s in built.sources}
        else:
            recorded = OLMO["runs"][run["run"]]
            as_dict = json.loads(json.dumps(recorded["as_config_dict"]).replace("/ROOT", str(root)))
            tokens = recorded["built_tokens"]
        assert as_dict == mix  # our dict is exactly what OLMo-core writes for its config
        want = SHARES[run["run"].split("/")[0]]
        assert {s["source_name"]: s["target_ratio"] for s in mix["source_list"]["sources"]} == want
        assert sum(tokens.values()) == 65536  # requested tokens, whole 64-token instances
        for src, share in want.items():  # each within one instance of its share
            assert abs(tokens[src] - share * 65536) < 64, (run["run"], src)
        assert run["sequence_length"] == 64 and run["dtype"] == "uint16"
        assert run["midtrain_schedule"]["batch_sequences"] == 16


@pytest.mark.parametrize(("shape", "warmup"), SHAPES)
def test_olmo_core_scheduler_gives_midtrains_lr_at_every_step(shape, warmup, tmp_path):
    _, runs = load_runs(build_study(tmp_path / "s", shape, warmup))
    run = json.loads(render(runs[:1], "olmo-core", "study.toml"))[0]
    s = runs[0].schedule
    recorded = OLMO["lr"][f"{shape}/{warmup}"]
    try:
        from olmo_core.optim.scheduler import Scheduler
    except Exception:  # not installable here: what OLMo-core 3.0.0 said of the same export
        Scheduler = None
    if run["scheduler"] is None:  # no such decay in OLMo-core: null, and the export says so
        assert shape in ("1-sqrt", "exp") and recorded["scheduler"] is None
        assert "no scheduler with midtrain's" in run["notes"][0]
        return
    if Scheduler is not None:
        sched = Scheduler.from_dict(run["scheduler"])
        assert sched.as_config_dict() == run["scheduler"]
        # OLMo-core's trainer raises global_step before each batch: its step k = 1..max_steps
        theirs = [float(sched.get_lr(s.start_lr, k, run["max_steps"])) for k in range(1, 65)]
    else:
        assert recorded["scheduler"] == run["scheduler"]
        theirs = recorded["lr"]
    ours = [make_schedule(shape, s.start_lr, s.final_lr, s.steps, warmup).lr_at(i)
            for i in range(s.steps)]  # fmt: skip
    exact_from = warmup if shape in ("linear", "cosine") else 0
    assert np.allclose(ours[exact_from:], theirs[exact_from:], rtol=1e-12, atol=0)
    if exact_from:  # OLMo-core's warmup is one step longer, and the export says so
        assert not np.allclose(ours[:warmup], theirs[:warmup], rtol=1e-6)
        assert f"over {warmup + 1} steps" in run["notes"][0]


def test_json_export_of_a_planned_and_a_finished_study_agree(root, tmp_path, monkeypatch, capsys):
    from midtrain.driver.runner import _study_record
    from midtrain.study.config import load_study
    from midtrain.study.plan import make_plan

    out = tmp_path / "planned.json"
    args = ["study", "export", root / "study.toml", "--format", "json", "--out", out]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "6 runs exported (json)" in err
    planned = json.loads(out.read_text())
    assert planned["format"] == "midtrain-export/1" and len(planned["runs"]) == 6
    run = planned["runs"][2]  # math@0.3/s0
    assert run["name"] == "math@0.3/s0"
    assert {m["source"]: m["tokens"] for m in run["mix"]} == {
        "code": round(0.14 * 65536),
        "math": round(0.3 * 65536),
        "web": round(0.56 * 65536),
    }
    assert {m["source"]: m["max_repetition"] for m in run["mix"]}["math"] == 2.0
    assert run["schedule"] == {
        "tokens": 65536, "steps": 64, "shape": "cosine", "start_lr": 3e-4,
        "final_lr": 3e-4 * 0.1, "start_lr_from": "study", "warmup_steps": 4, "seq_len": 64,
        "batch_tokens": 1024, "batch_sequences": 16, "micro_batch": 4, "seed": 0}  # fmt: skip
    # a finished study's folder: its study.json as `study run` writes it
    folder = tmp_path / "done"
    folder.mkdir()
    record = _study_record(make_plan(load_study(root / "study.toml"), folder))
    (folder / "study.json").write_text(json.dumps(record))
    code, text, err = run_cli(["study", "export", folder, "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(text)["runs"] == planned["runs"]


def test_a_store_imported_from_megatron_exports_its_own_prefix(root, tmp_path):
    import shutil

    from _data_fixtures import train_tiny_tokenizer
    from _megatron import FIXTURES

    from midtrain.data.prepare import prepare_source

    for ext in (".bin", ".idx"):
        shutil.copy(FIXTURES / f"eod{ext}", tmp_path / f"eod{ext}")
    tok = train_tiny_tokenizer(tmp_path / "tok")
    prepare_source("web", [tmp_path / "eod.idx"], tmp_path / "meg", tok, progress=False)
    study = root / "meg.toml"
    study.write_text((root / "study.toml").read_text().replace('"stores/web"', f'"{tmp_path}/meg"'))
    _, runs = load_runs(study)
    web = next(m for m in runs[0].mix if m.source == "web")
    assert web.megatron_prefix == str(tmp_path / "eod")  # the user's own dataset, read in place
    assert web.tokens_file == str(tmp_path / "eod.bin")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--format", "xml"], "--format 'xml': use one of megatron, olmo-core, json"),
        (["--out", "."], "is a folder; pass a file name"),
    ],
)
def test_bad_options_are_one_line_exit_2(args, expect, root, monkeypatch, capsys):
    code, out, err = run_cli(["study", "export", root / "study.toml", *args], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expect in err
    assert out == ""


def test_bad_studies_are_one_line_exit_2(root, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["study", "export", tmp_path], monkeypatch, capsys)
    assert code == 2 and "no study.json, not a study folder" in err
    (tmp_path / "study.json").write_text('{"runs": [{"arm": "control"}]}')
    code, _, err = run_cli(["study", "export", tmp_path], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "not a study.json of this midtrain version" in err
    no_lr = root / "no_lr.toml"
    no_lr.write_text((root / "study.toml").read_text().replace("start_lr = 3e-4\n", ""))
    code, _, err = run_cli(["study", "export", no_lr], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "schedule.start_lr:" in err and "has no midtrain_state/trainer.json" in err
