"""Helpers the notebooks call: show one paper section's outputs (figures, tables, text) from disk.

Read-only: nothing here trains or recomputes. A missing output is shown as missing, so a notebook
runs on whatever part of the DAG exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vpd.config import parse_config
from vpd.report.readme import SECTIONS, Section, sections_for, summarize
from vpd.utils.io import read_yaml


def load_run_config(results_dir: str | Path):
    """The resolved config of the run (results/<name>/config.yaml), or None if absent."""
    path = Path(results_dir) / "config.yaml"
    return parse_config(read_yaml(path), str(path)) if path.exists() else None


def section(results_dir: str | Path, key: str) -> Section:
    cfg = load_run_config(results_dir)
    sections = sections_for(cfg) if cfg is not None else SECTIONS
    return next(s for s in sections if s.key == key)


def show_section(results_dir: str | Path, key: str) -> pd.DataFrame:
    """Display every output of section `key`; returns the (output, file, paper, this run) table."""
    from IPython.display import Image, Markdown, display

    results_dir = Path(results_dir)
    sec = section(results_dir, key)
    rows = []
    for item in sec.items:
        path = results_dir / item.path
        ours = summarize(path, item.path) if path.exists() else "not produced (stage not run)"
        rows.append({"output": item.label, "file": item.path, "paper": item.paper, "this run": ours})
    table = pd.DataFrame(rows)
    display(Markdown(f"## {sec.title}"))
    display(table)
    for item in sec.items:
        path = results_dir / item.path
        if not path.exists():
            continue
        if path.suffix == ".png":
            display(Markdown(f"**{item.label}** (`{item.path}`; paper: {item.paper})"))
            display(Image(filename=str(path)))
        elif path.suffix == ".csv":
            display(Markdown(f"**{item.label}** (`{item.path}`)"))
            display(pd.read_csv(path))
        elif path.suffix == ".md":
            display(Markdown(path.read_text(encoding="utf-8")))
        elif path.suffix == ".json" and path.stat().st_size < 20000:
            display(Markdown(f"**{item.label}** (`{item.path}`)\n\n```json\n{json.dumps(json.loads(path.read_text()), indent=1)[:4000]}\n```"))
    return table
