"""`midtrain bench memory`: the analytic need by hand, the activation count against autograd's own
saved tensors, and the command end to end on a tiny model (one process, two FSDP2 ranks, eval)."""

from __future__ import annotations

import json

import pytest
import torch

from midtrain.bench.memory import MIB, PRESETS, activation_floats, analytic_need
from midtrain.cli import main

SMALL = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 500,
         "tie_word_embeddings": False, "max_position_embeddings": 64}  # fmt: skip


def test_analytic_need_is_16_bytes_a_parameter_plus_activations():
    d, f, layers, v = 64, 128, 2, 512  # the tiny preset, counted by hand
    n = 2 * v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d
    per_token = layers * (8 * d + 2 * d + 4 * f + 4 + 2) + 3 * d + 1 + 2 * 16 + 3 * v
    need = analytic_need(PRESETS["tiny"], seq_len=32, micro_batch=2)
    assert need["params"] == n == 147_776
    assert need["weights_mib"] == round(4 * n / MIB, 1) and need["adam_moments_mib"] == round(
        8 * n / MIB, 1
    )
    assert need["activations_mib"] == round(4 * 2 * 32 * per_token / MIB, 1)
    assert need["need_mib"] == pytest.approx((16 * n + 4 * 2 * 32 * per_token) / MIB, abs=0.05)


def test_activation_count_matches_what_autograd_saves():
    """Every tensor the forward saves for the backward (grouped query attention included), plus the
    two vocab-sized gradients alive at the start of the backward, is what the formula counts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from midtrain.train.optim import lm_loss

    kwargs = dict(SMALL)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    )
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in weights and t.is_floating_point():
            saved[s.data_ptr()] = s.nbytes()
        return t

    b, s = 2, 48
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss(model, torch.randint(0, 500, (b, s)))
    counted = 4 * (activation_floats(SMALL, s, b) - 2 * b * s * SMALL["vocab_size"])
    assert sum(saved.values()) == pytest.approx(counted, rel=0.01)


def test_an_unknown_preset_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "memory", "--params", "1b"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --params: '1b'") and err.count("\n") == 1


@pytest.mark.slow
def test_bench_memory_tiny(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "memory", "--json", "--params", "tiny", "--steps", "2", "--seq-len", "32",
              "--eval-limit", "3"])  # fmt: skip
    assert e.value.code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["errors"] == {}
    for key in ("analytic", "single", "fsdp", "eval", "ratio_single_vs_analytic", "meets_single",
                "ratio_fsdp_rank_vs_single", "ratio_fsdp_max", "meets_fsdp", "targets"):  # fmt: skip
        assert key in res, key
    assert res["analytic"] == analytic_need(PRESETS["tiny"], 32, 1)
    single, ranks, ev = res["single"], res["fsdp"], res["eval"]
    assert len(single["step_peaks_mib"]) == 2 and single["peak_growth_mib"] > 0
    assert res["ratio_single_vs_analytic"] == round(
        single["peak_growth_mib"] / res["analytic"]["need_mib"], 3
    )
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["peak_growth_mib"] > 0 for r in ranks)
    # the two ranks take the one process's global batch: the same losses, step by step
    for r in ranks:
        assert r["step_loss"] == pytest.approx(single["step_loss"], abs=1e-3)
    assert ev["peak_growth_mib"] > 0 and ev["task_examples"] == 9 and ev["examples_per_s"] > 0
    fixed = res["fixed_mmap_threshold"]  # the same steps with glibc returning freed memory at once
    assert fixed["single"]["step_loss"] == single["step_loss"] and len(fixed["fsdp"]) == 2
    assert fixed["single"]["peak_growth_mib"] > 0 and "error" not in fixed["fsdp"][1]
