"""The keep policy (issue 28, item 1): a study drops what nothing reads any more (AdamW moments of
finished runs, SFT and merge checkpoints) while its results, records and caches stay; `[keep]`
keeps more; `study prune` applies a policy afterwards; the dry run's disk estimate matches the
folders the study writes; an unfinished run is never pruned."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from _train_fixtures import build_world, save_tiny_model

from midtrain.cli import main

SFT_ROWS = "".join(json.dumps({"prompt": f"{a} plus {a}", "response": str(2 * a)}) + "\n"
                   for a in range(8))  # fmt: skip


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    """Stores web and math, a tiny Llama (no midtrain_state), an SFT set."""
    root = tmp_path_factory.mktemp("keep")
    world = build_world(root)
    world["ckpt"] = save_tiny_model(root, "llama", world["tokenizer"])
    (root / "sft.jsonl").write_text(SFT_ROWS)
    world["sft"] = root / "sft.jsonl"
    return world


def study_text(w: dict, keep: str = "") -> str:
    """Control and math@0.3, 2 seeds of 2 steps, an SFT probe of 2 LRs, both arms merged."""
    stores = "".join(f'{k} = "{v}"\n' for k, v in w["stores"].items())
    return (
        f'name = "k"\ncheckpoint = "{w["ckpt"]}"\ntokens = 256\nseq_len = 32\nbatch_tokens = 128\n'
        "micro_batch = 2\nseeds = [0, 1]\nmerge_seeds = true\n"
        f"[stores]\n{stores}[base]\nweb = 1.0\n[schedule]\nstart_lr = 1e-3\n"
        '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\nmax_repetition = 50.0\n'
        "[train]\nthreads = 1\n"
        "[sft_probe]\nlrs = [1e-4, 1e-3]\nepochs = 1\nbatch_size = 4\nmicro_batch = 4\nseq_len = 32\n"
        f'[[sft_probe.sets]]\nname = "sums"\ntrain = "{w["sft"]}"\nval = "{w["sft"]}"\n{keep}'
    )


def run(w: dict, out: Path, keep: str = ""):
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.toml").write_text(study_text(w, keep))
    return run_study(load_study(out.parent / f"{out.name}.toml"), out)


def cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    got = capsys.readouterr()
    return e.value.code, got.out, got.err


def files(out: Path, name: str) -> list[Path]:
    return sorted(out.rglob(name))


def records(out: Path) -> dict[str, int]:
    """Every result, record, evaluation and log of the study, with its modification time."""
    keep = ("metrics.json", "status.json", "eval.json", "examples.jsonl", "sft.json",
            "log.jsonl", "results.json", "merge-job.json", "config.json", "inputs.json")  # fmt: skip
    return {str(p): p.stat().st_mtime_ns for n in keep for p in out.rglob(n)}


@pytest.fixture(scope="module")
def default_study(w, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("default") / "study"
    return out, run(w, out)


@pytest.fixture(scope="module")
def full_study(w, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("full") / "study"
    return out, run(w, out, '[keep]\nrun = "full"\nsft = "all"\nmerge = true\n')


def run_finals(out: Path) -> list[Path]:
    return sorted(d / "final" for d in (out / "runs").glob("*-s*-*") if (d / "final").is_dir())


def test_default_policy_keeps_run_weights_results_and_caches(w, default_study):
    from midtrain.jobs import pending
    from midtrain.study.config import load_study
    from midtrain.study.plan import make_plan

    out, results = default_study
    finals = run_finals(out)
    assert len(finals) == 4 and not results.failed_runs and len(results.merges) == 2
    assert all(m.status == "done" for m in results.merges)
    for f in finals:  # weights stay (SFT probes and merges read them), the moments go
        assert (f / "model.safetensors").is_file() and (f / "midtrain_state/trainer.json").is_file()
        assert not (f / "midtrain_state/optimizer.pt").exists()
        assert json.loads((f / "midtrain_state/pruned.json").read_text())["removed"] == [
            "midtrain_state/optimizer.pt"
        ]
    lr_dirs = files(out, "lr-*")
    assert len(lr_dirs) == 8 and not any(files(d, "*.safetensors") for d in lr_dirs)
    assert not files(out, "optimizer.pt") and not files(out / "merges", "*.safetensors")
    assert len(files(out, "sft.json")) == 4 and len(files(out / "merges", "eval.json")) == 2
    before = records(out)
    again = run(w, out)  # every job cached: nothing trained, evaluated or rewritten
    assert [a.model_dump() for a in again.arms] == [a.model_dump() for a in results.arms]
    assert {k: v for k, v in records(out).items() if "results.json" not in k} == {
        k: v for k, v in before.items() if "results.json" not in k
    }
    plan = make_plan(load_study(out.parent / "study.toml"), out)
    assert not any(pending(c) for c in plan.chains())


def test_dry_run_estimates_the_disk_of_the_checkpoints_it_writes(
    w, full_study, monkeypatch, capsys
):
    import torch
    from transformers import AutoModelForCausalLM

    from midtrain.study.disk import model_size

    out, _ = full_study
    size = model_size(w["ckpt"])
    model = AutoModelForCausalLM.from_pretrained(w["ckpt"], dtype=torch.float32)
    assert size.params == sum(p.numel() for p in model.parameters())
    written = [sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) for f in run_finals(out)]
    assert all(abs(size.checkpoint("full") - n) / n < 0.02 for n in written), (size, written)
    dry = ["study", "run", out.parent / "study.toml", "--out", out, "--dry-run"]
    code, text, _ = cli(dry, monkeypatch, capsys)
    text = " ".join(text.split())
    assert code == 0 and '[keep] run = "full", sft = "all", merge = true' in text, text
    assert "disk total:" in text and "with nothing pruned" in text


def test_a_warm_start_from_pruned_moments_warns(w, default_study, full_study):
    from _train_fixtures import run_config

    from midtrain.train.config import load_run_config
    from midtrain.train.plan import plan_run

    LINEAR = {"name": "linear", "start_lr": 1e-3}

    pruned, kept = run_finals(default_study[0])[0], run_finals(full_study[0])[0]
    warned = plan_run(load_run_config(run_config(w, init=str(pruned), schedule=LINEAR))).warnings
    assert any("AdamW moments removed" in x for x in warned), warned
    plain = plan_run(load_run_config(run_config(w, init=str(kept), schedule=LINEAR))).warnings
    assert not any("AdamW moments" in x for x in plain), plain


def test_an_unfinished_run_or_probe_is_never_pruned(full_study, tmp_path):
    from midtrain.study.keep import PruneSpec, PruneTarget, removals
    from midtrain.train.rundir import write_status

    src, _ = full_study
    run_dir = tmp_path / "run"
    shutil.copytree(next((src / "runs").glob("math-*-s0-*")), run_dir)
    probe = next((run_dir / "sft").iterdir())
    spec = PruneSpec(targets=[PruneTarget(kind="run", dir=str(run_dir), level="none"),
                              PruneTarget(kind="probe", dir=str(probe), level="none")])  # fmt: skip
    assert len(removals(spec)) == 2 + 2 * 2  # finished: the run's weights and moments, each LR's
    write_status(run_dir, "interrupted", step=1)
    write_status(probe, "running")
    assert removals(spec) == []


def test_full_policy_keeps_everything_then_prune_applies_a_stricter_one(
    full_study, monkeypatch, capsys
):
    from midtrain.study.keep import fmt_bytes

    out, _ = full_study
    run_moments = [f / "midtrain_state/optimizer.pt" for f in run_finals(out)]
    assert all(p.is_file() for p in run_moments) and len(files(out, "optimizer.pt")) == 4 + 8
    assert len(files(out / "merges", "model.safetensors")) == 2
    code, text, _ = cli(["study", "prune", out], monkeypatch, capsys)  # its own policy: full
    assert (
        code == 0 and "pruned 0 paths: 0 B freed" in text and len(files(out, "optimizer.pt")) == 12
    )

    before, size = records(out), sum(p.stat().st_size for p in run_moments)
    code, text, _ = cli(["study", "prune", out, "--keep", "weights"], monkeypatch, capsys)
    assert code == 0, text
    for p in run_moments:
        assert f"removed {p.relative_to(out)}" in text and not p.exists()
    assert text.strip().splitlines()[-1] == f"pruned 4 paths: {fmt_bytes(size)} freed"
    assert len(files(out, "optimizer.pt")) == 8  # sft = "all": every LR's checkpoint stays
    assert records(out) == before  # results, records, evaluations and logs untouched


def test_keep_none_drops_run_weights_and_a_job_needing_them_again_is_one_line(
    full_study, monkeypatch, capsys
):
    out, _ = full_study
    code, text, _ = cli(["study", "prune", out, "--keep", "none"], monkeypatch, capsys)
    assert code == 0 and not any((f / "model.safetensors").exists() for f in run_finals(out))
    assert len(files(out / "merges", "model.safetensors")) == 2  # the study's merge = true
    assert all((f / "config.json").is_file() for f in run_finals(out)) and files(
        out, "results.json"
    )
    study = ["study", "run", out.parent / "study.toml", "--out", out]
    code, _, err = cli(study, monkeypatch, capsys)  # still all cached: nothing reads the weights
    assert code == 0, err
    toml = out.parent / "study.toml"
    toml.write_text(toml.read_text().replace("epochs = 1", "epochs = 2"))  # a new SFT probe
    code, _, err = cli(study, monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "weights were removed" in lines[0], err[-2000:]


def test_prune_refuses_a_running_study(default_study, monkeypatch, capsys):
    from midtrain.driver.runner import study_lock

    out, _ = default_study
    before = {str(p): p.stat().st_mtime_ns for p in out.rglob("*")}
    with study_lock(out):
        code, _, err = cli(["study", "prune", out, "--keep", "none"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "still running" in err, err
    assert {str(p): p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_study_reusing_pruned_runs_keeps_their_evaluations_cached(w, default_study, tmp_path):
    """An integration round reuses runs (hard links) whose SFT checkpoints are gone: their
    evaluations and probes stay cached in the new folder (nothing re-reads removed weights)."""
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    src, out = default_study[0], tmp_path / "study"
    text = study_text(w).replace("merge_seeds = true\n", f'merge_seeds = true\nreuse = ["{src}"]\n')
    (tmp_path / "study.toml").write_text(text)
    results = run_study(load_study(tmp_path / "study.toml"), out)
    assert not results.failed_runs and not results.missing_probes
    assert all(m.status == "done" for m in results.merges)
    for f in run_finals(out):  # linked, not retrained
        src_final = src / "runs" / f.parent.name / "final"
        assert (f / "model.safetensors").stat().st_ino == (
            src_final / "model.safetensors"
        ).stat().st_ino
    evals = [p for f in run_finals(out) for p in files(f.parent, "eval.json")]  # run's, probes'
    assert len(evals) == 4 + 4  # re-pointed at the linked checkpoints: cached, nothing re-read
    assert all(json.loads(p.read_text())["checkpoint"].startswith(str(out)) for p in evals)
