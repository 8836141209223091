"""Every bad input, on every command: one line on stderr naming the field, exit code 2, and the
file system exactly as it was (no folder, lock or partial file; inputs untouched)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from _train_fixtures import build_world, other_tokenizer, save_tiny_model

from midtrain.cli import main


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("malformed")
    world = build_world(root)
    world["ckpt"] = save_tiny_model(root, "llama", world["tokenizer"])
    world["other"] = other_tokenizer(root)
    from midtrain.data.prepare import prepare_source

    src = root / "raw" / "web.jsonl"
    prepare_source("alien", [src], root / "stores" / "alien", str(world["other"]), progress=False)
    return world


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in sorted(root.rglob("*"))
    }


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def study_text(w: dict, **top) -> str:
    """A valid study file as TOML text; `top` replaces top-level values (already TOML)."""
    fields = {
        "name": '"s"', "checkpoint": f'"{w["ckpt"]}"', "tokens": "256", "seq_len": "32",
        "batch_tokens": "128", "micro_batch": "2", "seeds": "[0, 1]",
    }  # fmt: skip
    fields.update(top)
    head = "".join(f"{k} = {v}\n" for k, v in fields.items())
    stores = "".join(f'{k} = "{v}"\n' for k, v in w["stores"].items())
    return (
        f"{head}[stores]\n{stores}[base]\nweb = 1.0\n[schedule]\nstart_lr = 1e-3\n"
        '[[candidates]]\nname = "math"\nmix = { math = 1.0 }\nmax_repetition = 50.0\n'
    )


def run_toml(w: dict, **over) -> str:
    rc = {
        "init": f'"{w["ckpt"]}"', "tokens": "256", "seq_len": "32", "batch_tokens": "128",
        "micro_batch": "2", "threads": "1",
        "stores": "{ " + ", ".join(f'{k} = "{v}"' for k, v in w["stores"].items()) + " }",
        "mix": '[{ source = "web", ratio = 1.0, max_repetition = 50.0 }]',
    }  # fmt: skip
    rc.update(over)
    sched = rc.pop("schedule", "[schedule]\nstart_lr = 1e-3\n")
    return "".join(f"{k} = {v}\n" for k, v in rc.items()) + sched


def write(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def corrupt_ckpt(w: dict, tmp: Path) -> Path:
    import shutil

    bad = tmp / "ckpt"
    shutil.copytree(w["ckpt"], bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return bad


def corrupt_store(w: dict, tmp: Path) -> Path:
    import shutil

    bad = tmp / "web"
    shutil.copytree(w["stores"]["web"], bad)
    (bad / "manifest.json").write_text('{"format": "midtrain-store/1", "name": ')
    return bad


def bad_count_store(w: dict, tmp: Path) -> Path:
    """A copy of the web store whose manifest's train.n_tokens is a word (valid JSON)."""
    import shutil

    bad = tmp / "stores" / "web"
    shutil.copytree(w["stores"]["web"], bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["train"]["n_tokens"] = "many"
    (bad / "manifest.json").write_text(json.dumps(man))
    return bad


def store_at(w: dict, tmp: Path, name: str) -> Path:
    """A copy of the web store as DATA/NAME (for prepare into an existing store)."""
    import shutil

    shutil.copytree(w["stores"]["web"], tmp / "data" / name)
    return tmp / "data" / name


def chat_study(w: dict, tmp: Path) -> str:
    """A study whose candidate's store was prepared with a special token written as text."""
    from midtrain.data.prepare import prepare_source

    src = write(tmp, "chat.jsonl", '{"text": "a <|endoftext|> b"}\n' + JSONL)
    store = prepare_source("chat", [src], tmp / "chat", w["tokenizer"], progress=False,
                           allow_special_text=True)  # fmt: skip
    text = study_text(w).replace("[base]", f'chat = "{store.path}"\n[base]')
    return text.replace("mix = { math = 1.0 }", "mix = { chat = 1.0 }")


Case = Callable[[dict, Path], tuple[list, str]]  # (world, tmp) -> (argv, text the line must name)


def prep(w, tmp, inp, *extra):
    return ["data", "prepare", inp, "--name", "src", "--out", tmp / "data",
            "--tokenizer", w["tokenizer"], *extra]  # fmt: skip


def mix(w, *extra, tokens="1600"):
    stores = Path(w["stores"]["web"]).parent
    return ["data", "mix", "--stores", stores, "--tokens", tokens, *extra]


def anneal(w, tmp, text, *extra):
    return ["anneal", "--config", write(tmp, "run.toml", text), "--out", tmp / "run", *extra]


def pretrain(w, tmp, model):
    text = run_toml(w, init=None, tokenizer=f'"{w["tokenizer"]}"').replace("init = None\n", "")
    text = text.replace("[schedule]", f"[model]\n{model}\n[schedule]")
    return ["pretrain", "--config", write(tmp, "pre.toml", text), "--out", tmp / "run"]


def study(w, tmp, text, *extra):
    return ["study", "run", write(tmp, "study.toml", text), "--out", tmp / "out", *extra]


def ev(w, tmp, *extra, ckpt=None):
    return ["eval", ckpt or w["ckpt"], "--out", tmp / "ev",
            "--domains", f"web={w['stores']['web']}", *extra]  # fmt: skip


def no_eos_ckpt(w: dict, tmp: Path) -> Path:
    """The checkpoint with a tokenizer that has no EOS token."""
    import shutil

    bad = tmp / "no-eos"
    shutil.copytree(w["ckpt"], bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    for k in ("eos_token", "bos_token", "pad_token", "unk_token"):
        cfg.pop(k, None)
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    return bad


SFT_ROWS = '{"prompt": "1 plus 1", "response": "2"}\n' * 4


def sft(w, tmp, rows, *extra, cfg="seq_len = 32\nthreads = 1\n", ckpt=None):
    return ["sft", ckpt or w["ckpt"], "--data", write(tmp, "train.jsonl", rows), "--out",
            tmp / "sft", "--config", write(tmp, "sft.toml", cfg), *extra]  # fmt: skip


JSONL = '{"text": "a"}\n{"text": "b"}\n'


def probe_study(w, tmp, sets: str, probe: str = "seq_len = 32\n", **top):
    """A study with an [sft_probe] (its train file written); `sets` are [[sft_probe.sets]] tables."""
    write(tmp, "sft.jsonl", SFT_ROWS)
    text = study_text(w, **top) + f"[sft_probe]\n{probe}{sets}"
    return study(w, tmp, text)


SET = '[[sft_probe.sets]]\nname = "sums"\ntrain = "sft.jsonl"\n'
CPT_SMALL = "max_repetition = 1.0\ncontinued_pretraining = true\n"
ROUND_LOW_ANCHOR = (
    'name = "r1"\nanchor = {web = 1.0}\nanchor_share = 0.1\nsources = {math = 0.9}\n'
    'previous = {web = 1.0}\ncheckpoint = "x"\ntokens = 10\nstores = {}\n'
)
CASES: dict[str, Case] = {
    # data prepare
    "prepare: missing input": lambda w, t: (prep(w, t, t / "nope.jsonl"), "nope.jsonl"),
    "prepare: bad name": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL))[:3] + ["--name", "a b", "--out", t / "d", "--tokenizer", w["tokenizer"]], "--name"),
    "prepare: heldout > 1": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL), "--heldout-fraction", "1.5"), "--heldout-fraction"),
    "prepare: heldout nan": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL), "--heldout-fraction", "nan"), "--heldout-fraction"),
    "prepare: vocab without training": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL), "--vocab-size", "300"), "--train-tokenizer"),
    "prepare: truncated gzip": lambda w, t: (prep(w, t, write(t, "a.jsonl.gz", gzip.compress(JSONL.encode() * 50)[:-20])), "a.jsonl.gz"),
    "prepare: a line that is not JSON": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL + "{oops\n")), "a.jsonl"),
    "prepare: --out is a file": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL))[:-4] + ["--out", write(t, "f", "x"), "--tokenizer", w["tokenizer"]], "--out"),
    "prepare: tokenizer not a folder": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL))[:-1] + [t / "none"], "none: no such folder"),
    "prepare: name of 300 characters": lambda w, t: (prep(w, t, write(t, "a.jsonl", JSONL))[:3] + ["--name", "a" * 300, "--out", t / "d", "--tokenizer", w["tokenizer"]], "--name"),
    "prepare: store exists (other tokenizer)": lambda w, t: (store_at(w, t, "src") and prep(w, t, write(t, "a.jsonl", JSONL))[:-1] + [w["other"]], "--force"),
    "prepare: special token as text": lambda w, t: (prep(w, t, write(t, "a.jsonl", '{"text": "a <|endoftext|> b"}\n')), "a.jsonl line 1"),
    "prepare: special token, --train-tokenizer": lambda w, t: (prep(w, t, write(t, "a.jsonl", '{"text": "a <|endoftext|> b"}\n'))[:-2] + ["--train-tokenizer", "--vocab-size", "300"], "--allow-special-text"),
    "tokenizer: --out exists": lambda w, t: (["data", "tokenizer", write(t, "a.jsonl", JSONL), "--out", (t / "tok").mkdir() or t / "tok"], "--out"),
    "prepare: text field missing": lambda w, t: (prep(w, t, write(t, "a.jsonl", '{"body": "a"}\n')), "text"),
    # data mix
    "mix: seq-len 0": lambda w, t: (mix(w, "--mix", "web=1", "--seq-len", "0"), "--seq-len"),
    "mix: fewer tokens than a sequence": lambda w, t: (mix(w, "--mix", "web=1", tokens="10"), "--tokens"),
    "mix: tokens not a number": lambda w, t: (mix(w, "--mix", "web=1", tokens="lots"), "--tokens"),
    "mix: negative tokens": lambda w, t: (mix(w, "--mix", "web=1", tokens="-5"), "--tokens"),
    "mix: ratio not a number": lambda w, t: (mix(w, "--mix", "web=abc"), "mix[0]"),
    "mix: unknown source": lambda w, t: (mix(w, "--mix", "nope=1"), "mix[0].source"),
    "mix: ratios not summing to 1": lambda w, t: (mix(w, "--mix", "web=0.5", "--mix", "math=0.2"), "ratio"),
    "mix: store manifest count a word": lambda w, t: (["data", "mix", "--stores", bad_count_store(w, t).parent, "--mix", "web=1", "--tokens", "1600"], "train.n_tokens"),
    "mix: stores folder missing": lambda w, t: (["data", "mix", "--stores", t / "none", "--mix", "web=1", "--tokens", "99"], "--stores"),
    # pretrain / anneal
    "pretrain: hidden not divisible by heads": lambda w, t: (pretrain(w, t, 'model_type = "llama"\nhidden_size = 30\nnum_attention_heads = 4\nnum_hidden_layers = 1\nintermediate_size = 8\nmax_position_embeddings = 64'), "model"),
    "pretrain: negative size": lambda w, t: (pretrain(w, t, 'model_type = "llama"\nhidden_size = -32\nnum_attention_heads = 2\nnum_hidden_layers = 1\nintermediate_size = 8'), "model"),
    "pretrain: unknown architecture": lambda w, t: (pretrain(w, t, 'model_type = "nosuchnet"'), "model.model_type"),
    "anneal: config file missing": lambda w, t: (["anneal", "--config", t / "no.toml", "--out", t / "run"], "--config"),
    "anneal: not TOML": lambda w, t: (anneal(w, t, "tokens = [\n"), "not valid TOML"),
    "anneal: unknown field": lambda w, t: (anneal(w, t, run_toml(w, learning_rate="1")), "learning_rate"),
    "anneal: tokens a word": lambda w, t: (anneal(w, t, run_toml(w, tokens='"lots"')), "tokens"),
    "anneal: negative tokens": lambda w, t: (anneal(w, t, run_toml(w, tokens="-1")), "tokens"),
    "anneal: nan LR": lambda w, t: (anneal(w, t, run_toml(w, schedule="[schedule]\nstart_lr = nan\n")), "schedule.start_lr"),
    "anneal: infinite LR": lambda w, t: (anneal(w, t, run_toml(w, schedule="[schedule]\nstart_lr = inf\n")), "schedule.start_lr"),
    "anneal: corrupt weights": lambda w, t: (anneal(w, t, run_toml(w, init=f'"{corrupt_ckpt(w, t)}"')), "init"),
    "anneal: --out is a file": lambda w, t: (["anneal", "--config", write(t, "r.toml", run_toml(w)), "--out", write(t, "f", "x")], "--out"),
    "anneal: store manifest count a word": lambda w, t: (anneal(w, t, run_toml(w, stores=f'{{ web = "{bad_count_store(w, t)}" }}')), "train.n_tokens"),
    "anneal: corrupt store manifest": lambda w, t: (anneal(w, t, run_toml(w, stores=f'{{ web = "{corrupt_store(w, t)}" }}')), "manifest.json"),
    # eval
    "eval: limit 0": lambda w, t: (ev(w, t, "--tasks", "x", "--limit", "0"), "limit"),
    "eval: negative limit": lambda w, t: (ev(w, t, "--tasks", "x", "--limit", "-3"), "limit"),
    "eval: batch size 0": lambda w, t: (ev(w, t, "--batch-size", "0"), "batch_size"),
    "eval: negative few-shot": lambda w, t: (ev(w, t, "--tasks", "x", "--num-fewshot", "-1"), "num_fewshot"),
    "eval: device tpu": lambda w, t: (ev(w, t, "--device", "tpu"), "--device"),
    "eval: device cuda without a GPU": lambda w, t: (ev(w, t, "--device", "cuda"), "--device"),
    "eval: corrupt checkpoint": lambda w, t: (ev(w, t, ckpt=corrupt_ckpt(w, t)), "checkpoint"),
    "eval: --out is a file": lambda w, t: (ev(w, t)[:3] + [write(t, "f", "x")] + ev(w, t)[4:], "--out"),
    "eval: domain of another tokenizer": lambda w, t: (ev(w, t)[:4] + ["--domains", f"alien={Path(w['stores']['web']).parent / 'alien'}"], "domains.alien"),
    "eval: unknown task": lambda w, t: (ev(w, t, "--tasks", "no_such_task"), "no_such_task"),
    # study run / show / init
    "study: candidate equals the base": lambda w, t: (study(w, t, study_text(w).replace("mix = { math = 1.0 }", "mix = { web = 1.0 }")), "candidates[0]"),
    "study: tokens a word": lambda w, t: (study(w, t, study_text(w, tokens='"lots"')), "tokens"),
    "study: seeds a word": lambda w, t: (study(w, t, study_text(w, seeds='"many"')), "seeds"),
    "study: nan fraction": lambda w, t: (study(w, t, study_text(w, fractions="[nan]")), "fractions"),
    "study: corrupt store manifest": lambda w, t: (study(w, t, study_text(w).replace(f'web = "{w["stores"]["web"]}"', f'web = "{corrupt_store(w, t)}"')), "manifest.json"),
    "study: corrupt checkpoint": lambda w, t: (study(w, t, study_text(w, checkpoint=f'"{corrupt_ckpt(w, t)}"')), "checkpoint"),
    "study: candidate store holding a special token": lambda w, t: (study(w, t, chat_study(w, t)), "candidates[0].mix.chat"),
    "study: --out is a file": lambda w, t: (["study", "run", write(t, "s.toml", study_text(w)), "--out", write(t, "f", "x")], "--out"),
    "study: --workers 0": lambda w, t: (study(w, t, study_text(w), "--workers", "0"), "--workers"),
    "study: unknown executor": lambda w, t: (study(w, t, study_text(w), "--executor", "pbs"), "--executor"),
    "study: SFT set file missing": lambda w, t: (probe_study(w, t, SET.replace("sft.jsonl", "none.jsonl")), "sft_probe.sets[0].train"),
    "study: SFT set with an empty name": lambda w, t: (probe_study(w, t, SET.replace('"sums"', '" "')), "sft_probe.sets"),
    "study: two SFT sets of one name": lambda w, t: (probe_study(w, t, SET + SET), "used twice"),
    "study: SFT seq_len beyond the model": lambda w, t: (probe_study(w, t, SET, "seq_len = 128\n"), "sft_probe.sets[0] (sums): seq_len"),
    "study: decide_on sft without a probe": lambda w, t: (study(w, t, study_text(w) + '[analysis]\ndecide_on = "sft"\n'), "analysis.decide_on"),
    "study: CPT arm and fraction 1.0": lambda w, t: (study(w, t, study_text(w, fractions="[0.3, 1.0]").replace("max_repetition = 50.0\n", "continued_pretraining = true\n")), "candidates[0].fractions"),
    "study: CPT arm beyond max_repetition": lambda w, t: (study(w, t, study_text(w, tokens="10240").replace("max_repetition = 50.0\n", CPT_SMALL)), "candidates[0].max_repetition: arm math@cpt"),
    "study: eval point outside (0, 1]": lambda w, t: (study(w, t, study_text(w) + "[eval]\npoints = [0.5, 1.5]\n"), "eval.points: 1.5 is outside (0, 1]"),
    "study: eval points unsorted": lambda w, t: (study(w, t, study_text(w) + "[eval]\npoints = [0.75, 0.25, 1.0]\n"), "eval.points: must be sorted and distinct"),
    "study: eval points duplicated": lambda w, t: (study(w, t, study_text(w) + "[eval]\npoints = [0.5, 0.5, 1.0]\n"), "eval.points: must be sorted and distinct"),
    "study: eval points on one step": lambda w, t: (study(w, t, study_text(w) + "[eval]\npoints = [0.4, 0.6, 1.0]\n"), "eval.points: 0.6 of 2 steps falls on step 1"),
    "study: predict_tokens (removed)": lambda w, t: (study(w, t, study_text(w) + "[eval]\npoints = [0.25, 0.5, 1.0]\n[analysis]\npredict_tokens = 1024\n"), "analysis: predict_tokens: was removed"),
    "study: unknown keep policy": lambda w, t: (study(w, t, study_text(w) + '[keep]\nrun = "sometimes"\n'), "keep.run"),
    "study prune: not a study folder": lambda w, t: (["study", "prune", (t / "d").mkdir() or t / "d"], "not a study folder"),
    "study prune: unknown --keep": lambda w, t: (["study", "prune", t, "--keep", "moments"], "--keep"),
    "study show: corrupt results": lambda w, t: (["study", "show", write(t, "d/results.json", "{").parent], "results.json"),
    "study init: bad --store": lambda w, t: (["study", "init", w["ckpt"], "--store", "web", "--store", "m=x", "--out", t / "s.toml"], "--store"),
    "study init: --preset without --full-run-tokens": lambda w, t: (["study", "init", w["ckpt"], "--preset", "olmo2", "--store", f"web={w['stores']['web']}", "--store", f"math={w['stores']['math']}", "--out", t / "s.toml"], "--full-run-tokens: required with --preset"),
    "study init: --base ratios not summing to 1": lambda w, t: (["study", "init", w["ckpt"], "--store", f"web={w['stores']['web']}", "--store", f"math={w['stores']['math']}", "--store", f"code={w['stores']['math']}", "--base", "web:0.5,code:0.2", "--out", t / "s.toml"], "--base web:0.5,code:0.2: ratios sum to 0.7"),
    "study init: --out exists": lambda w, t: (["study", "init", w["ckpt"], "--store", f"web={w['stores']['web']}", "--store", f"math={w['stores']['math']}", "--out", write(t, "s.toml", "x")], "--out"),
    # sft, data check-format
    "sft: row without prompt/response or messages": lambda w, t: (sft(w, t, SFT_ROWS + '{"text": "a"}\n'), "train.jsonl line 5"),
    "sft: empty response": lambda w, t: (sft(w, t, SFT_ROWS + '{"prompt": "a", "response": " "}\n'), "empty response"),
    "sft: response not a string": lambda w, t: (sft(w, t, '{"prompt": "a", "response": 3}\n'), '"response" must be a string'),
    "sft: a line that is not JSON": lambda w, t: (sft(w, t, SFT_ROWS + "{oops\n"), "train.jsonl line 5"),
    "sft: unknown role": lambda w, t: (sft(w, t, '{"messages": [{"role": "robot", "content": "x"}]}\n'), "unknown role"),
    "sft: messages without an assistant": lambda w, t: (sft(w, t, '{"messages": [{"role": "user", "content": "x"}]}\n'), "no assistant"),
    "sft: validation file with no rows": lambda w, t: (sft(w, t, SFT_ROWS, "--val", write(t, "val.jsonl", "\n")), "--val"),
    "sft: data file missing": lambda w, t: (sft(w, t, SFT_ROWS)[:3] + [t / "none.jsonl"] + sft(w, t, SFT_ROWS)[4:], "--data"),
    "sft: tokenizer without EOS": lambda w, t: (sft(w, t, SFT_ROWS, ckpt=no_eos_ckpt(w, t)), "no eos token"),
    "sft: every example longer than seq_len": lambda w, t: (sft(w, t, SFT_ROWS, cfg='seq_len = 4\noverlong = "drop"\n'), "seq_len 4"),
    "sft: seq_len beyond the model": lambda w, t: (sft(w, t, SFT_ROWS, cfg="seq_len = 128\n"), "max_position_embeddings"),
    "sft: negative LR": lambda w, t: (sft(w, t, SFT_ROWS, "--lr=-1"), "lrs"),
    "sft: unknown config field": lambda w, t: (sft(w, t, SFT_ROWS, cfg="learning_rate = 1\n"), "learning_rate"),
    "sft: bad template": lambda w, t: (sft(w, t, SFT_ROWS, cfg='seq_len = 32\n[template]\nprompt = "{nope}"\n'), "template.prompt"),
    "sft: response placeholder in the prompt": lambda w, t: (sft(w, t, SFT_ROWS, cfg='seq_len = 32\n[template]\nprompt = "{prompt} {response}"\n'), "template.prompt"),
    "sft: unknown schedule": lambda w, t: (sft(w, t, SFT_ROWS, cfg='seq_len = 32\nschedule = "wiggly"\n'), "schedule"),
    "sft: exp schedule to zero": lambda w, t: (sft(w, t, SFT_ROWS, cfg='seq_len = 32\nschedule = "exp"\n'), "final_lr_fraction"),
    "sft: --out is a file": lambda w, t: (sft(w, t, SFT_ROWS)[:5] + [write(t, "f", "x")] + sft(w, t, SFT_ROWS)[6:], "--out"),
    "check-format: missing path": lambda w, t: (["data", "check-format", t / "nope.jsonl"], "nope.jsonl"),
    # integration rounds, optimize
    "integrate propose: anchor share below the minimum": lambda w, t: (["integrate", "propose", t / "none", "--out", t / "r.toml", "--anchor-share", "0.1"], "--anchor-share 0.1: below the minimum anchor share"),
    "integrate propose: --tokens-scale 0": lambda w, t: (["integrate", "propose", t / "none", "--out", t / "r.toml", "--tokens-scale", "0"], "--tokens-scale"),
    "integrate run: anchor share below the minimum": lambda w, t: (["integrate", "run", write(t, "r.toml", ROUND_LOW_ANCHOR), "--out", t / "hist"], "anchor_share: 0.1 is below the minimum"),
    "optimize: --tokens and --tokens-scale": lambda w, t: (["optimize", t / "none", "--out", t / "r.toml", "--tokens", "99", "--tokens-scale", "2"], "--tokens-scale"),
    # demo, benchmarks, validate
    "demo world: scale 0": lambda w, t: (["demo", "world", "--out", t / "world", "--scale", "0"], "--scale"),
    "demo world: scale too big": lambda w, t: (["demo", "world", "--out", t / "world", "--scale", "500"], "--scale"),
    "demo world: --out is a file": lambda w, t: (["demo", "world", "--out", write(t, "f", "x")], "--out"),
    "demo: --workers 0": lambda w, t: (["demo", "--out", t / "demo", "--workers", "0"], "--workers"),
    "demo: --to-end without liu2025": lambda w, t: (["demo", "--out", t / "demo", "--preset", "marin", "--to-end"], "--to-end: only with --preset liu2025"),
    "bench train: --rounds 0": lambda w, t: (["bench", "train", "--rounds", "0"], "--rounds"),
    "bench train: negative --threads": lambda w, t: (["bench", "train", "--threads", "-1"], "--threads"),
    "bench train: --precision fp16": lambda w, t: (["bench", "train", "--precision", "fp16"], "--precision"),
    "bench sft: --steps 0": lambda w, t: (["bench", "sft", "--steps", "0"], "--steps"),
    "bench mix: fewer tokens than a batch": lambda w, t: (["bench", "mix", "--tokens", "100"], "--tokens"),
    "bench calibrate: one seed": lambda w, t: (["bench", "calibrate", "--seeds", "1", "--out", t / "cal"], "--seeds"),
    "validate: no study there": lambda w, t: (["validate", t / "none", "--reference", t / "none"], "results.json"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, w, tmp_path, monkeypatch, capsys):
    argv, needle = CASES[case](w, tmp_path)
    world_before, before = snapshot(w["root"]), snapshot(tmp_path)
    code, err = run_cli(argv, monkeypatch, capsys)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, (code, err[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1500:]
    assert needle in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "the command left files behind"
    assert snapshot(w["root"]) == world_before, "the command changed its inputs"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40
    commands = {c.split(":")[0].split()[0] for c in CASES}
    assert commands >= {"prepare", "mix", "pretrain", "anneal", "eval", "study", "demo", "sft"}


def test_json_snapshot_helper_sees_a_new_file(tmp_path):
    before = snapshot(tmp_path)
    (tmp_path / "x").write_text(json.dumps({}))
    assert snapshot(tmp_path) != before


def _paths(d: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out += _paths(v[0], (*prefix, k, 0))
    return out


def test_randomly_mutated_study_files_never_escape_as_a_traceback(w, tmp_path_factory):
    """Property: any mutation of a valid study file ends in a plan (exit 0) or one error line
    (exit 2); never a traceback, never a file written by --dry-run."""
    import tomllib

    import tomli_w
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    valid = tomllib.loads(study_text(w))
    values = st.one_of(
        st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=20), st.booleans(),
        st.lists(st.integers(-5, 5), max_size=3),
        st.dictionaries(st.text(max_size=6), st.floats(), max_size=2),
    )  # fmt: skip
    ops = st.sampled_from(["delete", "set", "rename"])

    @settings(
        max_examples=int(os.environ.get("MIDTRAIN_PROPERTY_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(data):
        import copy

        doc = copy.deepcopy(valid)
        for _ in range(data.draw(st.integers(1, 3))):
            paths = _paths(doc)
            if not paths:
                break
            path = data.draw(st.sampled_from(paths))
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            op, key = data.draw(ops), path[-1]
            if op == "delete" and isinstance(parent, dict):
                parent.pop(key)
            elif op == "rename" and isinstance(parent, dict):
                parent[data.draw(st.text(min_size=1, max_size=8))] = parent.pop(key)
            else:
                parent[key] = data.draw(values)
        tmp = tmp_path_factory.mktemp("prop")
        study = tmp / "study.toml"
        study.write_text(tomli_w.dumps(doc))
        before = snapshot(tmp, w["root"])
        old, err = sys.argv, io.StringIO()
        sys.argv = ["midtrain", "study", "run", str(study), "--out", str(tmp / "o"), "--dry-run"]
        try:
            with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
                with contextlib.redirect_stderr(err):
                    main()
        finally:
            sys.argv = old
        assert e.value.code in (0, 2), (e.value.code, err.getvalue()[-800:])
        if e.value.code == 2:
            lines = [x for x in err.getvalue().splitlines() if x.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()[-800:]
        assert snapshot(tmp, w["root"]) == before

    check()


def test_small_demo_world_is_written_and_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["midtrain", "demo", "world", "--out", str(tmp_path / "w"),
                                      "--scale", "0.05"])  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["scale"] == 0.05
    assert (tmp_path / "w" / "world.json").is_file()


def test_dry_run_shows_any_name_as_written(w, tmp_path, monkeypatch, capsys):
    names = ["web[v2]", "数学", "n" * 300, "[red]x[/red]"]
    text = study_text(w, name='"[study]"').split("[[candidates]]")[0]
    for n in names:
        text += f"[[candidates]]\nname = {json.dumps(n)}\nmix = {{ math = 1.0 }}\nmax_repetition = 50.0\n"
    monkeypatch.setattr(sys, "argv", ["midtrain", "study", "run", str(write(tmp_path, "s.toml", text)),
                                      "--out", str(tmp_path / "o"), "--dry-run"])  # fmt: skip
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    for n in names:
        assert f"{n}@0.3/s0" in out.out
    assert not (tmp_path / "o").exists()
