"""The experiment report: results.json, results.md and a self-contained report.html with plots, from a run directory
that the pipeline made (laffi/rundir.py). It reads files only: it imports no pipeline module, and can be rebuilt at any
time (`laffi experiment --report-only`)."""

from __future__ import annotations

from laffi.files import atomic_write_text, write_json
from laffi.grid import Finished
from laffi.report.plots import write_plots
from laffi.report.render import render_html, render_markdown
from laffi.report.summary import Summary, summarise
from laffi.rundir import RunDir


def write_report(done: Finished) -> Summary:
    """The report of the cells of `done`: its numbers (`summarise`), plots, results.json, results.md, report.html."""
    run = RunDir(done.out)
    summary = summarise(done)
    summary.plots = write_plots(run, summary, list(dict.fromkeys(done.main + done.ablation)))
    markdown = render_markdown(done.cfg, summary)
    write_json(run.results_json, summary.to_json())
    atomic_write_text(run.results_md, markdown)
    atomic_write_text(run.report_html, render_html(markdown, done.out))
    return summary
