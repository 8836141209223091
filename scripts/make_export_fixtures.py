"""Check `midtrain study export` with the real packages once; record what they said.

    MIDTRAIN_MEGATRON_SRC=/path/to/unpacked/megatron_core-0.19.2-wheel \
    PYTHONPATH=/path/to/ai2-olmo-core-3.0.0-and-its-deps python scripts/make_export_fixtures.py

megatron-core 0.19.2 needs Python >= 3.12 and ai2-olmo-core 3.0.0 pins rich < 14 and filelock < 4
through cached-path (this project has rich 15, filelock 4): neither installs into the CI
environment. tests/test_export.py checks against the packages where they load and else against
these files, after checking that the export is still byte-identical to the one recorded here:

- study.megatron.txt, study.olmo-core.json: the export of tests/_export_study.py's study (ROOT);
- megatron_checked.json: megatron-core's `get_blend_from_list` on every `--data-path`, and its
  `OptimizerParamScheduler`'s LR at every iteration for each schedule shape;
- olmo_core_checked.json: `SourceMixtureDatasetConfig.from_dict(...)` of every run, validated,
  its `as_config_dict()`, and the tokens per source its `build()` selected from the stores; and
  for each schedule shape the exported `Scheduler`'s `as_config_dict()` and its `get_lr` at
  every step.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT_DIR / "tests"))
from _export_study import SHAPES, build_study, rooted  # noqa: E402
from _megatron import (  # noqa: E402
    data_path,
    megatron_datasets,
    megatron_lrs,
    megatron_scheduler,
    megatron_version,
)

from midtrain.study.export import load_runs, render  # noqa: E402

OUT = ROOT_DIR / "tests" / "fixtures" / "exports"


def _version(name: str, fallback: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return fallback


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        study = build_study(root)
        _, runs = load_runs(study)
        meg = render(runs, "megatron", "study.toml")
        olmo = render(runs, "olmo-core", "study.toml")
        (OUT / "study.megatron.txt").write_text(rooted(meg, root))
        (OUT / "study.olmo-core.json").write_text(rooted(olmo, root))
        megatron(root, meg)
        olmo_core(root, olmo)


def megatron(root: Path, text: str) -> None:
    found, sched = megatron_datasets(), megatron_scheduler()
    if found is None or sched is None:
        raise SystemExit("megatron-core not loadable; see tests/_megatron.py")
    utils = found[1]
    blends = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            prefixes, weights = utils.get_blend_from_list(data_path(shlex.split(line)))
            blends[rooted(line, root)] = {"prefixes": [rooted(p, root) for p in prefixes],
                                          "weights": weights}  # fmt: skip
    lrs = {}
    for shape, warmup in SHAPES:
        _, runs = load_runs(build_study(root, shape, warmup))
        line = render(runs[:1], "megatron", "study.toml").splitlines()[-1]
        lrs[f"{shape}/{warmup}"] = {"args": rooted(line, root),
                                    "lr": megatron_lrs(sched, shlex.split(line))}  # fmt: skip
    body = {"megatron_core": megatron_version(), "blends": blends, "lr": lrs}
    (OUT / "megatron_checked.json").write_text(json.dumps(body, indent=1) + "\n")


def olmo_core(root: Path, text: str) -> None:
    import numpy as np
    from olmo_core.data.source_mixture import SourceMixtureDatasetConfig
    from olmo_core.optim.scheduler import Scheduler

    checked = {}
    for run in json.loads(text):
        cfg = SourceMixtureDatasetConfig.from_dict(run["source_mixture_config"])
        cfg.validate()
        built = cfg.build(npdtype=getattr(np, run["dtype"]), sequence_length=run["sequence_length"])
        tokens = {s.name: sum(p.tokens for p in s.path_tokens) for s in built.sources}
        checked[run["run"]] = {"as_config_dict": json.loads(rooted(json.dumps(
            cfg.as_config_dict()), root)), "built_tokens": tokens}  # fmt: skip
    lrs = {}
    for shape, warmup in SHAPES:
        _, runs = load_runs(build_study(root, shape, warmup))
        run = json.loads(render(runs[:1], "olmo-core", "study.toml"))[0]
        if run["scheduler"] is None:
            lrs[f"{shape}/{warmup}"] = {"scheduler": None, "lr": None}
            continue
        sched = Scheduler.from_dict(run["scheduler"])
        start, steps = run["midtrain_schedule"]["start_lr"], run["max_steps"]
        lrs[f"{shape}/{warmup}"] = {  # OLMo-core's trainer: LR of step k = 1..max_steps
            "scheduler": sched.as_config_dict(),
            "lr": [float(sched.get_lr(start, k, steps)) for k in range(1, steps + 1)],
        }
    body = {"ai2_olmo_core": _version("ai2-olmo-core", "?"), "runs": checked, "lr": lrs}
    (OUT / "olmo_core_checked.json").write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    main()
