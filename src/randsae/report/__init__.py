"""The report stage: `RUN/report.html` (the paper's figures and tables for one run) and `RUN/dashboards/`
(one page and one Neuronpedia-style JSON per scored latent). See docs/report.md."""

from randsae.report.report import write_report

__all__ = ["write_report"]
