"""Write tests/fixtures/megatron with megatron-core's own IndexedDatasetBuilder (run once).

    MIDTRAIN_MEGATRON_SRC=/path/to/unpacked/megatron_core-0.19.2-wheel \
        python scripts/make_megatron_fixtures.py

(or with megatron-core installed, Python >= 3.12). Writes:
- eod.bin/.idx: uint16, one sequence per document with EOD (id 0) appended, as
  `preprocess_data.py --append-eod` writes them;
- split.bin/.idx: int32 (the builder's default dtype), no EOD, documents of several sequences;
- docs.json: every document's ids as given to the builder, and megatron-core's version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _megatron import FIXTURES, megatron_datasets, megatron_version  # noqa: E402


def docs(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 300, size=int(rng.integers(3, 30))).tolist() for _ in range(n)]


def main() -> None:
    found = megatron_datasets()
    if found is None:
        raise SystemExit("megatron-core not loadable; see tests/_megatron.py")
    ix, _ = found
    FIXTURES.mkdir(parents=True, exist_ok=True)
    eod = docs(1, 12)
    b = ix.IndexedDatasetBuilder(str(FIXTURES / "eod.bin"), dtype=np.uint16)
    for d in eod:
        b.add_document(torch.tensor(d + [0]), [len(d) + 1])
    b.finalize(str(FIXTURES / "eod.idx"))
    split = docs(2, 9)
    b = ix.IndexedDatasetBuilder(str(FIXTURES / "split.bin"))  # int32
    for d in split:
        half = len(d) // 2
        b.add_item(torch.tensor(d[:half]))
        b.add_item(torch.tensor(d[half:]))
        b.end_document()
    b.finalize(str(FIXTURES / "split.idx"))
    (FIXTURES / "docs.json").write_text(json.dumps(
        {"megatron_core": megatron_version(), "eod": [d + [0] for d in eod], "split": split}))  # fmt: skip
    print(f"wrote {FIXTURES}")


if __name__ == "__main__":
    main()
