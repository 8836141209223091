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

# Low to high: a package may import its own floor and the floors below, never one above.
FLOORS: list[list[str]] = [
    ["errors", "schema", "io", "console", "env"],
    ["jobs"],
    ["data", "mix"],
    ["train", "eval"],
    ["sft"],
    ["merge"],
    ["similarity"],
    ["study"],
    ["stats", "probe", "design"],
    ["integrate", "optimize"],
    ["report"],
    ["demo", "bench"],
    ["configdoc"],
    ["commands"],
    ["cli", "__init__", "__main__"],
]


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
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


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


def floor_of(pkg: str) -> int | None:
    for i, group in enumerate(FLOORS):
        if pkg in group:
            return i
    return None


def analyse(root: Path = ROOT) -> dict:
    es = edges(root)
    mod_graph: dict[str, set[str]] = defaultdict(set)
    pkg_graph: dict[str, set[str]] = defaultdict(set)
    for a, b, _ in es:
        mod_graph[a].add(b)
        if package(a) != package(b):
            pkg_graph[package(a)].add(package(b))
    back = []
    for a, b, kind in es:
        fa, fb = floor_of(package(a)), floor_of(package(b))
        if fa is not None and fb is not None and fa < fb:
            back.append((a, b, kind))
    pkgs = sorted({package(m) for m in modules(root)})
    return {
        "edges": {
            k: [[a, b] for a, b, kind in es if kind == k] for k in ("module", "function", "typing")
        },
        "module_circles": circles(mod_graph),
        "package_circles": circles(pkg_graph),
        "back_arrows": [list(e) for e in back],
        "unplaced": [p for p in pkgs if floor_of(p) is None],
    }


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
        print(f"module circles: {len(res['module_circles'])}")
        for c in res["module_circles"]:
            print("  " + " <-> ".join(c))
        print(f"package circles: {len(res['package_circles'])}")
        for c in res["package_circles"]:
            print("  " + " <-> ".join(c))
        print(f"back-arrows: {len(res['back_arrows'])}")
        for a, b, kind in res["back_arrows"]:
            print(f"  {a} -> {b} ({kind})")
        if res["unplaced"]:
            print("packages on no floor: " + ", ".join(res["unplaced"]))
    bad = res["module_circles"] or res["package_circles"] or res["back_arrows"] or res["unplaced"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
