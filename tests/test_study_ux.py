"""What a new user meets on their own small data (issue 24): `study init` sized to the stores and
passing its own dry run, errors naming the study field in one prefix style with a "did you mean",
a dry run of a finished study planning only what is left, Ctrl-C / SIGTERM leaving "interrupted"
statuses and exit 130, the SFT LR-grid edge warning, report paths relative to the study, and an
eval-only domain store of another tokenizer refused before the first run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from _train_fixtures import build_world, other_tokenizer, save_tiny_model

from midtrain.cli import main
from midtrain.demo.world import GEN_YAML, LOADER_PY, TASK_YAML

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    """Stores web (~14.5k train tokens) and math (~7k), a tiny Llama (64 positions, no
    midtrain_state), a store `alien` of another tokenizer, and a folder of two local tasks."""
    from midtrain.data.prepare import prepare_source

    root = tmp_path_factory.mktemp("ux")
    world = build_world(root)
    world["ckpt"] = save_tiny_model(root, "llama", world["tokenizer"])
    src = root / "raw" / "web.jsonl"
    alien = prepare_source("alien", [src], root / "stores" / "alien", str(other_tokenizer(root)),
                           progress=False)  # fmt: skip
    world["alien"] = str(alien.path)
    world["tasks"] = _task_folder(root / "tasks")
    return world


def _task_folder(path: Path) -> Path:
    """Two multiple-choice tasks over local JSONL (lm-eval loads them offline) and a code task."""
    path.mkdir()
    items = [{"question": f"{a} plus {a}", "choices": [str(2 * a), str(a)], "answer": 0}
             for a in range(6)]  # fmt: skip
    for name in ("ux_a", "ux_b"):
        (path / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        yaml = TASK_YAML.format(name=name, doc_to_text="Question: {{question}}\\nAnswer:")
        (path / f"{name}.yaml").write_text(yaml)
    (path / "world_data.py").write_text(LOADER_PY)
    code = GEN_YAML.format(name="ux_code").replace(
        "metric_list:", "unsafe_code: true\nmetric_list:"
    )
    (path / "ux_code.yaml").write_text(code)  # runs the model's code (lm-eval's unsafe_code)
    (path / "ux_code.jsonl").write_text(json.dumps({"question": "2 + 2", "answer": "4"}) + "\n")
    return path


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    got = capsys.readouterr()
    return e.value.code, got.out, got.err


def study_text(w: dict, top: str = "", tail: str = "", stores: dict | None = None,
               tokens: str = "256", checkpoint: str | None = None,
               seq_len: int = 32) -> str:  # fmt: skip
    """A small valid study (2 steps of 128 tokens per run, one seed, no tasks)."""
    stores = stores or w["stores"]
    lines = "".join(f'{k} = "{v}"\n' for k, v in stores.items())
    head = f"tokens = {tokens}\n" if tokens else ""
    return (
        f'name = "s"\ncheckpoint = "{checkpoint or w["ckpt"]}"\n{head}seq_len = {seq_len}\n'
        f"batch_tokens = 128\nmicro_batch = 2\nseeds = [0]\n{top}"
        f"[stores]\n{lines}[base]\nweb = 1.0\n[schedule]\nstart_lr = 1e-3\n"
        '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\nmax_repetition = 50.0\n'
        f"[train]\nthreads = 1\n{tail}"
    )


def write(tmp: Path, text: str, name: str = "study.toml") -> Path:
    (tmp / name).write_text(text)
    return tmp / name


# -- item 4: study init ---------------------------------------------------------------------------


def test_study_init_sizes_the_study_to_the_stores_and_passes_its_dry_run(
    w, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "cfg" / "study.toml"
    out.parent.mkdir()
    args = ["study", "init", w["ckpt"], "--store", f"web={w['stores']['web']}",
            "--store", f"math={w['stores']['math']}", "--out", out, "--start-lr", "1e-3",
            "--tasks", "ux_a", "--tasks", "ux_b,ux_a", "--include-path", w["tasks"]]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    data = tomllib.loads(out.read_text())
    # web holds 14,528 tokens (227 windows of 64): only 3 steps of 4096 fit in one epoch, so
    # steps of 32 sequences (4 of them fit in 90%); 7 steps (14,336) fit, 90% of it rounded down
    # to one significant digit
    assert data["seq_len"] == 64 and data["batch_tokens"] == 2048 and data["tokens"] == 10_000
    assert data["seeds"] == [0, 1, 2] and "hold 14,336 tokens per run" in out.read_text()
    assert data["eval"]["tasks"] == ["ux_a", "ux_b"]
    assert data["eval"]["include_path"] == os.path.relpath(w["tasks"], out.parent)
    assert data["schedule"]["start_lr"] == 1e-3
    study_dir = tmp_path / "study"
    code, text, err = run_cli(["study", "run", out, "--out", study_dir, "--dry-run"],
                              monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert "6 runs" in text and "math@0.3/s2" in text and not study_dir.exists()


def test_study_init_keeps_100m_when_the_data_allows_and_refuses_too_little():
    from midtrain.design.init import starter_tokens

    assert starter_tokens(10**9, 4096) == 100_000_000
    assert starter_tokens(100_000_000, 4096) == 100_000_000
    assert starter_tokens(99_000_000, 65536) == 80_000_000
    assert starter_tokens(5000, 4096) == 4096  # 90% is 4500: one step, not 4000


def test_study_init_names_the_store_too_small_for_one_step(w, tmp_path, monkeypatch, capsys):
    from midtrain.data.prepare import prepare_source

    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "the cat sees the ball."}\n' * 12)  # 3 sequences of 64
    store = prepare_source("tiny", [tiny], tmp_path / "tiny", w["tokenizer"], progress=False)
    args = ["study", "init", w["ckpt"], "--store", f"web={w['stores']['web']}",
            "--store", f"tiny={store.path}", "--out", tmp_path / "s.toml"]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --store tiny: ") and "add data" in err, err
    assert not (tmp_path / "s.toml").exists()


# -- item 5: errors name the field the user wrote --------------------------------------------------


def test_pydantic_paths_use_brackets_drop_union_tags_and_suggest_names():
    from midtrain.errors import MidtrainError
    from midtrain.study.config import parse_study

    good = {"checkpoint": "c", "stores": {"a": "x", "b": "y"}, "base": {"a": 1.0},
            "candidates": [{"name": "b", "mix": {"b": 1.0}}], "tokens": 8192}  # fmt: skip
    cases = {
        "candidates[0].fraction: is not a known field; did you mean 'fractions'?": {
            "candidates": [{"name": "b", "mix": {"b": 1.0}, "fraction": [0.2]}]
        },
        "guards[0].domian: is not a known field; did you mean 'domain'?": {
            "guards": [{"domian": "a"}]
        },
        "seeds[1]: ": {"seeds": [0, "x"]},  # not seeds.list[int].1
        "sft_probe.lrx: is not a known field; did you mean 'lrs'?": {"sft_probe": {"lrx": 1}},
        "resources.colour: is not a known field; check its spelling": {"resources": {"colour": 1}},
    }
    for expected, change in cases.items():
        with pytest.raises(MidtrainError) as e:
            parse_study(good | change, source="s.toml")
        assert str(e.value).startswith(f"s.toml: {expected}"), str(e.value)


BAD_STUDIES = {  # (study text from `study_text` args, the line's start after "error: study.toml: ")
    "misspelt field with the right one missing": (
        {"top": "token = 3\n", "tokens": ""},
        "token: is not a known field; did you mean 'tokens'?",
    ),
    "misspelt [train] field": (
        {"tail": "thred = 2\n"},
        "train.thred: is not a known field; did you mean 'threads'?",
    ),  # fmt: skip
    "tokens beyond the base store": (
        {"tokens": "1_000_000"},
        "base_max_repetition: arm control needs 999,936",
    ),
    "tokens beyond a candidate store": (
        {"top": "base_max_repetition = 100.0\n", "tokens": "1_300_000"},
        "candidates[0].max_repetition: arm math@0.3 needs",
    ),
    "per-source cap": (
        {"tokens": "1_000_000", "tail": "[source_max_repetition]\nweb = 2.0\n"},
        "source_max_repetition.web: arm control needs",
    ),
    "seq_len beyond the model": ({"seq_len": 128}, "seq_len: 128 is longer than"),
    "duplicate candidate": (
        {"tail": '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\n'},
        "candidates[1].name: 'math' is used twice",
    ),
    "unknown eval domain": (
        {"tail": '[eval]\ndomains = ["web", "nope"]\n'},
        "eval.domains[1]: unknown source 'nope'",
    ),  # fmt: skip
    "checkpoint not a model": ({"checkpoint": "nowhere"}, "checkpoint: /"),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_study_errors_name_the_study_field_in_one_prefix_style(
    case, w, tmp_path, monkeypatch, capsys
):
    kwargs, start = BAD_STUDIES[case]
    path = write(tmp_path, study_text(w, **kwargs))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: study.toml: {start}"), lines[0]
    assert not (tmp_path / "o").exists()


def test_the_suggested_token_limit_passes(w, tmp_path, monkeypatch, capsys):
    path = write(tmp_path, study_text(w, tokens="1_000_000"))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    limit = int(re.search(r"lower tokens to ([\d,]+) or less", err).group(1).replace(",", ""))
    path.write_text(study_text(w, tokens=str(limit)))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    path.write_text(study_text(w, tokens=str(limit + 128)))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 2 and "base_max_repetition" in err


# -- item 11: an eval-only domain store of another tokenizer ---------------------------------------


def test_eval_only_domain_of_another_tokenizer_is_refused_before_any_run(
    w, tmp_path, monkeypatch, capsys
):
    stores = {**w["stores"], "alien": w["alien"]}  # scored (every store is a domain), not trained
    path = write(tmp_path, study_text(w, stores=stores))
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: study.toml: stores.alien: scored as an eval "
                                        "domain but tokenised with tokenizer"), err  # fmt: skip
    assert sorted(tmp_path.rglob("*")) == before
    path.write_text(study_text(w, stores=stores, tail='[eval]\ndomains = ["web", "math"]\n'))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 0, err  # left out of the domains, it is not checked


def test_code_task_without_allow_code_execution_is_refused_before_anything_is_written(
    w, tmp_path, monkeypatch, capsys
):
    tail = f'[eval]\ntasks = ["ux_a", "ux_code"]\ninclude_path = "{w["tasks"]}"\n'
    path = write(tmp_path, study_text(w, tail=tail))
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: study.toml: eval.tasks: task 'ux_code' runs the code the model "
                          "writes (lm-eval marks it unsafe_code); allow it with "
                          "allow_code_execution = true in [eval]"), err  # fmt: skip
    assert sorted(tmp_path.rglob("*")) == before
    path.write_text(study_text(w, tail=tail + "allow_code_execution = true\n"))
    code, _, err = run_cli(["study", "run", path, "--out", tmp_path / "o", "--dry-run"],
                           monkeypatch, capsys)  # fmt: skip
    assert code == 0, err


# -- item 6: a dry run of a (partly) finished study ------------------------------------------------


@pytest.mark.slow
def test_dry_run_counts_finished_runs_and_plans_only_what_is_left(w, tmp_path, monkeypatch, capsys):
    import shutil

    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    path = write(tmp_path, study_text(w))
    dry = ["study", "run", path, "--out", tmp_path / "o", "--dry-run"]
    code, text, _ = run_cli(dry, monkeypatch, capsys)
    assert code == 0 and "min of training (before evaluation)" in text and "already" not in text
    run_study(load_study(path), tmp_path / "o")
    code, text, _ = run_cli(dry, monkeypatch, capsys)
    assert code == 0 and "2 of 2 runs already done; ~0.0 min of training left" in text, text
    plan = json.loads((tmp_path / "o" / "study.json").read_text())
    arm = next(r for r in plan["runs"] if r["arm"] != "control")
    shutil.rmtree(tmp_path / "o" / arm["dir"])
    code, text, _ = run_cli(dry, monkeypatch, capsys)
    assert code == 0 and "1 of 2 runs already done" in text, text


# -- items 7, 10: interrupted, then resumed: statuses, exit 130, LR-grid edge, report paths ------


def _env(**extra: str) -> dict:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)


def _status(folder: Path) -> str | None:
    f = folder / "status.json"
    return json.loads(f.read_text())["status"] if f.is_file() else None


def _interrupt_when(proc: subprocess.Popen, ready, sig: int) -> tuple[int, str]:
    """Send `sig` once `ready()` holds (the process paused at a step: MIDTRAIN_TEST_PAUSE)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_interrupted_sft_probe_says_so_exits_130_and_resumes(w, tmp_path):
    """SIGINT while a study's SFT probe trains (runs train 2 steps; the probe pauses at step 3):
    one line, exit 130, the probe and its LR "interrupted"; the same command then finishes, warns
    that the chosen LR sits at the grid's edge, and report.md holds no absolute path."""
    rows = "".join(json.dumps({"prompt": f"{a} plus {a}", "response": str(2 * a)}) + "\n"
                   for a in range(16))  # fmt: skip
    (tmp_path / "sft.jsonl").write_text(rows)
    probe = ("[sft_probe]\nlrs = [1e-4, 1e-3]\nepochs = 1\nbatch_size = 4\nmicro_batch = 4\n"
             "seq_len = 32\n"
             '[[sft_probe.sets]]\nname = "sums"\ntrain = "sft.jsonl"\nval = "sft.jsonl"\n')  # fmt: skip
    path = write(tmp_path, study_text(w, tail=probe))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "midtrain.cli", "study", "run", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(MIDTRAIN_TEST_PAUSE="step:3:120"), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    lr_dirs = lambda: list(out.glob("runs/*/sft/*/lr-*"))  # noqa: E731
    code, err = _interrupt_when(proc, lambda: any(_status(d) == "running" for d in lr_dirs()),
                                signal.SIGINT)  # fmt: skip
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; run the same command to resume", err
    (lr,) = [d for d in lr_dirs() if _status(d) is not None]
    assert _status(lr) == "interrupted" and _status(lr.parent) == "interrupted"

    done = subprocess.run(cmd, env=_env(), text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "warning: the chosen SFT LR is at the edge of the grid" in done.stderr
    sft = json.loads(next(out.glob("runs/*/sft/*/sft.json")).read_text())
    assert any("extend the grid" in x for x in sft["warnings"])
    report = (out / "report.md").read_text()
    assert str(tmp_path) not in report and "**Warning**: the chosen SFT LR" in report
    assert f"Start checkpoint {os.path.relpath(w['ckpt'], out)}" in report


@pytest.mark.slow
def test_sigterm_during_anneal_marks_the_run_interrupted(w, tmp_path):
    run = tmp_path / "run.toml"
    stores = ", ".join(f'{k} = "{v}"' for k, v in w["stores"].items())
    run.write_text(
        f'init = "{w["ckpt"]}"\ntokens = 640\nseq_len = 32\nbatch_tokens = 128\nmicro_batch = 2\n'
        f"threads = 1\nstores = {{ {stores} }}\n"
        'mix = [{ source = "web", ratio = 1.0, max_repetition = 5.0 }]\n'
        "[schedule]\nstart_lr = 1e-3\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "midtrain.cli", "anneal", "--config", str(run), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=_env(MIDTRAIN_TEST_PAUSE="step:2:120"), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    code, err = _interrupt_when(proc, lambda: _status(out) == "running", signal.SIGTERM)
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted;"), err[-2000:]
    assert _status(out) == "interrupted"


def test_an_interrupted_local_worker_pool_stops_without_starting_more_chains(tmp_path):
    """--workers 2: SIGTERM to the study process stops both workers (each after its chain's
    handlers ran) and starts none of the queued chains."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from _toy_stage import ToySpec
from midtrain.cli import _interrupt_on_signals, _interrupted
from midtrain.jobs import Job
from midtrain.study.executors import LocalExecutor

if __name__ == "__main__":
    root = Path(sys.argv[1])
    chains = [[Job.of("toy", f"r{{i}}", root / f"r{{i}}", ToySpec(value=i, steps=600, step_s=0.2))]
              for i in range(6)]
    try:
        with _interrupt_on_signals():
            LocalExecutor(workers=2).run(chains, lambda o: None)
    except KeyboardInterrupt:
        sys.exit(_interrupted())
"""
    (tmp_path / "pool.py").write_text(script)
    cmd = [sys.executable, str(tmp_path / "pool.py"), str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, env=_env(), text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    started = lambda: len(list(tmp_path.glob("o/*/done"))) == 2  # noqa: E731
    code, err = _interrupt_when(proc, started, signal.SIGTERM)
    assert code == 130 and err.strip().splitlines()[-1].startswith("interrupted;"), err[-2000:]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["r0", "r1"]
    assert all(int((tmp_path / "o" / r / "done").read_text()) < 600 for r in ("r0", "r1"))
