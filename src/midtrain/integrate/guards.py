"""The anchor floor and the automatic no-regression guards of integration rounds and `optimize`.

A round changes the whole mix, so what it does not aim at may get worse unnoticed. Two defaults
hold unless the user says otherwise (docs/integration.md#anchor-and-no-regression-defaults):

- **The anchor** (the base mix, replayed) keeps at least `MIN_ANCHOR_SHARE` of the mix. Olmo 3's
  final integration round kept about a third general data (docs/integration.md); Olmo 2 (50%
  web), Marin and Llama 3 (70% of the pretraining mix) kept more. 0.3 is that third rounded down:
  no published midtraining mix this tool follows replays less. `--no-anchor` (a round file:
  `no_anchor = true`) lifts the floor.
- **Guards** on every base domain (a source of the anchor that is scored) and on every task of
  eval.tasks the round does not target (`targets`), each at the tolerance below, unless a
  `[[guards]]` entry names the same domain or task: the user's guard replaces the automatic one.
  The tolerances are those of the example guards of docs/studies.md: 0.02 bits per byte on a
  domain, 0.01 in the primary metric's units on a task (one accuracy point with `acc`).
"""

from __future__ import annotations

from collections.abc import Iterable

from midtrain.study.tables import GuardTable, StudyTable

MIN_ANCHOR_SHARE = 0.3
DOMAIN_TOLERANCE = 0.02  # bits per byte
TASK_TOLERANCE = 0.01  # units of the primary metric


def anchor_floor(no_anchor: bool) -> float:
    """The least anchor share allowed: MIN_ANCHOR_SHARE, or 0 with --no-anchor."""
    return 0.0 if no_anchor else MIN_ANCHOR_SHARE


def auto_guards(domains: Iterable[str], tasks: Iterable[str], targets: Iterable[str],
                given: Iterable[GuardTable]) -> list[GuardTable]:  # fmt: skip
    """Guards (as study-file data) on `domains` and on the `tasks` not in `targets`, leaving out
    those a `given` guard already names."""
    named = {(("domain", g["domain"]) if g.get("domain") else ("task", g.get("task")))
             for g in given}  # fmt: skip
    aimed = set(targets)
    out = [{"domain": d, "tolerance": DOMAIN_TOLERANCE} for d in dict.fromkeys(domains)
           if ("domain", d) not in named]  # fmt: skip
    out += [{"task": t, "tolerance": TASK_TOLERANCE} for t in dict.fromkeys(tasks)
            if t not in aimed and ("task", t) not in named]  # fmt: skip
    return out


def describe(guards: list[GuardTable]) -> str:
    """`domain web <= +0.02, task t1 >= -0.01` (for comments and notes)."""
    return ", ".join(
        f"domain {g['domain']} <= +{g['tolerance']:g}" if g.get("domain")
        else f"task {g['task']} >= -{g['tolerance']:g}" for g in guards
    ) or "none"  # fmt: skip


def candidate_targets(cfgs: Iterable[StudyTable], names: set[str] | None = None) -> list[str]:
    """The tasks targeted by the candidates of studies (as data), all or those in `names`."""
    out: dict[str, None] = {}
    for cfg in cfgs:
        for c in cfg.get("candidates") or []:
            if names is None or c["name"] in names:
                out |= dict.fromkeys(c.get("targets") or [])
    return list(out)
