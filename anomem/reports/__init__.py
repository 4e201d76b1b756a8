"""Reports: detection metrics, pixel metrics, tables, plots and HTML/Markdown reports."""
