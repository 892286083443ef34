"""What separates trained from random: single-token, positional, token-lookup, context and seed-stability
measurements of every SAE in a run, and the separation table that ranks them (docs/analysis.md)."""

from randsae.analysis.config import AnalysisConfig
from randsae.analysis.results import AnalysisSummary, format_separation_table
from randsae.analysis.stage import analyze_run

__all__ = ["AnalysisConfig", "AnalysisSummary", "analyze_run", "format_separation_table"]
