"""The report: papermill notebooks (one per paper section) and results/<name>/paper/README.md."""
