"""Device defaults (compile and precision "auto") and `midtrain bench train`'s like-for-like JSON."""

from __future__ import annotations

import pytest

from midtrain.train.config import RunConfig, identity
from midtrain.train.speed import resolve_compile, resolve_precision

RC = {
    "model": {},
    "tokenizer": "t",
    "stores": {"web": "w"},
    "mix": [{"source": "web", "ratio": 1.0}],
    "tokens": 1,
}


@pytest.mark.parametrize(
    ("compile", "device", "expected"),
    [("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False)],
)
def test_compile_auto_is_on_for_cuda_only(compile, device, expected):
    assert resolve_compile(compile, device) is expected


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_compile_accepts_true_false_and_auto_and_auto_keeps_the_old_identity():
    assert RunConfig.model_validate(RC).compile == "auto"
    assert RunConfig.model_validate({**RC, "compile": True}).compile is True
    assert RunConfig.model_validate({**RC, "compile": "auto"}).compile == "auto"
    with pytest.raises(ValueError, match="compile"):
        RunConfig.model_validate({**RC, "compile": "fast"})
    auto = RunConfig.model_validate(RC).identity()
    assert auto == RunConfig.model_validate({**RC, "compile": False}).identity()
    assert identity({"compile": False, "threads": 2}) == {"compile": False}  # earlier run dirs


@pytest.mark.slow
def test_bench_train_reports_like_for_like_ratios_rss_and_what_it_did_not_measure():
    from midtrain.bench.train import _ratio, run_bench

    res = run_bench(steps=1, rounds=1, threads=1, warmup=1, configs=("ours_eager", "hf_eager"))
    assert res["ratio_eager"] > 0 and res["ratio_eager_reason"] is None
    assert res["ratio_compiled"] is None and "not measured" in res["ratio_compiled_reason"]
    assert res["tokens_per_s"]["hf_compiled"] is None and res["best_mode"] == "eager"
    assert res["peak_rss_mib"]["ours_eager"] > 50 and res["peak_rss_mib"]["hf_compiled"] is None
    assert res["utilization"] > 0 and res["errors"] == {}
    failed = _ratio({"ours_compiled": 1.0}, "compiled", {"hf_compiled": "RuntimeError: no cc"})
    assert failed == (None, "hf_compiled: RuntimeError: no cc")


def test_bf16_on_cpu_is_warned_about_only_without_bf16_matmul_instructions(tmp_path, monkeypatch):
    from midtrain.train import speed

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f\n")
    assert speed.native_bf16_cpu(str(info)) is False
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert speed.native_bf16_cpu(str(info)) is True
    assert speed.native_bf16_cpu(str(tmp_path / "none")) is None
    warnings = {}
    for native in (False, True, None):
        monkeypatch.setattr(speed, "native_bf16_cpu", lambda n=native: n)
        warnings[native] = speed.precision_warning("bf16", "cpu")
        assert speed.precision_warning("fp32", "cpu") is None
        assert speed.precision_warning("bf16", "cuda") is None
    assert warnings[True] is None and warnings[None] is None
    assert warnings[False].endswith("much slower than fp32; use precision = 'fp32'")
