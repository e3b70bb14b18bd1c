"""Reports that people read to choose settings: measured on this machine, with the machine described."""

from tiered_memory.reports.quantization import ReportResult, ReportSettings, run_quantization_report

__all__ = ["ReportResult", "ReportSettings", "run_quantization_report"]
