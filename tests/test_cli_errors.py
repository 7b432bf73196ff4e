"""User errors reach the command line as one line and exit code 2; --debug shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpd.cli import main
from vpd.utils.errors import InputError, one_line

ROOT = Path(__file__).resolve().parents[1]


def vpd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpd", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


def test_one_line_joins_a_multi_line_message():
    assert one_line(ValueError("invalid config x:\n  a.b: bad\n  c: worse")) == "invalid config x: a.b: bad; c: worse"
    assert one_line(ValueError("first\nsecond")) == "first; second"
    assert one_line(InputError()) == "InputError"


def test_yaml_syntax_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntarget: [unclosed\n")
    res = vpd("validate", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert f"config file {bad} is not valid YAML" in line and "line 2" in line


def test_truncated_target_weights_name_the_file_and_debug_shows_the_traceback(tmp_path):
    from vpd.config import load_config
    from vpd.target.model import TargetLM

    cfg = load_config(ROOT / "config/ci.yaml")
    TargetLM(cfg.target.model).save_pretrained(tmp_path / "target")
    weights = tmp_path / "target" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (tmp_path / "tok").mkdir()
    args = ["decompose", "--config", str(ROOT / "config/ci.yaml"), "--target", str(tmp_path / "target"),
            "--tokens", str(tmp_path / "tok"), "--out", str(tmp_path / "out")]
    res = vpd(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("vpd decompose: error: ") and f"{weights} cannot be read" in last
    debug = vpd(*args, env={"VPD_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "InputError" in debug.stderr


def test_missing_input_directory_exits_2(tmp_path, capsys):
    code = main(["evaluate", "--config", str(ROOT / "config/ci.yaml"), "--target", str(tmp_path / "nope"),
                 "--tokens", str(tmp_path), "--decomposition", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"input directory --target {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_programming_errors_keep_their_traceback(tmp_path, monkeypatch):
    from vpd import cli

    def broken(cfg, args):
        raise KeyError("a bug")

    monkeypatch.setitem(cli.STAGES, "corpus", (broken, []))
    with pytest.raises(KeyError, match="a bug"):
        main(["corpus", "--config", str(ROOT / "config/ci.yaml"), "--out", str(tmp_path)])


def test_memory_refusal_and_unmatched_pattern_are_user_errors():
    from vpd.decomp.components import match_matrices
    from vpd.decomp.config import MatrixSpec
    from vpd.target.model import TargetLM
    from vpd.config import TargetModelConfig
    from vpd.utils.errors import UserError
    from vpd.utils.memory import MemoryEstimateError

    assert issubclass(MemoryEstimateError, UserError)
    target = TargetLM(TargetModelConfig(n_layer=1, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))
    with pytest.raises(InputError, match=r"pattern 'h\.\*\.nothing' matches no nn\.Linear"):
        match_matrices(target, [MatrixSpec(pattern="h.*.nothing", C=2)])


def _decompose_setup(tmp_path, **decompose):
    """A saved random target of the CI config's shape, token shards, and the CI config with
    `decompose` keys overridden, written to tmp_path."""
    import numpy as np
    import yaml

    from vpd.config import parse_config
    from vpd.target.model import TargetLM

    data = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    data["decompose"].update(decompose)
    (tmp_path / "tok").mkdir()
    for split in ("train", "val"):
        np.zeros(2000, dtype=np.uint16).tofile(tmp_path / "tok" / f"{split}.bin")
    TargetLM(parse_config(data).target.model).save_pretrained(tmp_path / "target")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    return ["decompose", "--config", str(tmp_path / "cfg.yaml"), "--target", str(tmp_path / "target"),
            "--tokens", str(tmp_path / "tok"), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("case, expected", [
    ("missing shard", r"token shard .*tok/train\.bin does not exist"),
    ("seq_len above context", r"decompose\.seq_len 4096 exceeds the target's context"),
    ("pattern matches nothing", r"decompose\.matrices pattern 'h\.\*\.nothing' matches no nn\.Linear"),
    ("memory refusal", r"decompose is estimated to need .* Lower decompose\.batch_size"),
    ("cache_dir under a file", r"vpd corpus: error: .*plain-file"),
])
def test_user_errors_of_the_stages_are_one_line(case, expected, tmp_path):
    import re

    import yaml

    if case == "cache_dir under a file":
        (tmp_path / "plain-file").write_text("")
        data = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
        data["corpus"]["cache_dir"] = str(tmp_path / "plain-file" / "cache")
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
        args = ["corpus", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "out")]
    else:
        overrides = {"seq_len above context": dict(seq_len=4096),
                     "pattern matches nothing": dict(matrices=[{"pattern": "h.*.nothing", "C": 2}]),
                     "memory refusal": dict(batch_size=1 << 20)}.get(case, {})
        args = _decompose_setup(tmp_path, **overrides)
        if case == "missing shard":
            (tmp_path / "tok" / "train.bin").unlink()
    res = vpd(*args, env={"VPD_SKIP_MEMORY_CHECK": ""})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert re.search(expected, last), last
