"""The one settings engine (autovae.settings) under Config, InverseConfig and the kernels'
options: choices read from the registries, problems and kernels that read what they declare,
flags generated from the declarations (issue 26)."""

from __future__ import annotations

import inspect
import json

import pytest

from autovae.cli import build_parser, main
from autovae.config import Config
from autovae.inverse import KERNELS, PROBLEMS, InverseConfig, kernel_options
from autovae.inverse.kernels import PCNKernel
from autovae.settings import Settings, setting


def test_kernel_options_are_constructor_keywords_and_flags():
    help_text = build_parser().commands["invert"].format_help()
    for name, cls in KERNELS.items():
        params = inspect.signature(cls.__init__).parameters
        for key, spec in kernel_options(name).items():
            assert key in params and spec.default == params[key].default, (name, key)
            assert spec.flag in help_text
        # every keyword a user could want is reachable: declared, or common to all kernels
        assert set(params) - {"self"} <= set(kernel_options(name)) | {"step_size",
                                                                      "target_accept"}


def test_choices_are_read_from_the_registries(monkeypatch):
    class Fast(PCNKernel):
        name = "fast"

    monkeypatch.setitem(KERNELS, "fast", Fast)
    assert InverseConfig(kernel="fast").kernel == "fast"
    assert "fast" in build_parser().commands["invert"].format_help()
    monkeypatch.delitem(KERNELS, "fast")
    with pytest.raises(ValueError, match="--kernel must be one of pcn, rwm, mala, nuts"):
        InverseConfig(kernel="fast")
    assert set(InverseConfig.__dataclass_fields__["problem"].metadata["choices"]()) \
        == set(PROBLEMS)


def test_every_setting_is_read_by_some_problem():
    from autovae.inverse.config import SETTINGS
    from autovae.inverse.problems import COMMON

    for name in SETTINGS.specs:
        assert name in COMMON or any(name in p.reads for p in PROBLEMS.values()), name


def test_forward_without_problem_selects_custom():
    assert InverseConfig().problem == "darcy"
    assert InverseConfig(forward="pkg.mod:Model").problem == "custom"
    cfg = InverseConfig.from_dict(InverseConfig(forward="m:M", noise=0.1).to_dict())
    assert cfg.problem == "custom" and cfg.noise == 0.1


def test_kernel_options_reach_the_kernel(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["invert", "--prior", "kle", "--grid", "4", "--dim", "3", "--kernel", "mala",
            "--precondition", "none", "--no-adapt", "--chains", "2", "--warmup", "5",
            "--draws", "5", "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    kernel = json.loads((out / "chain.json").read_text())["settings"]["kernel"]
    assert kernel["precondition"] == "none" and kernel["adapt"] is False
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["kernel_options"] == {"precondition": "none", "adapt": False}
    # the same from a config file, at the top level
    conf = tmp_path / "inv.yaml"
    conf.write_text("prior: kle\ngrid: 4\ndim: 3\nkernel: mala\nprecondition: none\n"
                    "adapt: false\nchains: 2\nwarmup: 5\ndraws: 5\n")
    assert main(["invert", "--config", str(conf), "--out", str(out), "--quiet"]) == 0
    assert "0 new PDE solves" in capsys.readouterr().out  # the same settings: resumed


def test_one_engine_for_both_records():
    from autovae.config import SETTINGS as TRAIN
    from autovae.inverse.config import SETTINGS as INVERT

    assert type(TRAIN) is type(INVERT) is Settings
    with pytest.raises(ValueError, match="epochs must be an integer, got True"):
        Config(epochs=True)
    with pytest.raises(ValueError, match="--chains must be an integer, got True"):
        InverseConfig(chains=True)
    with pytest.raises(ValueError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        Config().replace(epoch=3)
    with pytest.raises(ValueError, match="unknown invert setting 'draw'; did you mean 'draws'"):
        InverseConfig.from_dict({"draw": 3})


def test_a_new_record_gets_the_engine():
    from dataclasses import dataclass

    @dataclass
    class Probe:
        count: int = setting(2, "how many", domain="count")
        mode: str | None = setting(None, "which", choices=("a", "b"))
        on: bool = setting(False, "switch")

    engine = Settings.of(Probe, "probe setting", by_flag=True)
    assert engine.coerce("count", "3") == 3 and engine.coerce("on", "yes") is True
    assert engine.coerce("mode", "none") is None
    for name, value, words in (("count", 0, "--count must be an integer >= 1"),
                               ("mode", "c", "--mode must be one of a, b, got 'c'"),
                               ("on", "maybe", "--on must be true or false")):
        with pytest.raises(ValueError, match=words):
            engine.coerce(name, value)
