"""Evaluation: bpb against a direct computation, lm-eval offline, pairing, caching, the lm_eval CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from midtrain.errors import MidtrainError

TINY = {
    "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}  # fmt: skip
TASKS = ["world_arith", "world_code", "world_facts"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny world, its stores, and two checkpoints written by the trainer (2 and 4 steps)."""
    from midtrain import train
    from midtrain.demo.pipeline import DemoSettings, build_world_and_stores

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalworld")
    ctx = build_world_and_stores(root, DemoSettings(scale=0.05, vocab_size=384))
    web = ctx["stores"]["web"]
    ckpts = []
    for steps in (2, 4):
        rc = {
            "model": dict(TINY, vocab_size=web.vocab_size), "tokenizer": str(ctx["tokenizer"]),
            "stores": {"web": str(web.path)}, "mix": [{"source": "web", "ratio": 1.0}],
            "tokens": steps * 1024, "seq_len": 64, "batch_tokens": 1024, "micro_batch": 16,
            "seed": 0, "schedule": {"name": "constant", "start_lr": 1e-3},
        }  # fmt: skip
        train.run(train.load_run_config(rc), root / f"run{steps}", progress=False)
        ckpts.append(root / f"run{steps}" / "final")
    return {
        "root": root,
        "ckpts": ckpts,
        "tasks": ctx["world_dir"] / "tasks",
        "stores": ctx["stores"],
    }


def test_bpb_matches_direct_computation(env):
    from midtrain.eval.domains import domain_records
    from midtrain.train.checkpoint import load_model

    model = load_model(env["ckpts"][0]).eval()
    store = env["stores"]["web"]
    recs = domain_records(model, store, batch_size=7, max_len=48)  # forces windows + padding
    docs, nbytes = store.heldout_docs(), store.heldout_bytes()
    assert len(recs) == len(docs) >= 3
    for rec, doc, nb in zip(recs, docs, nbytes, strict=True):
        nll = 0.0
        ids = [store.eos_id, *map(int, doc)]
        with torch.no_grad():  # one token at a time, the plain way: windows restart the context
            for start in range(0, len(ids) - 1, 47):
                w = torch.tensor([ids[start : start + 48]])
                lp = torch.log_softmax(model(input_ids=w).logits[0, :-1].double(), -1)
                nll -= lp.gather(-1, w[0, 1:, None]).sum().item()
        assert rec.tokens == len(doc) and rec.bytes == nb and rec.domain == "web"
        assert rec.nll == pytest.approx(nll, rel=1e-4)
        assert rec.bpb == pytest.approx(nll / (math.log(2) * nb), rel=1e-4)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tasks_offline_records_pair_up_and_cache(env, no_network, tmp_path, monkeypatch):
    from midtrain.eval import api as evaluation

    domains = {"web": env["stores"]["web"].path, "code": env["stores"]["code"].path}
    results = []
    for i, ck in enumerate(env["ckpts"]):
        results.append(evaluation.evaluate(ck, tasks=TASKS, include_path=env["tasks"], domains=domains,
                                           out=tmp_path / f"e{i}", limit=20))  # fmt: skip
    recs = [[json.loads(x) for x in (tmp_path / f"e{i}" / "examples.jsonl").read_text().splitlines()]
            for i in range(2)]  # fmt: skip
    keys = [[(r["kind"], r.get("task") or r.get("domain"), r["doc_id"]) for r in rs] for rs in recs]
    assert keys[0] == keys[1]
    tasks = [r for r in recs[0] if r["kind"] == "task"]
    assert {r["task"] for r in tasks} == set(TASKS) and len(tasks) == 60
    for r in tasks:
        assert r["acc"] in (0.0, 1.0)
        assert r["gold_logprob_per_byte"] < 0
    _check_gold_logprob(env, [r for r in tasks if r["task"] == "world_arith"][:5])
    assert recs[0] != recs[1]  # different weights, different scores
    agg = results[0].results
    assert set(agg.tasks) == set(TASKS) and agg.tasks["world_facts"].acc.n == 20
    assert agg.domains["web"].bpb.mean > 0

    # The same evaluation again is served from the cache without loading the model.
    monkeypatch.setattr(evaluation, "_load", lambda *a, **k: pytest.fail("model loaded again"))
    again = evaluation.evaluate(env["ckpts"][0], tasks=TASKS, include_path=env["tasks"], domains=domains,
                                out=tmp_path / "e0", limit=20)  # fmt: skip
    assert again == results[0]

    # A copied study folder (checkpoint and evaluation moved together) is still served from the
    # cache, and the eval stage sees it as finished once the paths are recorded again.
    import shutil

    from midtrain.eval.api import EvalSettings
    from midtrain.eval.stage import EvalJob, EvalStage

    moved = tmp_path / "copy"
    shutil.copytree(env["ckpts"][0], moved / "final")
    shutil.copytree(tmp_path / "e0", moved / "eval")
    settings = EvalSettings(tasks=TASKS, include_path=str(env["tasks"]), limit=20)
    job = EvalJob(checkpoint=str(moved / "final"), settings=settings,
                  domains={k: str(v) for k, v in domains.items()})  # fmt: skip
    assert EvalStage().cached(job, moved / "eval") is None  # recorded paths are the old ones
    res = evaluation.evaluate(moved / "final", tasks=TASKS, include_path=env["tasks"],
                              domains=domains, out=moved / "eval", limit=20)  # fmt: skip
    assert res.results == results[0].results and res.checkpoint == str(moved / "final")
    assert EvalStage().cached(job, moved / "eval") == res


def _check_gold_logprob(env, recs):
    """gold_logprob_per_byte = log P(" " + gold | prompt) / bytes, computed here directly."""
    from midtrain.eval.api import _load

    model, tok = _load(env["ckpts"][0], "cpu")
    items = [json.loads(x) for x in (env["tasks"] / "world_arith.jsonl").read_text().splitlines()]
    for r in recs:
        item = items[r["doc_id"]]
        context = f"Question: {item['question']}\nAnswer:"
        cont = " " + item["choices"][item["answer"]]
        whole, ctx = tok(context + cont)["input_ids"], tok(context)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), -1)
        ll = sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
        assert r["gold_logprob_per_byte"] == pytest.approx(ll / len(cont.encode()), rel=1e-4)


def test_per_task_settings_override_the_defaults(env, tmp_path):
    """limit and num_fewshot per task: fewer examples for one task, few-shot prompts for another."""
    from midtrain.eval import api as evaluation

    res = evaluation.evaluate(
        env["ckpts"][0], tasks=TASKS, include_path=env["tasks"], out=tmp_path / "e", limit=12,
        task_settings={"world_arith": {"limit": 5}, "world_code": {"num_fewshot": 2, "limit": 4}},
    )  # fmt: skip
    counts = {t: res.results.tasks[t].acc.n for t in TASKS}
    assert counts == {"world_arith": 5, "world_code": 4, "world_facts": 12}
    zero = evaluation.evaluate(env["ckpts"][0], tasks=["world_code"], include_path=env["tasks"],
                               out=tmp_path / "z", limit=4)  # fmt: skip
    recs = {
        name: [json.loads(x) for x in (tmp_path / name / "examples.jsonl").read_text().splitlines()]
        for name in ("e", "z")
    }
    code = [r for r in recs["e"] if r.get("task") == "world_code"]
    assert [r["doc_id"] for r in code] == [r["doc_id"] for r in recs["z"]]
    # two worked examples in the prompt change every choice's log-likelihood
    assert [r["gold_logprob_per_byte"] for r in code] != [
        r["gold_logprob_per_byte"] for r in recs["z"]
    ]
    assert zero.key != res.key


def test_unknown_task_fails_before_model_load(env, tmp_path, monkeypatch):
    from midtrain.eval import api as evaluation
    from midtrain.eval.lmeval import validate_tasks

    monkeypatch.setattr(evaluation, "_load", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(MidtrainError, match="'no_such_task' is not known"):
        evaluation.evaluate(env["ckpts"][0], tasks=["no_such_task"], include_path=env["tasks"],
                            out=tmp_path / "x")  # fmt: skip
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "tasks"
    broken.mkdir()
    (broken / "t.yaml").write_text(
        (env["tasks"] / "world_arith.yaml")
        .read_text()
        .replace("world_arith", "missing_data")
        .replace(
            "custom_dataset: !function world_data.load_test\n", ""
        )  # plain json loader, no file
    )
    with pytest.raises(MidtrainError, match="'missing_data'"):
        validate_tasks(["missing_data"], broken)


@pytest.mark.slow
def test_trainer_checkpoint_loads_in_lm_eval_cli(env, tmp_path):
    envv = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf")
    )
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={env['ckpts'][1]}", "--tasks", "world_arith", "--include_path", str(env["tasks"]),
           "--limit", "5", "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, env=envv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "world_arith" in proc.stdout and "acc" in proc.stdout


def test_lm_eval_glue_checks_its_version_and_patches(env):
    import lm_eval.evaluator
    import lm_eval.utils

    from midtrain.eval import lmeval

    for bad in ("0.4.4", "0.4.11", "0.5.0", "1.0"):
        with pytest.raises(MidtrainError, match="midtrain supports lm-eval >=0.4.12,<0.5"):
            lmeval.check_version(bad)
    assert lmeval.check_version("0.4.13") == "0.4.13"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"lm-eval[hf]{lmeval.SUPPORTED_RANGE}"' in pyproject  # one range, stated twice
    lmeval.task_manager(env["tasks"])  # applies the patches
    assert lm_eval.utils.env.from_string("{{x}}") is lm_eval.utils.env.from_string("{{x}}")
    assert lm_eval.evaluator.get_git_commit_hash() is None  # no `git` subprocess per eval
    assert lm_eval.evaluator.add_env_info({}) is None
    from lm_eval.tasks._factory import TaskFactory  # relative data_files: the YAML's folder

    assert TaskFactory._load_full_config._midtrain


def test_domains_are_labelled_by_their_name_and_need_the_checkpoints_tokenizer(env, tmp_path):
    from midtrain.eval import evaluate

    res = evaluate(env["ckpts"][0], domains={"held": env["stores"]["web"].path}, out=tmp_path / "e")
    assert list(res.results.domains) == ["held"]
    recs = [json.loads(x) for x in (tmp_path / "e" / "examples.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in recs} == {"held"}
    other = tmp_path / "other"
    from _data_fixtures import make_docs, train_tiny_tokenizer

    from midtrain.data.prepare import prepare_source

    src = tmp_path / "o.txt"
    src.write_text("\n".join(make_docs(20)))
    prepare_source("o", [src], other, str(train_tiny_tokenizer(tmp_path / "tok")))
    with pytest.raises(MidtrainError, match="domains.o: .* another tokenizer"):
        evaluate(env["ckpts"][0], domains={"o": other}, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_world_generative_arithmetic_scores_greedy_answers_by_exact_match(env, tmp_path):
    """world_arith_gen: one record per problem whose exact match is that of the first number in
    the greedy continuation (at most 4 tokens, cut at a newline), generated here directly."""
    import re

    from midtrain.eval import Examples
    from midtrain.eval import api as evaluation

    res = evaluation.evaluate(env["ckpts"][1], tasks=["world_arith_gen"], include_path=env["tasks"],
                              out=tmp_path / "g", limit=8)  # fmt: skip
    recs = Examples.load(tmp_path / "g").tasks["world_arith_gen"]
    assert len(recs) == 8 and res.results.tasks["world_arith_gen"].score.n == 8
    items = [
        json.loads(x) for x in (env["tasks"] / "world_arith_gen.jsonl").read_text().splitlines()
    ]
    model, tok = evaluation._load(env["ckpts"][1], "cpu")
    for i, r in recs.items():
        assert r.score_metric == "exact_match" and r.filter == "first-number"
        assert r.score == r.exact_match and r.acc is None
        ids = tok(f"Question: {items[i]['question']}\nAnswer:", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id
            )
        text = tok.decode(out[0, ids.shape[1] :]).split("\n")[0]
        number = (re.findall(r"(-?\d+)", text) or ["[invalid]"])[0]  # lm-eval's regex filter
        assert r.response == number and r.exact_match == float(number == items[i]["answer"])


def test_a_damaged_eval_json_is_one_line_naming_file_and_field(tmp_path):
    """eval.json's settings are typed: a hand-edited limit of the wrong type is refused in one
    line naming the file and the field, and a well-formed record still loads as written."""
    from midtrain.eval.results import EvalResult

    rec = {"key": "k", "checkpoint": "c", "tasks": ["t"], "include_path": None, "domains": {},
           "settings": {"limit": 5, "num_fewshot": 0, "seed": 0, "task_settings": {}, "x": 1},
           "results": {"tasks": {}, "domains": {}}, "seconds": 1.0, "timing": {}}  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(rec))
    assert EvalResult.load(tmp_path).settings == rec["settings"]  # extra keys kept
    rec["settings"]["limit"] = "x"
    (tmp_path / "eval.json").write_text(json.dumps(rec))
    with pytest.raises(MidtrainError) as e:
        EvalResult.load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "eval.json") in msg and "settings" in msg
