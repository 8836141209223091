"""`midtrain merge`: the average equals a hand-computed one (uniform, weighted, fp32, bf16,
sharded), the output loads in transformers with the averaged logits, and every mismatch is refused
with one line before anything is written. Plus `bench merge` at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_fixtures import TINY, sentences
from safetensors.torch import load_file, save_file

from midtrain.cli import main
from midtrain.merge import merge_checkpoints

LLAMA = {**TINY["llama"], "vocab_size": 300}


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """Two different byte-level BPE tokenizers of the same vocabulary size."""
    from midtrain.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("toks")
    train_tokenizer(sentences(60, 0), 300, root / "a")
    train_tokenizer(sentences(60, 5, numbers=True), 300, root / "b")
    return root / "a", root / "b"


def save(root: Path, name: str, tok: Path, seed: int, dtype=torch.float32, shard=None, **cfg):
    """A tiny random Llama (or `model_type`) HF folder with the tokenizer files of `tok`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kind = cfg.pop("model_type", "llama")
    kwargs = (
        {**LLAMA, **cfg}
        if kind == "llama"
        else {"vocab_size": 300, **TINY[kind], "bos_token_id": 0, "eos_token_id": 0, **cfg}
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **kwargs)).to(dtype)
    out = root / name
    model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    for f in tok.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def state(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def hand_average(paths: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    sds = [state(p) for p in paths]
    return {
        k: sum(w / total * sd[k].float() for w, sd in zip(weights, sds, strict=True)).to(
            sds[0][k].dtype
        )
        for k in sds[0]
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=0, msg=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.0], [2.0, 1.0, 1.0]])
def test_average_equals_hand_average(tmp_path, toks, dtype, weights):
    ins = [save(tmp_path, f"m{i}", toks[0], seed=i, dtype=dtype) for i in range(3)]
    (ins[0] / "midtrain_state").mkdir()  # training state is never copied into the merge
    (ins[0] / "midtrain_state" / "optimizer.pt").write_bytes(b"x")
    rec = merge_checkpoints(ins, tmp_path / "out", weights)
    expected = hand_average(ins, weights or [1, 1, 1])
    assert_same(state(tmp_path / "out"), expected)
    other = hand_average(ins, [1, 1, 1] if weights else [1, 3, 0])
    assert not torch.equal(expected["lm_head.weight"], other["lm_head.weight"])  # weights matter
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"config.json", "generation_config.json", "tokenizer.json",
                     "tokenizer_config.json", "model.safetensors", "merge.json"}  # fmt: skip
    assert json.loads((tmp_path / "out" / "merge.json").read_text()) == rec
    assert rec["format"] == "midtrain-merge/1" and rec["tensors"] == len(expected)
    assert rec["dtype"] == str(dtype).removeprefix("torch.")
    assert rec["inputs"][0]["path"] == str(ins[0].resolve())
    assert rec["inputs"][0]["files"]["model.safetensors"]["size"] > 0
    assert sum(rec["weights"]) == pytest.approx(1.0)


def test_sharded_in_and_out_and_loads_with_averaged_logits(tmp_path, toks):
    from transformers import AutoConfig, AutoModelForCausalLM

    plain = [save(tmp_path, f"p{i}", toks[0], seed=i) for i in range(2)]
    sharded = [save(tmp_path, f"s{i}", toks[0], seed=i, shard="20KB") for i in range(2)]
    assert (sharded[0] / "model.safetensors.index.json").is_file()
    merge_checkpoints(plain, tmp_path / "ref")
    rec = merge_checkpoints([sharded[0], plain[1]], tmp_path / "out", max_shard_bytes=50_000)
    assert rec["shards"] > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == rec["total_size"]
    assert set(index["weight_map"]) == set(state(plain[0]))
    assert_same(state(tmp_path / "out"), state(tmp_path / "ref"))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(plain[0])).eval()
    ref.load_state_dict(hand_average(plain, [1, 1]))
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-6)


def cli(args: list, capsys) -> tuple[int, str, str]:
    """`midtrain merge ARGS` through the CLI: exit code, stdout, stderr."""
    capsys.readouterr()  # drop what the fixtures printed (save_pretrained's progress bar)
    with pytest.raises(SystemExit) as e:
        main(["merge", *map(str, args)])
    res = capsys.readouterr()
    return e.value.code, res.out, res.err


def test_already_merged_is_a_noop_and_other_out_refused(tmp_path, toks, capsys):
    ins = [save(tmp_path, f"m{i}", toks[0], seed=i) for i in range(2)]
    out = tmp_path / "out"
    code, stdout, _ = cli([*ins, "--out", out, "--weights", "1,3"], capsys)
    assert code == 0 and "merged 2 checkpoints (weights 0.25, 0.75)" in stdout
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = cli([*ins, "--out", out, "--weights", "2,6"], capsys)  # same normalised
    assert code == 0 and "already merged" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, _, err = cli([*ins, "--out", out], capsys)  # other weights: refused, untouched
    assert code == 2 and err.startswith("error: merge: --out") and err.count("\n") == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _edit_tensors(path: Path, edit) -> Path:
    """Rewrite the single weight file of `path` with `edit(state_dict)` applied."""
    sd = load_file(path / "model.safetensors")
    edit(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _int_buffer(path: Path, value: int) -> Path:
    return _edit_tensors(path, lambda sd: sd.update({"model.step_count": torch.tensor([value, 7])}))


BAD = {  # case -> (what to change in the second checkpoint, expected words in the error)
    "vocab": ({"vocab_size": 320}, "vocab_size"),
    "hidden": ({"hidden_size": 48}, "hidden_size"),
    "arch": ({"model_type": "gpt2"}, "one architecture"),
    "tokenizer": ("tok", "tokenizer"),
    "tensor_shape": ("shape", "has shape [33] in"),
    "tensor_dtype": ("dtype", "is BF16 in"),
    "tensor_names": ("names", "other tensors"),
    "int_buffer": ("int", "non-float tensor model.step_count"),
    "negative_weight": (["--weights", "1,-1"], ">= 0"),
    "weight_count": (["--weights", "1,1,1"], "3 values for 2"),
    "zero_weights": (["--weights", "0,0"], "sum to 0"),
    "not_numbers": (["--weights", "a,b"], "comma-separated"),
    "one_input": ("one", "at least 2"),
    "out_is_input": ("out=in", "overlaps the input"),
    "no_config": ("noconfig", "no config.json"),
    "no_weights": ("noweights", "no safetensors weights"),
    "truncated": ("truncated", "not a complete safetensors file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_mismatches_refused_with_one_line_and_nothing_written(tmp_path, toks, capsys, case):
    change, words = BAD[case]
    a = save(tmp_path, "a", toks[0], seed=0)
    cfg = change if isinstance(change, dict) else {}
    b = save(tmp_path, "b", toks[1] if change == "tok" else toks[0], seed=1, **cfg)
    if change == "int":
        _int_buffer(a, 1), _int_buffer(b, 2)
    edits = {
        "shape": lambda sd: sd.update({"model.norm.weight": torch.ones(33)}),
        "dtype": lambda sd: sd.update({"lm_head.weight": sd["lm_head.weight"].bfloat16()}),
        "names": lambda sd: sd.pop("model.norm.weight"),
    }
    if isinstance(change, str) and change in edits:  # same config.json, other tensors
        _edit_tensors(b, edits[change])
    if change == "noconfig":
        (b / "config.json").unlink()
    if change == "noweights":
        (b / "model.safetensors").unlink()
    if change == "truncated":
        data = (b / "model.safetensors").read_bytes()
        (b / "model.safetensors").write_bytes(data[:-100])
    out = b if change == "out=in" else tmp_path / "new" / "out"
    args = [a] if change == "one" else [a, b]
    snapshot = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = cli([*args, "--out", out, *(change if isinstance(change, list) else [])], capsys)
    assert code == 2, err
    assert err.startswith("error: merge") and err.count("\n") == 1 and words in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == snapshot
    assert not (tmp_path / "new").exists()


def test_int_buffers_equal_are_kept(tmp_path, toks):
    ins = [_int_buffer(save(tmp_path, f"m{i}", toks[0], seed=i), 5) for i in range(2)]
    merge_checkpoints(ins, tmp_path / "out")
    assert torch.equal(state(tmp_path / "out")["model.step_count"], torch.tensor([5, 7]))


def test_bench_merge_tiny(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "merge", "--json", "--params", "2e5", "--shards", "2"])
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("peak_rss_ratio", "peak_above_baseline_ratio", "baseline_rss_gb", "merge_s",
                "read_gb_per_s", "checkpoint_gb", "output_shards", "meets_goal"):  # fmt: skip
        assert key in res, key
    assert res["input_shards"] == 2 and res["peak_rss_gb"] >= res["baseline_rss_gb"] > 0


def test_merged_task_scores_use_a_generative_tasks_own_score():
    """merge_seeds: per task, the merge's and each seed's score on the primary metric, or a
    generative task's exact match where it has no such metric (never a NaN in results.json)."""
    from midtrain.eval.results import Examples, TaskExample
    from midtrain.stats.merged import _merge_tasks

    def ev(lp: float, em: float) -> Examples:
        return Examples([
            TaskExample(task="mc", doc_id=0, acc=1.0, gold_logprob_per_byte=lp),
            TaskExample(task="gen", doc_id=0, exact_match=em, score=em, score_metric="exact_match"),
            TaskExample(task="bleu", doc_id=0),  # no metric midtrain can average
        ])  # fmt: skip

    got = _merge_tasks(ev(-1.0, 1.0), [ev(-2.0, 0.0), ev(-3.0, 1.0)], ["mc", "gen", "bleu"],
                       "gold_logprob_per_byte")  # fmt: skip
    assert set(got) == {"mc", "gen"}
    assert (got["mc"].merge, got["mc"].seeds) == (-1.0, [-2.0, -3.0])
    assert (got["gen"].merge, got["gen"].seeds) == (1.0, [0.0, 1.0])
