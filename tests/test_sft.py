"""SFT probes: the response mask, a GPT-NeoX fine-tune whose validation loss drops, the LR grid,
bit-identical resume after SIGKILL, the chat special-token scan, the overlong policy and the stage.
Bad inputs of `midtrain sft` are in tests/test_malformed.py with every other command's."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_fixtures import save_tiny_model, sentences

from midtrain import io
from midtrain.cli import main
from midtrain.io import read_json
from midtrain.sft import data, formatcheck
from midtrain.sft.config import SftConfig, SftConfigRecord, SftIdentity, SftTemplate
from midtrain.sft.grid import BEFORE, SftInputs
from midtrain.sft.plan import ResolvedConfig, ResolvedRecord
from midtrain.sft.results import GridPoint

FAST = {"seq_len": 32, "batch_size": 8, "micro_batch": 4, "threads": 1, "warmup_fraction": 0.1}


def sums(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a} plus {b}", "response": f"{a + b}"})
    return rows


def chats(n: int, seed: int) -> list[dict]:
    """Two-turn `messages` rows of the same sums."""
    a, b = sums(n, seed), sums(n, seed + 100)
    return [{"messages": [{"role": "user", "content": x["prompt"]},
                          {"role": "assistant", "content": x["response"]},
                          {"role": "user", "content": y["prompt"]},
                          {"role": "assistant", "content": y["response"]}]}
            for x, y in zip(a, b, strict=True)]  # fmt: skip


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    from midtrain.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("sft")
    tok = train_tokenizer(sentences(300, 0) + sentences(300, 1, numbers=True), 300, root / "tok")
    return {
        "root": root,
        "tok": tok,
        "neox": save_tiny_model(root, "gpt_neox", str(root / "tok")),
        "gpt2": save_tiny_model(root, "gpt2", str(root / "tok")),
        "train": write_rows(root / "train.jsonl", sums(100, 0) + chats(20, 0)),
        "val": write_rows(root / "val.jsonl", sums(24, 1)),
    }


def cli(argv: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


# -- rendering and the mask --------------------------------------------------------------------------


def test_rows_render_in_plain_text_with_eos_after_each_response(w):
    t, tok = SftTemplate(), w["tok"]
    segs = data.render({"prompt": "2 plus 3", "response": "5"}, "x", t)
    assert [s for s, _ in segs] == ["Question: 2 plus 3\nAnswer:", " 5", data.EOS]
    ex = data.tokenise(segs, tok)
    assert ex.ids[-1] == tok.eos_token_id and ex.response[-1]
    assert tok.decode(ex.ids[ex.response][:-1]) == " 5" and ex.response_bytes == 2
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 plus 3"},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "and 1 plus 1"},
            {"role": "assistant", "content": "2"}]  # fmt: skip
    segs = data.render({"messages": chat}, "x", t)
    text = "".join("<EOS>" if s is None else s for s, _ in segs)
    assert text == ("System: Be brief.\nUser: 2 plus 3\nAssistant: 5<EOS>\nUser: and 1 plus 1\n"
                    "Assistant: 2<EOS>")  # fmt: skip
    assert [s for s, r in segs if r] == [" 5", None, " 2", None]  # loss on assistant turns only


class LeafModel(torch.nn.Module):
    """Returns fixed logits as a leaf tensor, so their gradient shows which positions count."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.leaf = logits.clone().requires_grad_(True)

    def forward(self, input_ids, use_cache=False):  # noqa: ANN001
        return type("Out", (), {"logits": self.leaf})()


def test_prompt_tokens_contribute_nothing_to_the_loss_or_its_gradient(w):
    from midtrain.sft.run import sft_loss

    tok = w["tok"]
    rows = [{"prompt": "1 plus 2 plus 3", "response": "6"}, {"prompt": "4", "response": "4 4"}]
    batch = [data.tokenise(data.render(r, "x", SftTemplate()), tok) for r in rows]
    ids, labels = data.collate(batch, tok.pad_token_id, train_on_prompt=False)
    model = LeafModel(torch.randn(*ids.shape, 300, generator=torch.Generator().manual_seed(0)))
    loss = sft_loss(model, (ids, labels))
    loss.backward()
    grad = model.leaf.grad.abs().sum(-1)  # position i predicts token i + 1
    trained = torch.zeros_like(ids, dtype=torch.bool)
    for i, e in enumerate(batch):
        trained[i, : len(e.ids) - 1] = torch.from_numpy(e.response[1:])
    assert (grad[trained] > 0).all() and (grad[~trained] == 0).all()
    assert data.n_targets(batch, False) == int(trained.sum())
    # a different prompt token (hence label) leaves the loss as it was
    ids2 = ids.clone()
    ids2[0, 1] = (ids2[0, 1] + 7) % 300
    batch2 = [data.Example(ids2[0, : len(batch[0].ids)].numpy(), batch[0].response, 1), batch[1]]
    assert torch.equal(sft_loss(model, data.collate(batch2, tok.pad_token_id, False)), loss)
    # with the prompt trained, the prompt positions count too
    _, all_labels = data.collate(batch, tok.pad_token_id, train_on_prompt=True)
    assert sft_loss(model, (ids, all_labels)) > loss


def test_a_step_is_cut_into_micro_batches_by_length_and_accumulates_to_one_batch(w, tmp_path):
    from safetensors.torch import load_file

    from midtrain.sft import run_sft

    exs = [data.Example(np.arange(n), np.ones(n, bool), n) for n in (2, 9, 3, 8)]
    assert [[len(e.ids) for e in b] for b in data.micro_batches(exs, 2)] == [[2, 3], [8, 9]]
    assert data.pad_fraction(exs, 4, 2, seed=0) == pytest.approx(1 - 22 / 24)
    fields = {**FAST, "epochs": 1, "lrs": [3e-3], "checkpoint_every": 0, "data": str(w["train"]),
              "val": str(w["val"]), "checkpoint": str(w["neox"])}  # fmt: skip
    weights, losses = [], []
    for micro in (8, 2):  # one micro batch per step, or four
        res = run_sft({**fields, "micro_batch": micro}, tmp_path / f"m{micro}", progress=False)
        weights.append(load_file(Path(res.final_checkpoint) / "model.safetensors"))
        log = (Path(res.final_checkpoint).parent / "log.jsonl").read_text().splitlines()
        losses.append([json.loads(x)["loss"] for x in log])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the mean over the step's targets
    for k in weights[0]:  # 15 Adam steps amplify rounding in near-zero gradients a little
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-3, atol=1e-4)


def test_overlong_examples_lose_their_prompt_from_the_left_or_are_dropped(w):
    tok = w["tok"]
    ex = data.tokenise(data.render({"prompt": "1 plus 2 " * 10, "response": "3"}, "x",
                                   SftTemplate()), tok)  # fmt: skip
    n_resp = int(ex.response.sum())
    cut = data.fit(ex, n_resp + 3, "truncate_prompt")
    assert len(cut.ids) == n_resp + 3 and (cut.ids == ex.ids[-(n_resp + 3) :]).all()
    assert cut.response.sum() == n_resp and not cut.response[:3].any()
    assert data.fit(ex, n_resp + 3, "drop") is None
    assert data.fit(ex, n_resp, "truncate_prompt") is None  # the response alone does not fit
    assert data.fit(ex, len(ex.ids), "drop") is ex


# -- a GPT-NeoX fine-tune through the CLI; the grid ---------------------------------------------------


def test_neox_sft_lowers_the_validation_loss_and_picks_the_lr_by_it(w, tmp_path, monkeypatch,
                                                                    capsys):  # fmt: skip
    import tomli_w
    from transformers import AutoModelForCausalLM

    config = tmp_path / "sft.toml"
    config.write_text(tomli_w.dumps({**FAST, "epochs": 2, "checkpoint_every": 0}))
    out = tmp_path / "out"
    argv = ["sft", w["neox"], "--data", w["train"], "--val", w["val"], "--out", out,
            "--config", config, "--lr", "1e-3", "--lr", "1e-2"]  # fmt: skip
    code, stdout, err = cli(argv, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    res = read_json(out / "sft.json")
    grid = {g["lr"]: g["val_loss"] for g in res["grid"]}
    assert set(grid) == {1e-3, 1e-2} and all(g["status"] == "done" for g in res["grid"])
    assert res["chosen_lr"] == min(grid, key=grid.get) and res["val_loss"] == min(grid.values())
    assert res["val_loss"] < res["val_before"]["loss"] - 1.0, res
    assert res["data"]["val_examples"] == 24 and res["steps"] == 2 * 15
    assert res["data"]["dropped"] == 0 and res["data"]["truncated"] == 20  # chats: prompt cut
    run = out / f"lr-{res['chosen_lr']:g}"
    lines = (run / "val_examples.jsonl").read_text().splitlines()
    assert len(lines) == 24 and {"loss", "tokens", "bits_per_byte"} <= set(json.loads(lines[0]))
    before = [json.loads(x) for x in (out / "val_examples_before.jsonl").read_text().splitlines()]
    mean_before = sum(r["loss"] for r in before) / len(before)
    assert len(before) == 24 and mean_before == pytest.approx(res["val_before"]["loss"])
    assert [
        r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
    ] == list(range(1, 31))
    model = AutoModelForCausalLM.from_pretrained(res["final_checkpoint"])
    assert model.config.model_type == "gpt_neox"
    resolved = read_json(out / "config.json")  # the records' types name every key
    assert set(resolved) == ResolvedConfig.__required_keys__
    assert set(resolved["resolved"]) == ResolvedRecord.__required_keys__
    assert set(read_json(out / "inputs.json")) == SftInputs.__required_keys__
    again = cli(argv, monkeypatch, capsys)  # finished: the same result, nothing recomputed
    assert again[0] == 0 and read_json(out / "sft.json") == res


def test_the_config_records_name_every_field_of_the_config():
    assert SftConfigRecord.__required_keys__ == set(SftConfig.model_fields)
    assert SftIdentity.__required_keys__ == set(SftConfig.model_fields) - {"threads", "parallel"}
    assert set(SftConfig(checkpoint="c", data="d").identity()) == SftIdentity.__required_keys__


def test_the_grid_choice_is_the_argmin_and_diverged_lrs_are_recorded():
    from midtrain.sft.grid import choose
    from midtrain.train.log import Diverged

    grid = [GridPoint(lr=1e-4, status="done", val_loss=2.0, dir="a"),
            GridPoint(lr=3e-4, status="diverged", reason="nan", dir="b"),
            GridPoint(lr=1e-3, status="done", val_loss=1.5, dir="c"),
            GridPoint(lr=3e-3, status="done", val_loss=1.5, dir="d")]  # fmt: skip
    assert choose(grid).lr == 1e-3  # lowest loss; ties go to the first
    with pytest.raises(Diverged, match="every LR"):
        choose([GridPoint(lr=1.0, status="diverged", reason="nan", dir="x")])


def test_a_diverged_lr_is_recorded_and_the_grid_goes_on(w, tmp_path, monkeypatch):
    from midtrain.sft import run, run_sft

    real, calls = run.sft_loss, []

    def poisoned(model, micro):  # noqa: ANN001, ANN202 - the first micro batch's loss is NaN
        calls.append(1)
        loss = real(model, micro)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(run, "sft_loss", poisoned)
    fields = {**FAST, "epochs": 1, "lrs": [1e-3, 1e-2], "checkpoint_every": 0}
    res = run_sft({**fields, "checkpoint": str(w["neox"]), "data": str(w["train"])},
                  tmp_path / "o", progress=False)  # fmt: skip
    bad, good = res.grid
    assert bad.status == "diverged" and "non-finite loss" in bad.reason and bad.val_loss is None
    assert good.status == "done" and res.chosen_lr == 1e-2
    assert read_json(tmp_path / "o" / "lr-0.001" / "status.json")["status"] == "failed"
    assert not (tmp_path / "o" / "lr-0.001" / "final").exists()


def test_a_probe_whose_data_changed_is_not_resumed(w, tmp_path):
    from midtrain.errors import MidtrainError
    from midtrain.sft import run_sft

    data_file = write_rows(tmp_path / "train.jsonl", sums(40, 5))
    cfg = {**FAST, "epochs": 1, "lrs": [1e-3], "checkpoint": str(w["neox"]), "data": str(data_file)}
    run_sft(cfg, tmp_path / "o", progress=False)
    (tmp_path / "o" / "status.json").write_text('{"status": "interrupted"}')  # as if killed
    write_rows(data_file, sums(40, 6))
    with pytest.raises(MidtrainError, match="changed since the probe started"):
        run_sft(cfg, tmp_path / "o", progress=False)


# -- resume --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(w, tmp_path):
    import tomli_w
    from safetensors.torch import load_file

    from midtrain.sft import run_sft

    torch.set_num_threads(1)
    fields = {**FAST, "epochs": 1, "checkpoint_every": 2, "lrs": [3e-3], "data": str(w["train"]),
              "val": str(w["val"])}  # fmt: skip
    run_sft({**fields, "checkpoint": str(w["gpt2"])}, tmp_path / "ref", progress=False)
    config = tmp_path / "sft.toml"
    config.write_text(tomli_w.dumps(fields))
    out, env = tmp_path / "killed", {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "midtrain.cli", "sft", str(w["gpt2"]), "--config", str(config),
           "--out", str(out)]  # fmt: skip
    for kill_at, from_step in [("step:3", 0), ("save:state:4", 2), (None, 2)]:
        env.pop(io.KILL_ENV, None)
        if kill_at:
            env[io.KILL_ENV] = kill_at
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if kill_at:
            assert res.returncode == -signal.SIGKILL, (kill_at, res.stderr[-2000:])
            assert read_json(out / "lr-0.003" / "status.json")["from_step"] == from_step
            # the checkpoint's own validation was written before the first step
            assert (out / BEFORE).read_bytes() == (tmp_path / "ref" / BEFORE).read_bytes()
    assert res.returncode == 0, res.stderr[-2000:]
    a = load_file(tmp_path / "ref" / "lr-0.003" / "final" / "model.safetensors")
    b = load_file(out / "lr-0.003" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, (d / "lr-0.003" / "log.jsonl").read_text().splitlines())]
            for d in (tmp_path / "ref", out)]  # fmt: skip
    assert logs[0] == logs[1] and [s for s, _, _ in logs[1]] == list(range(1, 16))
    ref = read_json(tmp_path / "ref" / "sft.json")
    assert read_json(out / "sft.json")["val_loss"] == ref["val_loss"]
    assert read_json(out / "sft.json")["val_before"] == ref["val_before"]
    (out / "sft.json").unlink()  # every LR done but the file gone: computed again at the end
    (out / BEFORE).unlink()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "sft.json")["val_before"] == ref["val_before"]


# -- the format check ------------------------------------------------------------------------------------


def test_format_check_counts_chat_special_tokens_and_shows_where(w):
    texts = [("a line 1", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>"),
             ("a line 2", "[INST] what [/INST] that </s>"), ("a line 3", "plain text, x < y"),
             ("a line 4", "<|custom_marker|> and the tokenizer's own <|endoftext|>")]  # fmt: skip
    report = formatcheck.scan(texts, w["tok"])
    assert report.texts == 4
    assert dict(report.counts) == {"<|im_start|>": 2, "<|im_end|>": 2, "[INST]": 1, "[/INST]": 1,
                                   "</s>": 1, "<|custom_marker|>": 1, "<|endoftext|>": 1}  # fmt: skip
    assert report.examples[0][0] == "a line 1" and "<|im_start|>" in report.examples[0][1]
    assert formatcheck.scan([("clean", "Question: 1 plus 1\nAnswer: 2")]).total == 0
    assert "'<|im_start|>' written as text 2 times" in report.warnings("data")[0]


def test_dry_run_and_check_format_warn_with_counts_and_write_nothing(w, tmp_path, monkeypatch,
                                                                     capsys):  # fmt: skip
    rows = sums(30, 2) + [{"prompt": "<|im_start|>user 1 plus 1<|im_end|>", "response": "2"}]
    bad = write_rows(tmp_path / "chat.jsonl", rows)
    code, out, err = cli(["sft", w["neox"], "--data", bad, "--out", tmp_path / "o", "--dry-run",
                          "--config", write_cfg(tmp_path)], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert "'<|im_start|>' written as text 1 times" in out and "chat.jsonl line 31" in out
    assert '"steps"' in out and not (tmp_path / "o").exists()
    code, out, _ = cli(["data", "check-format", bad, w["train"]], monkeypatch, capsys)
    assert code == 1 and "'<|im_end|>' written as text 1 times in 31 texts" in out
    assert "120 texts, no chat special tokens" in out
    assert cli(["data", "check-format", w["train"]], monkeypatch, capsys)[0] == 0
    gz = tmp_path / "folder" / "chat.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    code, out, _ = cli(["data", "check-format", gz.parent], monkeypatch, capsys)
    assert code == 1 and "chat.jsonl.gz line 31" in out


def test_check_format_decodes_a_token_store_with_its_tokenizer(w, tmp_path, monkeypatch, capsys):
    from midtrain.data.prepare import prepare_source

    docs = sentences(40, 3) + [
        "<|im_start|>user\nthe cat sees a dog<|im_end|>",
        "[INST] hi [/INST]",
    ]
    src = write_rows(tmp_path / "web.jsonl", [{"text": d} for d in docs])
    store = prepare_source("web", [src], tmp_path / "web", w["tok"], heldout_fraction=0.0,
                           progress=False).path  # fmt: skip
    code, out, _ = cli(["data", "check-format", store, "--tokenizer", w["root"] / "tok"],
                       monkeypatch, capsys)  # fmt: skip
    assert code == 1 and "in 42 texts" in out and "'<|im_end|>' written as text 1 times" in out
    assert "'[INST]' written as text 1 times" in out and "document 40" in out
    code, _, err = cli(["data", "check-format", store], monkeypatch, capsys)
    assert code == 2 and "pass --tokenizer" in err


def write_cfg(tmp_path: Path) -> Path:
    import tomli_w

    p = tmp_path / "fast.toml"
    p.write_text(tomli_w.dumps(FAST))
    return p


# -- the stage -------------------------------------------------------------------------------------------


def test_sft_is_a_registered_stage_whose_jobs_round_trip(w, tmp_path):
    from midtrain.jobs import Job, get_stage
    from midtrain.sft.results import SftResult

    stage = get_stage("sft")
    assert stage.Spec is SftConfig and stage.Result is SftResult
    spec = SftConfig(checkpoint=str(w["neox"]), data=str(w["train"]), lrs=[1e-3])
    job = Job.of("sft", "probe", tmp_path / "p", spec)
    back = Job.model_validate_json(job.model_dump_json())
    assert back.spec == spec and isinstance(back.spec, SftConfig) and back.cached() is None


def test_bench_sft_times_both_loops_on_the_same_unpadded_batches():
    from midtrain.bench.sft import run_bench

    res = run_bench(steps=1, rounds=1, threads=1, warmup=1)
    assert res["sft_tokens_per_step"] == 16 * 256 and res["sft_pad_fraction"] == 0.0
    assert res["ratio_sft_vs_anneal"] > 0 and len(res["rounds"]["sft"]) == 1
