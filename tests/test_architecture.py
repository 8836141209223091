"""The layering of docs/architecture.md holds: no import circles, no import from a lower floor to a
higher one (scripts/import_graph.py, standard library only, a fraction of a second)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _graph():
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "scripts" / "import_graph.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", mod)
    spec.loader.exec_module(mod)
    return mod


def test_no_circles_and_no_back_arrows():
    g = _graph()
    res = g.analyse(ROOT / "src")
    assert g.problems(res) == []
    assert res["module_circles"] == []  # not even through function-level imports
    assert res["edges"]["module"] and res["edges"]["function"]  # the graph was read


def test_every_unit_of_the_floors_exists():
    g = _graph()
    mods = g.modules(ROOT / "src")
    units = {g.unit(m) for m in mods}
    assert {u for floor in g.FLOORS for u in floor} - units <= {"__main__"}


def test_the_check_finds_a_back_arrow_and_a_circle(tmp_path):
    g = _graph()
    pkg = tmp_path / "midtrain"
    (pkg / "study").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from midtrain.study import plan\n")
    (pkg / "study" / "__init__.py").write_text("")
    (pkg / "study" / "plan.py").write_text("def f():\n    from midtrain.study import keep\n")
    (pkg / "study" / "keep.py").write_text("from midtrain.study.plan import f\n")
    res = g.analyse(tmp_path)
    assert res["back_arrows"] == [["midtrain.errors", "midtrain.study.plan", "module"]]
    assert res["module_circles"] == [["midtrain.study.keep", "midtrain.study.plan"]]
    assert res["load_circles"] == []  # the circle closes only through a function-level import
