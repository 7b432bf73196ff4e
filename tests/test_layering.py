"""The package is layered: no module imports one of a higher layer, counting imports inside
functions. Layers, bottom up:

  utils < config < data < target < decomp < baselines < evaluate < analysis < plots, report < stages
  < cli < __main__

`config` holds the configuration models (vpd.config, vpd.sweeps, vpd.config_docs and every
subpackage's config module), which import only utils and each other, so the DAG builds without
torch. Within a layer, a module imports only its own subpackage (or the other config modules).
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [["utils"], ["config"], ["data"], ["target"], ["decomp"], ["baselines"], ["evaluate"], ["analysis"],
          ["plots", "report"], ["stages"], ["cli"], ["__main__"]]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}
CONFIG_MODULES = {"vpd.config", "vpd.sweeps", "vpd.config_docs"}


def unit_of(module: str) -> str | None:
    """The layer unit of a vpd module name (None outside vpd and for the top-level package)."""
    parts = module.split(".")
    if parts[0] != "vpd" or len(parts) == 1:
        return None
    if module in CONFIG_MODULES or parts[-1] in ("config", "graph_config"):
        return "config"
    return parts[1]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth; relative imports resolved;
    `from a import b` yields a.b when a.b is a module, else a."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (SRC / Path(*sub.split("."))).with_suffix(".py").exists() or (SRC / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else base))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted((SRC / "vpd").rglob("*.py")):
        src = unit_of(module_name(path))
        if src is None:
            continue
        for line, mod in imported_modules(path):
            dst = unit_of(mod)
            if dst is None or dst == src:
                continue
            if dst not in LAYER_OF or src not in LAYER_OF:
                bad.append(f"{path.relative_to(SRC)}:{line} {mod}: unit without a layer")
            elif LAYER_OF[dst] >= LAYER_OF[src]:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {mod} ({dst} is not below {src})")
    return bad


def test_no_module_imports_a_higher_or_sibling_layer():
    assert violations() == []


def test_every_subpackage_has_a_layer():
    units = {p.name for p in (SRC / "vpd").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in (SRC / "vpd").glob("*.py") if p.stem != "__init__"} - {"config", "sweeps", "config_docs"}
    assert units <= set(LAYER_OF), units - set(LAYER_OF)


@pytest.mark.parametrize("module, expected", [
    ("vpd.decomp.config", "config"), ("vpd.analysis.graph_config", "config"), ("vpd.sweeps", "config"),
    ("vpd.decomp.losses", "decomp"), ("vpd.stages.evaluate", "stages"), ("vpd", None), ("torch.nn", None),
])
def test_units(module, expected):
    assert unit_of(module) == expected


def test_the_checker_sees_imports_inside_functions_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "vpd" / "decomp"
    pkg.mkdir(parents=True)
    (tmp_path / "vpd" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (tmp_path / "vpd" / "plots.py").write_text("")
    (pkg / "thing.py").write_text("def f():\n    from vpd import plots\n    from . import other\n")
    (pkg / "other.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert imported_modules(pkg / "thing.py") == [(2, "vpd.plots"), (3, "vpd.decomp.other")]
    assert violations() == ["vpd/decomp/thing.py:2 imports vpd.plots (plots is not below decomp)"]
