"""Execute one papermill notebook template of notebooks/ into results/<name>/notebooks/.

The notebooks only read artifacts. The kernel is `report.kernel_name` ('python3'): ipykernel
installed in the running environment provides it, and jupyter_client starts a kernelspec whose
command is `python` with this interpreter (sys.executable), so the notebook sees the same
environment (and PYTHONPATH) as the rule that runs it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vpd.utils.io import atomic_path

log = logging.getLogger("vpd")


def execute_notebook(cfg, template: Path, results_dir: Path, out_dir: Path) -> Path:
    """Run `template` with parameters {results_dir} and write out_dir/<template name> atomically."""
    import papermill as pm

    template, out_dir = Path(template), Path(out_dir)
    if not template.exists():
        raise FileNotFoundError(f"notebook template {template} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / template.name
    rcfg = cfg.report
    log.info("notebook %s -> %s (kernel %s)", template, out, rcfg.kernel_name)
    with atomic_path(out) as tmp:
        ipynb = tmp.with_suffix(".ipynb")  # papermill picks the writer by extension
        try:
            pm.execute_notebook(
                str(template), str(ipynb),
                parameters={"results_dir": str(Path(results_dir).resolve())},
                kernel_name=rcfg.kernel_name,
                prepare_only=not rcfg.execute_notebooks,
                execution_timeout=rcfg.timeout,
                progress_bar=False,
                cwd=str(Path(results_dir).resolve()),
            )
            ipynb.replace(tmp)
        finally:
            if ipynb.exists():
                ipynb.unlink()
    return out
