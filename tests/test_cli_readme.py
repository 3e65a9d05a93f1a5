import re
import subprocess
import sys
from pathlib import Path

import torch

from autovae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_pairs_prints_the_matrix(capsys):
    assert main(["pairs"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:9]}
    assert set(rows) == {"normal", "laplace", "cauchy", "logistic", "uniform", "gumbel",
                         "exponential"}
    assert rows["logistic"][0] == "0.1266"   # closed form at loc 0.3, scale 0.7 vs N(0, 1)
    assert rows["normal"][2].endswith("~")   # normal/cauchy is numerical
    assert rows["cauchy"][0] == "inf"


def test_datasets_lists_the_registry(capsys):
    from autovae.data import DATASETS

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for info in DATASETS.values():  # names in one column, however long the longest
        assert any(line.startswith(info.name) and line.endswith(info.description)
                   for line in out.splitlines())
    width = max(len(name) for name in DATASETS) + 2
    starts = {line.index(info.description) for line in out.splitlines()
              for info in DATASETS.values() if line.endswith(info.description)}
    assert starts == {max(16, width)}
    assert "or dequantized:L:NAME" in out


def test_bad_input_is_one_line_and_exit_code_2(capsys):
    assert main(["pairs", "--scale", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autovae: error: normal: scale must be positive")
    assert len(err.strip().splitlines()) == 1


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "autovae", "pairs", "--prior-scale", "2"],
                         capture_output=True, text=True, check=True).stdout
    assert "prior(loc=0, scale=2)" in out


def test_readme_examples_run(tmp_path, monkeypatch):
    """Every Python block of the README runs as written (in a scratch folder)."""
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["z"].shape == (5, 32, 20)
    assert torch.isfinite(namespace["estimate"].value).all()
    assert namespace["run"].has_checkpoint() and namespace["model"].has_bound
    assert namespace["result"].run.history()[-1]["epoch"] == 5


def test_every_readme_command_parses():
    """Every `autovae ...` line of the README's shell blocks is accepted by the parser (a
    renamed flag left in the README fails here)."""
    import shlex

    from autovae.cli import build_parser

    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip().rstrip("&").strip()
                if part.startswith("autovae ") and "--help" not in part:
                    commands.append(part)
    assert len(commands) > 20
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as err:
            raise AssertionError(f"README command does not parse: {command}") from err
