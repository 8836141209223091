"""The study drivers: plan, execute, collect, analyse and report a study (`runner`), collect
finished jobs into a `StudyResult` (`collect`), import runs made elsewhere (`importer`), prune a
finished study (`prune`). They sit above `study` (records, plans, stages), `stats` and `report`,
and call all three."""
