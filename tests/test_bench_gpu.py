"""`midtrain bench gpu` on a machine without CUDA (every CI machine): one error line and exit 2;
the MFU arithmetic, the peak table by device name, the timed tokens/s read from CUDA's log
windows, and the two benchmark models' sizes. The benchmark itself runs in `make test-gpu`."""

from __future__ import annotations

import pytest
import torch

from midtrain.bench import gpu
from midtrain.cli import main


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_without_cuda_bench_gpu_is_one_error_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = cli(["bench", "gpu", "--json"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "error: bench gpu: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
        "machine (make test-gpu runs it after the GPU tests)\n"
    )
    code, _, err = cli(["bench", "gpu", "--steps", "25"], capsys)
    assert (
        code == 2
        and err.startswith("error: --steps: 25 is not a multiple of 10")
        and "pass e.g. 20" in err
    )
    code, _, err = cli(["bench", "gpu", "--model", "7b"], capsys)
    assert (
        code == 2 and err == "error: --model: '7b' is not a benchmark model; use one of 125m, 1b\n"
    )


def test_mfu_is_six_n_tokens_per_second_over_the_peak():
    assert gpu.mfu(100_000_000, 500_000.0, 989e12) == pytest.approx(6 * 1e8 * 5e5 / 989e12)
    assert gpu.mfu(100_000_000, 500_000.0, 989e12) == pytest.approx(0.30334, abs=1e-5)
    assert gpu.mfu(100_000_000, 500_000.0, None) is None


@pytest.mark.parametrize(
    ("name", "flops", "key"),
    [
        ("NVIDIA H200", 989e12, "H200"),
        ("NVIDIA H200 NVL", 835e12, "H200 NVL"),
        ("NVIDIA H100 80GB HBM3", 989e12, "H100"),
        ("NVIDIA H100 PCIe", 756e12, "H100 PCIe"),
        ("NVIDIA A100-SXM4-80GB", 312e12, "A100"),
        ("NVIDIA L40S", 362e12, "L40S"),
        ("NVIDIA L4", 121e12, "L4"),
    ],
)
def test_the_peak_is_looked_up_by_device_name(name, flops, key):
    assert gpu.peak_flops(name) == (flops, f"table: {key}")


def test_an_unknown_gpu_needs_peak_flops_which_always_wins():
    peak, source = gpu.peak_flops("NVIDIA GeForce RTX 4090")
    assert peak is None and "--peak-flops" in source and "RTX 4090" in source
    assert gpu.peak_flops("NVIDIA GeForce RTX 4090", 165e12) == (165e12, "--peak-flops")
    assert gpu.peak_flops("NVIDIA H200", 1e15) == (1e15, "--peak-flops")


def test_timed_tokens_per_s_is_the_timed_windows_tokens_over_their_time():
    # CUDA flushes the log every 10 steps; each line carries its window's tokens/s
    rows = [{"step": s, "tok_s": {0: 100.0, 1: 1000.0, 2: 3000.0}[(s - 1) // 10]}
            for s in range(1, 31)]  # fmt: skip
    # 20 steps of 4096 tokens in 10 * 4096 / 1000 + 10 * 4096 / 3000 seconds: 1500, not the
    # median 2000 and not the warmup's 100
    assert gpu.timed_tokens_per_s(rows, 4096, warmup=10) == pytest.approx(1500.0)


def test_the_benchmark_models_are_about_125m_and_1b(tmp_path):
    from midtrain import train

    tok = gpu._tokenizer(tmp_path)
    store = gpu._store(tmp_path, tok, (gpu.WARMUP + 10) * gpu.BATCH_TOKENS + 8 * gpu.SEQ_LEN)
    sizes = {}
    for name in gpu.MODELS:
        rc = {**gpu.run_config(name, tok, store, 10), "device": "cpu"}  # CUDA's plan, on CPU
        plan = train.plan_run(train.load_run_config(rc))
        assert (plan.steps, plan.tokens_per_step) == (20, 32_768)
        sizes[name] = train.estimate(plan).params  # non-embedding + head
    assert 100e6 < sizes["125m"] < 150e6 and 0.9e9 < sizes["1b"] < 1.2e9, sizes
