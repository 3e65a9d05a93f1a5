"""Probe the inverse, serve-forward and worker surfaces with bad input, as a new user would.

Each case runs ``python -m autovae ...`` in a fresh process (so a hang is a timeout, not a
stuck probe) and is classified:

* ``handled``   -- refused: exit code 2 (or another non-zero code with one ``autovae ...`` line
  last), no traceback, the message names the input (a fragment given with the case);
* ``accepted``  -- a case that must run, ran (exit 0);
* ``vague``     -- refused without naming the input;
* ``traceback`` -- a Python traceback was shown;
* ``silent``    -- a case that must be refused exited 0;
* ``refused``   -- a case that must run was refused;
* ``hang``      -- still running after the timeout;
* ``lost``      -- any earlier result (a trained run, a finished chain, a study) changed.

Usage (prints one line per case that is not handled or accepted, then the tally)::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/probe_bad_input.py [--timeout 90] [-k TEXT ...]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

MODELS = {
    "probe_fwd.py": '''
import numpy as np
import torch
from autovae.inverse import ForwardModel


class Toy(ForwardModel):
    name = "toy"
    param_shape, n_obs = (4, 4), 3

    def evaluate(self, p):
        return p.reshape(len(p), -1)[:, :3] ** 2 + 1


class RaisesInInit(Toy):
    def __init__(self):
        super().__init__()
        raise RuntimeError("license server unreachable")


class TakesOptions(Toy):
    def __init__(self, mesh):
        super().__init__()


class NoSuper(Toy):
    def __init__(self):
        self.mesh = 1


class NoSuperAtAll(Toy):
    def __init__(self):
        pass


class RaisesKeyError(Toy):
    def evaluate(self, p):
        raise KeyError("mesh 7 missing")


class RaisesValueError(Toy):
    def evaluate(self, p):
        raise ValueError("solver did not converge")


class RaisesZeroDivision(Toy):
    def evaluate(self, p):
        return 1 / 0


class WrongShape(Toy):
    def evaluate(self, p):
        return p.reshape(len(p), -1)[:, :5]


class ReturnsNumpy(Toy):
    def evaluate(self, p):
        return np.zeros((len(p), 3))


class ReturnsList(Toy):
    def evaluate(self, p):
        return [[0.0, 0.0, 0.0]] * len(p)


class NaNOut(Toy):
    def evaluate(self, p):
        return torch.full((len(p), 3), float("nan"), dtype=p.dtype)


class InfOut(Toy):
    def evaluate(self, p):
        return torch.full((len(p), 3), float("inf"), dtype=p.dtype)


class NumpyGradient(Toy):  # claims gradients, computes outside autograd
    def evaluate(self, p):
        return torch.from_numpy(np.asarray(p.detach()).reshape(len(p), -1)[:, :3] ** 2 + 1)


class TensorCopy(Toy):  # claims gradients, copies its output out of the graph
    def evaluate(self, p):
        return torch.tensor((p.reshape(len(p), -1)[:, :3] ** 2).tolist(), dtype=p.dtype)


class WrongGradient(Toy):  # the value of x^2 + 3x, the gradient of x^2 + 5x
    def evaluate(self, p):
        x = p.reshape(len(p), -1)[:, :3]
        return x ** 2 + 3 * x.detach() + 5 * (x - x.detach())


class NaNGradient(Toy):  # finite values, a NaN gradient (d sqrt(u) / du at u = 0)
    def evaluate(self, p):
        x = p.reshape(len(p), -1)[:, :3]
        return x.detach() + torch.sqrt(x * x - x * x)


class NoGradient(NumpyGradient):  # says so: gradient-free kernels only
    gradient = False
    gradient_reason = "toy has no gradient"


class NegativeObservations(Toy):
    n_obs = -3


class ZeroObservations(Toy):
    n_obs = 0


class TextObservations(Toy):
    n_obs = "3"


class EmptyShape(Toy):
    param_shape = ()


class ZeroShape(Toy):
    param_shape = (4, 0)


class TextShape(Toy):
    param_shape = "4x4"


class HugeShape(Toy):
    param_shape = (10**6, 10**6)


class Abstract(ForwardModel):
    name = "abstract"
    param_shape, n_obs = (4, 4), 3


class NotAModel:
    pass


not_a_class = 3
''',
    "probe_syntax.py": "def evaluate(:\n",
    "probe_indent.py": "def f():\nreturn 1\n",
    "probe_raises.py": "raise RuntimeError('this model needs a GPU')\n",
    "probe_exits.py": "raise KeyError('MESH_PATH')\n",
    "probe_dependency.py": "import not_a_package_anywhere\n",
}


def cases(w: dict[str, str]) -> list[tuple[str, list[str], str | None, dict]]:
    """(id, argv, fragment the refusal must name or None for a case that must run, extra)."""
    inv = ["invert", "--prior", "kle", "--grid", "4", "--dim", "2", "--chains", "2", "--warmup",
           "3", "--draws", "3", "--quiet", "--out", w["new"]]
    custom = ["invert", "--problem", "custom", "--data", w["y3"], "--noise", "0.1", "--grid",
              "4", "--dim", "4", "--chains", "2", "--warmup", "3", "--draws", "3", "--quiet",
              "--out", w["new"]]
    fwd = [*custom, "--forward"]
    out: list[tuple[str, list[str], str | None, dict]] = []

    def add(name, argv, fragment, **extra):
        out.append((name, argv, fragment, extra))

    # -- invert: numbers ---------------------------------------------------------------------
    for flag, bad in (("--chains", "0"), ("--chains", "-1"), ("--chains", "1.5"),
                      ("--chains", "abc"), ("--draws", "0"), ("--draws", "-5"),
                      ("--warmup", "-1"), ("--thin", "0"), ("--grid", "1"), ("--grid", "0"),
                      ("--grid", "abc"), ("--dim", "0"), ("--truth-seed", "-1"),
                      ("--source", "nan"), ("--source", "inf"), ("--source", "abc"),
                      ("--noise", "0"), ("--noise", "-1"), ("--noise", "nan"),
                      ("--step-size", "0"), ("--step-size", "-1"), ("--target-accept", "0"),
                      ("--target-accept", "1"), ("--target-accept", "1.5"), ("--seed", "-1"),
                      ("--checkpoint-every", "0"), ("--residual", "-1"),
                      ("--truth-resolution", "1")):
        add(f"invert {flag} {bad}", [*inv, flag, bad], flag)
    for flag, bad, frag in (("--chains", "100000000", "--chains 100000000"),
                            ("--chains", "1e8", "--chains"),
                            ("--draws", "1000000000", "--draws 1000000000"),
                            ("--grid", "1000", "--grid 1000"), ("--grid", "5000", "--grid 5000"),
                            ("--points", "1e10", "--points 1e10"),
                            ("--points", "10000000000", "--points 10000000000"),
                            ("--points", "0", "--points 0"), ("--points", "-5", "--points -5"),
                            ("--points", "63", "--points 63"), ("--points", "2.5", "--points"),
                            ("--points", "nan", "--points"),
                            ("--points", w["missing"], "missing"),
                            ("--points", w["points_out"], "outside the domain"),
                            ("--truth-resolution", "100000", "--truth-resolution 100000"),
                            ("--truth-resolution", "17", "multiple of"),
                            ("--dim", "300", "--dim 300"), ("--kernel", "foo", "--kernel"),
                            ("--problem", "foo", "--problem"), ("--prior", "foo", "--prior"),
                            ("--noise-kind", "weird", "--noise-kind"),
                            ("--bc", "middle=dirichlet:1", "middle"),
                            ("--bc", "left", "'left'"),
                            ("--data", w["missing"], "missing"),
                            ("--data", w["y3"], "3 values"),
                            ("--data", w["y_nan"], "NaN"),
                            ("--truth-file", w["missing"], "missing"),
                            ("--device", "gpu9", "gpu9"),
                            ("--config", w["missing"], "missing"),
                            ("--config", w["folder"], "is a folder"),
                            ("--config", w["bad_yaml"], "not valid YAML"),
                            ("--config", w["unknown_key"], "chians"),
                            ("--out", w["file"], "is a file"),
                            ("--out", w["run"], "holds a trained run"),
                            ("--out", w["chain"] + "/blocks", "lies inside the chain folder"),
                            ("--out", w["study"], "holds a trained run or a study"),
                            ("--out", w["file"] + "/sub", "is a file")):
        add(f"invert {flag} {Path(bad).name if '/' in bad else bad}", [*inv, flag, bad], frag)
    add("invert a missing run", ["invert", w["missing"], "--out", w["new"]], "missing")
    add("invert a run whose config.yaml is a folder", ["invert", w["cfg_folder"], "--out",
                                                       w["new"]], "config.yaml is a folder")
    add("invert --out the prior's own run", ["invert", w["run"], "--out", w["run"]],
        "holds a trained run")
    add("invert a digits run on darcy", ["invert", w["run"], "--out", w["new"]], "digits")
    # rightly accepted
    add("invert --points 16 (accept)", [*inv, "--points", "16"], None)
    add("invert --points 1e2 (accept)", [*inv, "--points", "1e2"], None)
    add("invert --chains 1 (accept)", [*inv, "--chains", "1"], None)
    # -- invert: a user's forward model --------------------------------------------------------
    for spec, frag in (("probe_missing_module:Toy", "cannot import probe_missing_module"),
                       ("probe_syntax:Toy", "syntax error"),
                       ("probe_indent:Toy", "syntax error"),
                       ("probe_raises:Toy", "this model needs a GPU"),
                       ("probe_exits:Toy", "MESH_PATH"),
                       ("probe_dependency:Toy", "not_a_package_anywhere"),
                       ("probe_fwd:Missing", "has no Missing"),
                       ("probe_fwd:NotAModel", "not a subclass"),
                       ("probe_fwd:not_a_class", "not a subclass"),
                       ("probe_fwd:Abstract", "does not define evaluate"),
                       ("probe_fwd:", "package.module:Class"), (":Toy", "package.module:Class"),
                       ("probe_fwd:RaisesInInit", "license server unreachable"),
                       ("probe_fwd:TakesOptions", "TakesOptions"),
                       ("probe_fwd:NoSuper", "super().__init__()"),
                       ("probe_fwd:NoSuperAtAll", "super().__init__()"),
                       ("probe_fwd:NegativeObservations", "n_obs"),
                       ("probe_fwd:ZeroObservations", "n_obs"),
                       ("probe_fwd:TextObservations", "n_obs"),
                       ("probe_fwd:EmptyShape", "param_shape"),
                       ("probe_fwd:ZeroShape", "param_shape"),
                       ("probe_fwd:TextShape", "param_shape"),
                       ("probe_fwd:HugeShape", "param_shape"),
                       ("probe_fwd:RaisesKeyError", "mesh 7 missing"),
                       ("probe_fwd:RaisesValueError", "solver did not converge"),
                       ("probe_fwd:RaisesZeroDivision", "ZeroDivisionError"),
                       ("probe_fwd:WrongShape", "toy"),
                       ("probe_fwd:ReturnsNumpy", "toy"),
                       ("probe_fwd:ReturnsList", "toy"),
                       ("probe_fwd:NaNOut", "toy returned"),
                       ("probe_fwd:InfOut", "toy returned"),
                       ("umbridge:not-a-url", "umbridge:not-a-url"),
                       ("umbridge:http://127.0.0.1:1/m", "127.0.0.1:1"), ("", "--forward")):
        add(f"forward {spec or 'empty'}", [*fwd, spec], frag)
    for spec, kernel, frag in (("NumpyGradient", "nuts", "carries none"),
                               ("NumpyGradient", "mala", "carries none"),
                               ("TensorCopy", "nuts", "carries none"),
                               ("WrongGradient", "nuts", "disagrees with a finite difference"),
                               ("WrongGradient", "mala", "disagrees with a finite difference"),
                               ("NaNGradient", "nuts", "gradient holds NaN"),
                               ("NoGradient", "nuts", "toy has no gradient")):
        add(f"forward {spec} --kernel {kernel}", [*fwd, f"probe_fwd:{spec}", "--kernel", kernel],
            frag)
    for spec, kernel in (("Toy", "nuts"), ("Toy", "mala"), ("Toy", "pcn"),
                         ("NumpyGradient", "pcn"), ("NoGradient", "rwm")):
        add(f"forward {spec} --kernel {kernel} (accept)",
            [*fwd, f"probe_fwd:{spec}", "--kernel", kernel], None)
    # -- serve-forward ---------------------------------------------------------------------------
    for args, frag in ((["--port", "0"], "--port"), (["--port", "-1"], "--port"),
                       (["--port", "70000"], "--port"), (["--port", "abc"], "--port"),
                       (["--port", w["held_port"]], "in use"),
                       (["--host", ""], "--host"),
                       (["--host", "nohost.invalid", "--port", "45991"], "nohost.invalid"),
                       (["--host", "192.0.2.1", "--port", "45992"], "192.0.2.1"),
                       (["--host", "bad host!", "--port", "45993"], "bad host!"),
                       (["--name", "a/b"], "'a/b'"), (["--name", "my model"], "'my model'"),
                       (["--name", "x?y"], "'x?y'"), (["--name", ""], "''"),
                       (["--name", "#frag"], "'#frag'"),
                       (["--bc", "left"], "'left'")):
        add(f"serve-forward darcy {' '.join(args)}", ["serve-forward", "darcy", *args], frag)
    for model, frag in (("nope", "nope"), ("probe_fwd:NegativeObservations", "n_obs"),
                        ("probe_fwd:ZeroObservations", "n_obs"),
                        ("probe_fwd:RaisesInInit", "license server unreachable"),
                        ("probe_syntax:Toy", "syntax error"),
                        ("probe_fwd:NoSuper", "super().__init__()"),
                        ("probe_fwd:Abstract", "does not define evaluate"),
                        ("umbridge:http://127.0.0.1:1/m", "127.0.0.1:1")):
        add(f"serve-forward {model}", ["serve-forward", model, "--port", "45994"], frag)
    add("serve-forward aristoff-bangerth --bc", ["serve-forward", "aristoff-bangerth", "--bc",
                                                 "left=dirichlet:1"], "--bc")
    add("serve-forward probe_fwd:Toy (accept)", ["serve-forward", "probe_fwd:Toy", "--port",
                                                 "45995"], None, serve=True)
    # -- worker ----------------------------------------------------------------------------------
    for args, frag in ((["--dir", w["missing"]], "no study"), (["--dir", w["file"]], "is a file"),
                       (["--dir", w["study"], "--worker", "-1"], "--worker"),
                       (["--dir", w["study"], "--worker", "abc"], "--worker"),
                       (["--dir", w["study"], "--db-pool", "-1"], "--db-pool"),
                       (["--dir", w["study"], "--db-pool", "abc"], "--db-pool"),
                       (["--dir", w["study"], "--study", "other"], "other"),
                       (["--dir", w["study"], "--device", "gpu9"], "gpu9"),
                       (["--storage", "redis://h/0"], "redis://h/0"),
                       (["--storage", "sqlite:///" + w["folder"]], "is a folder"),
                       (["--storage", "sqlite:///" + w["missing"] + "/x.db"], "missing/x.db"),
                       (["--storage", "journal:" + w["folder"]], "is a folder")):
        add(f"worker {' '.join(a if '/' not in a else Path(a).name for a in args)}",
            ["worker", *args], frag)
    # -- the previous probe's open items -------------------------------------------------------
    train = ["train", "--run", w["new"], "--data", "digits", "--hidden", "8", "--depth", "1",
             "--epochs", "1", "--quiet", "--no-evaluate"]
    add("train --latent-dim without --latent", [*train, "--latent-dim", "4"], "--latent-dim")
    add("train --fisher-estimator without --fisher-weight",
        [*train, "--fisher-estimator", "score"], "fisher_estimator")
    add("train --latent 1e10 dims", [*train, "--latent", "normal/normal:10000000000"],
        "normal/normal:10000000000")
    add("train --latent 1e30 dims", [*train, "--latent", "normal/normal:" + "9" * 30],
        "normal/normal:9999")
    for command in ("sample", "evaluate", "report", "reconstruct"):
        add(f"{command} a run whose config.yaml is a folder", [command, w["cfg_folder"]],
            "config.yaml is a folder")
    return out


def build_world(root: Path) -> dict[str, str]:
    """A trained run, a finished chain, a study and the bad files the cases use."""
    import numpy as np

    env = _env(root)
    run = root / "run"
    _autovae(["train", "--run", str(run), "--data", "digits", "--hidden", "8", "--depth", "1",
              "--epochs", "1", "--latent", "normal/normal:2", "--nll-samples", "2", "--quiet"],
             env)
    chain = root / "chain"
    _autovae(["invert", "--prior", "kle", "--grid", "4", "--dim", "2", "--chains", "2",
              "--warmup", "3", "--draws", "3", "--quiet", "--out", str(chain)], env)
    study = root / "study"
    _python("from pathlib import Path\n"
            "from autovae.config import Config\n"
            "from autovae.search import SearchSpace, StudySpec, create_study, open_storage\n"
            "space = SearchSpace(pairs=['normal/normal'], latent_dim=(2, 2), hidden=(8, 8), "
            "depth=(1, 1))\n"
            f"create_study(open_storage(None, Path({str(study)!r})), 'autovae', "
            "StudySpec(space, Config(data='digits', epochs=1), ['nll'], 1))\n", env)
    for name, text in MODELS.items():
        (root / "models" / name).parent.mkdir(exist_ok=True)
        (root / "models" / name).write_text(text)
    np.save(root / "y3.npy", np.ones(3))
    y_nan = np.ones(64)
    y_nan[3] = np.nan
    np.save(root / "y_nan.npy", y_nan)
    np.savetxt(root / "points_out.csv", np.array([[0.5, 0.5], [1.5, 0.2]]), delimiter=",")
    (root / "folder").mkdir()
    (root / "cfg_folder" / "config.yaml").mkdir(parents=True)
    (root / "file.txt").write_text("x")
    (root / "bad.yaml").write_text("chains: [1\n")
    (root / "unknown.yaml").write_text("chians: 3\n")
    return {"run": str(run), "chain": str(chain), "study": str(study),
            "y3": str(root / "y3.npy"), "y_nan": str(root / "y_nan.npy"),
            "points_out": str(root / "points_out.csv"), "folder": str(root / "folder"),
            "cfg_folder": str(root / "cfg_folder"), "file": str(root / "file.txt"),
            "bad_yaml": str(root / "bad.yaml"), "unknown_key": str(root / "unknown.yaml"),
            "missing": str(root / "missing"), "new": str(root / "new")}


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(root / "models")]),
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")


def _autovae(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "autovae", *argv], env=env, check=True,
                   capture_output=True)


def _python(code: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for top in paths:
        for p in sorted(Path(top).rglob("*")):
            h.update(str(p).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def classify(argv, fragment, env, timeout, serve=False) -> tuple[str, str]:
    """(class, the last line of the output)."""
    proc = subprocess.Popen([sys.executable, "-m", "autovae", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        if serve and "serving" in text:
            return "accepted", "served until stopped"
        return "hang", (text.strip().splitlines() or [""])[-1]
    last = (text.strip().splitlines() or [""])[-1]
    if "Traceback" in text:
        return "traceback", last
    if fragment is None:
        return ("accepted" if proc.returncode == 0 else "refused"), last
    if proc.returncode == 0:
        return "silent", last
    if fragment in text and last.startswith("autovae"):
        return "handled", last
    return "vague", last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds before a hang")
    parser.add_argument("-k", action="append", default=[],
                        help="only cases whose id contains this text (repeatable: any of them)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as held:
        root = Path(tmp)
        world = build_world(root)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen()
        world["held_port"] = str(held.getsockname()[1])
        env = _env(root)
        kept = [world["run"], world["chain"], world["study"]]
        tally: Counter[str] = Counter()
        todo = [c for c in cases(world) if not args.k or any(k in c[0] for k in args.k)]
        for name, argv, fragment, extra in todo:
            before = _fingerprint(kept)
            serve = extra.get("serve", False)
            kind, last = classify(argv, fragment, env, 20 if serve else args.timeout, serve)
            if _fingerprint(kept) != before:
                kind = "lost"
            tally[kind] += 1
            if kind not in ("handled", "accepted"):
                print(f"{kind:9s} {name}: {last[:200]}", flush=True)
            for leftover in ("new",):
                target = root / leftover
                if target.exists():
                    import shutil

                    shutil.rmtree(target)
    total = sum(tally.values())
    good = tally["handled"] + tally["accepted"]
    print(f"{total} cases in {time.perf_counter() - started:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in tally.most_common())
          + f"; handled or rightly accepted {good}/{total} = {100 * good / max(total, 1):.1f}%")
    return 0 if good == total else 1


if __name__ == "__main__":
    sys.exit(main())
