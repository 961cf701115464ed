"""Stage records and the reports built from them (the report never recomputes anything)."""

from tinyprune.report.records import SCHEMA_VERSION, Report, StageRecord
from tinyprune.report.render import to_markdown, summary_rows

__all__ = ["SCHEMA_VERSION", "Report", "StageRecord", "to_markdown", "summary_rows"]
