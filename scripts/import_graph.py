"""The import graph of src/midtrain: edges, circles and back-arrows against the declared floors.

    python scripts/import_graph.py            # summary; exit 1 on a circle or a back-arrow
    python scripts/import_graph.py --edges    # every intra-package edge, module and function level
    python scripts/import_graph.py --json     # the same as one JSON object

An edge is an import of one midtrain module by another. Module-level imports run when the module
is imported; function-level ones (inside a def, the lazy imports of heavy or higher code) and
`if TYPE_CHECKING:` ones are reported apart. Circles are strongly connected components of the
graph of all edges, at module level and at package level (a package is `midtrain.<name>`: a
subpackage or a top-level module). A back-arrow is an edge, of any kind, from a package on a
lower floor to one on a higher floor (FLOORS below, low to high; packages on one floor may
import each other as long as they make no circle). Standard library only (ast).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
TOP = "midtrain"

# Low to high: a unit may import its own floor and the floors below, never one above. A unit is a
# package or module (dotted, under midtrain); a module belongs to the longest unit naming it.
# `stats.contrast` and `stats.sequential` are plain numbers, a floor below the study records that
# the rest of `stats` reads; the drivers (`driver`) call the statistics and the report.
FLOORS: list[list[str]] = [
    ["__init__", "errors", "schema", "io", "console", "env"],
    ["jobs"],
    ["data", "mix"],
    ["train", "eval"],
    ["sft"],
    ["merge", "unigram", "similarity", "stats.contrast", "stats.sequential"],
    ["probe"],
    ["study"],
    ["stats"],
    ["report"],
    ["driver"],
    ["integrate", "optimize"],
    ["design"],
    ["demo", "bench"],
    ["configdoc"],
    ["commands"],
    ["cli"],
]
# Known back-arrows, each with its reason; the check fails on any other.
ALLOWED: dict[tuple[str, str], str] = {
    ("midtrain.jobs", "midtrain.train.rundir"): "an interrupted chain marks its job folder's "
    "status.json (train/rundir.py owns that file) as interrupted",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__)."""
    out = {}
    for path in sorted((root / TOP).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _kind_of(stack: list[ast.AST]) -> str:
    if any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) for n in stack):
        return "function"
    for n in stack:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            return "typing"
    return "module"


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a dotted import target) names."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(node: ast.AST, mod: str, is_pkg: bool, known: dict[str, Path]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names] or [base]
    out = []
    for n in names:
        if n == TOP or n.startswith(TOP + "."):
            hit = _resolve(n, known)
            if hit is not None:
                out.append(hit)
    return out


def edges(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(importer, imported, kind) for every intra-package import; kind: module/function/typing."""
    known = modules(root)
    found: set[tuple[str, str, str]] = set()
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))

        def walk(node: ast.AST, stack: list[ast.AST], mod: str = mod, is_pkg: bool = is_pkg):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, mod, is_pkg, known):
                    if target != mod:
                        found.add((mod, target, _kind_of(stack)))
            for child in ast.iter_child_nodes(node):
                walk(child, stack + [node])

        walk(tree, [])
    return sorted(found)


def package(mod: str) -> str:
    """The top-level package (or module) of `mod`: `study` for midtrain.study.plan."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def unit(mod: str) -> str:
    """The longest unit of FLOORS naming `mod` (else its package)."""
    rel = mod.split(".", 1)[1] if "." in mod else "__init__"
    names = {u for floor in FLOORS for u in floor}
    parts = rel.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in names:
            return ".".join(parts[:k])
    return parts[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def floor_of(u: str) -> int | None:
    for i, group in enumerate(FLOORS):
        if u in group:
            return i
    return None


def analyse(root: Path = ROOT) -> dict:
    """Edges by kind; circles and back-arrows over the edges that run (module- and
    function-level; TYPE_CHECKING imports are annotations only and never run)."""
    es = edges(root)
    run = [(a, b) for a, b, kind in es if kind != "typing" and (a, b) not in ALLOWED]
    mod_graph: dict[str, set[str]] = defaultdict(set)
    load_graph: dict[str, set[str]] = defaultdict(set)
    unit_graph: dict[str, set[str]] = defaultdict(set)
    pkg_graph: dict[str, set[str]] = defaultdict(set)
    for a, b, kind in es:
        if kind == "module":
            load_graph[a].add(b)
    for a, b in run:
        mod_graph[a].add(b)
        if unit(a) != unit(b):
            unit_graph[unit(a)].add(unit(b))
        if package(a) != package(b):
            pkg_graph[package(a)].add(package(b))
    back, allowed = [], []
    for a, b, kind in es:
        fa, fb = floor_of(unit(a)), floor_of(unit(b))
        if kind != "typing" and fa is not None and fb is not None and fa < fb:
            (allowed if (a, b) in ALLOWED else back).append((a, b, kind))
    units = sorted({unit(m) for m in modules(root)})
    return {
        "edges": {
            k: [[a, b] for a, b, kind in es if kind == k] for k in ("module", "function", "typing")
        },
        "load_circles": circles(load_graph),
        "module_circles": circles(mod_graph),
        "unit_circles": circles(unit_graph),
        "package_circles": circles(pkg_graph),
        "back_arrows": [list(e) for e in back],
        "allowed_back_arrows": [list(e) for e in allowed],
        "unplaced": [u for u in units if floor_of(u) is None],
    }


def problems(res: dict) -> list[str]:
    """What the layering forbids: circles between units, back-arrows, a unit on no floor, and
    circles of module-level imports (a module importing itself at load)."""
    out = [f"unit circle: {' <-> '.join(c)}" for c in res["unit_circles"]]
    out += [f"load circle: {' <-> '.join(c)}" for c in res["load_circles"]]
    out += [f"back-arrow: {a} -> {b} ({kind})" for a, b, kind in res["back_arrows"]]
    out += [f"on no floor: {u}" for u in res["unplaced"]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="list every edge")
    ap.add_argument("--json", action="store_true", help="print the analysis as JSON")
    ap.add_argument("--src", type=Path, default=ROOT, help="the folder holding midtrain/")
    args = ap.parse_args(argv)
    res = analyse(args.src)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        if args.edges:
            for kind, es in res["edges"].items():
                print(f"# {kind}-level imports ({len(es)})")
                for a, b in es:
                    print(f"{a} -> {b}")
        n = {k: len(v) for k, v in res["edges"].items()}
        print(f"edges: {n['module']} module-level, {n['function']} function-level, "
              f"{n['typing']} TYPE_CHECKING")  # fmt: skip
        for key, what in (
            ("load_circles", "circles of module-level imports"),
            ("module_circles", "module circles (module- and function-level imports)"),
            ("unit_circles", "unit circles (the units of FLOORS)"),
            ("package_circles", "package circles (top-level packages)"),
        ):
            print(f"{what}: {len(res[key])}")
            for c in res[key]:
                print("  " + " <-> ".join(c))
        print(
            f"back-arrows: {len(res['back_arrows'])} (+{len(res['allowed_back_arrows'])} allowed)"
        )
        for a, b, kind in res["back_arrows"] + res["allowed_back_arrows"]:
            note = ALLOWED.get((a, b))
            print(f"  {a} -> {b} ({kind})" + (f": allowed, {note}" if note else ""))
        if res["unplaced"]:
            print("units on no floor: " + ", ".join(res["unplaced"]))
    bad = problems(res)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
