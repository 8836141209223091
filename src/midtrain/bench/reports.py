"""The records of the subprocess benchmarks: the error a child reports (`bench memory`, `bench gpu`),
the `[model]` tables and run configs the benches build, and `bench memory`'s jobs, measurements and
`--json` report."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from midtrain.study.tables import ScheduleTable  # a run config's [schedule] is a study's


class ChildError(TypedDict):
    """What a measurement subprocess writes (or its parent makes) when the measurement failed."""

    error: str


class LlamaTable(TypedDict):
    """A `[model]` table a bench builds: a Llama's HF config kwargs (to transformers)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    model_type: NotRequired[str]  # the run config's `[model]` key; not a LlamaConfig kwarg
    max_position_embeddings: NotRequired[int]
    tie_word_embeddings: NotRequired[bool]
    dtype: NotRequired[str]


class MixEntry(TypedDict):
    """One source of a run config's `mix`."""

    source: str
    ratio: float


class RunTable(TypedDict):
    """A run config as the benches build it: the TOML-shaped data `train.load_run_config` (and
    `train.run`) validate into a `RunConfig`; JSON-safe, so it travels to a measurement child."""

    model: LlamaTable | None  # None with `init` (bench sft's anneal from a checkpoint)
    tokenizer: str | None
    init: NotRequired[str]
    stores: dict[str, str]
    mix: list[MixEntry]
    tokens: int
    seq_len: int
    batch_tokens: int
    micro_batch: int
    schedule: ScheduleTable
    checkpoint_every: int
    device: str
    precision: NotRequired[str]
    compile: NotRequired[bool]
    threads: NotRequired[int]
    parallel: NotRequired[str]


class AnalyticNeed(TypedDict):
    """`analytic_need`: parameters and MiB of each part of the analytic peak."""

    params: int
    weights_mib: float
    grads_mib: float
    adam_moments_mib: float
    activations_mib: float
    need_mib: float


class TrainPeaks(TypedDict):
    """`measure_train`: one process's (or FSDP rank's) peak growth over a few steps."""

    peak_growth_mib: float
    peak_rss_mib: float
    baseline_rss_mib: float
    after_build_mib: float
    step_peaks_mib: list[float]
    step_loss: list[float]
    rank: int
    wall_s: float


class EvalPeaks(TypedDict):
    """`measure_eval`: the evaluation's peak growth and rates."""

    peak_growth_mib: float
    peak_rss_mib: float
    baseline_rss_mib: float
    task_examples: int
    domain_docs: int
    seconds: float
    timing: dict[str, float]
    examples_per_s: float | None
    task_examples_per_s: float | None


class TrainJob(TypedDict):
    """A training measurement for `_child` (sent as JSON on its stdin)."""

    kind: Literal["train"]
    rc: RunTable
    out: str
    save: bool


class EvalJob(TypedDict):
    """An evaluation measurement for `_child` (sent as JSON on its stdin)."""

    kind: Literal["eval"]
    checkpoint: str
    tasks: str
    store: str
    out: str
    limit: int
    batch_size: int
    threads: int


class Setup(TypedDict):
    """`run_bench`'s settings, spread into the report."""

    preset: str
    model: LlamaTable
    seq_len: int
    micro_batch: int
    batch_seqs: int
    steps: int
    threads: int
    eval_limit: int
    eval_batch: int
    wall_s: float


class HeapKept(TypedDict):
    single: float | None
    fsdp: list[float | None]


class AllocatorCheck(TypedDict):
    """`_allocator`: the runs again with glibc's mmap threshold fixed."""

    env: dict[str, str]
    single: TrainPeaks | ChildError
    fsdp: list[TrainPeaks | ChildError]
    ratio_single_vs_analytic: float | None
    ratio_fsdp_rank_vs_single: list[float | None]
    heap_kept_mib: HeapKept


class Targets(TypedDict):
    single_vs_analytic: float
    fsdp_rank_vs_single: float


class MemoryReport(Setup, total=False):
    """The `bench memory --json` report (`report`; `run_bench` adds fixed_mmap_threshold)."""

    benchmark: str
    analytic: AnalyticNeed
    single: TrainPeaks | ChildError
    ratio_single_vs_analytic: float | None
    meets_single: bool
    fsdp: list[TrainPeaks | ChildError]
    ratio_fsdp_rank_vs_single: list[float | None]
    ratio_fsdp_max: float | None
    meets_fsdp: bool
    eval: EvalPeaks | ChildError
    ratio_eval_vs_weights: float | None
    targets: Targets
    errors: dict[str, str]
    peak_how: str
    activation_formula: str
    versions: dict[str, str]
    fixed_mmap_threshold: AllocatorCheck | None
