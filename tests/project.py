"""Test helper: a valid project config dict built from config/ci.yaml with sections replaced."""

from pathlib import Path

import yaml

CI_CONFIG = Path(__file__).resolve().parents[1] / "config" / "ci.yaml"


def ci_project(**sections) -> dict:
    """config/ci.yaml as a dict, with the given top-level sections replaced (e.g. corpus={...})."""
    data = yaml.safe_load(CI_CONFIG.read_text())
    data.update(sections)
    return data
