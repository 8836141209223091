"""The study report: results.json, report.md, report.html and plots; the terminal verdict table."""

from midtrain.report.render import verdict_table, write_report

__all__ = ["verdict_table", "write_report"]
