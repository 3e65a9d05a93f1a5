"""UM-Bridge: any model served over HTTP as a forward model, and ours served to others.

:class:`UMBridgeForward` reaches a model at ``http://host:port/name`` with the ``umbridge``
client: one input vector, one output vector; gradients through the model's ``Gradient`` when
it supports it (then NUTS and MALA work), else gradient kernels are refused with that reason.
:func:`serve` serves one of our forward models under the UM-Bridge protocol
(``autovae serve-forward``), so that other UQ tools can call it, and so that the tests invert
through a real server.
"""

from __future__ import annotations

import errno
import math
import re
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .forward import ForwardModel

__all__ = ["DEFAULT_TIMEOUT", "UMBridgeForward", "serve"]


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not name or "/" in name:
        raise ValueError(f"--forward umbridge:{url} is not of the form "
                         "umbridge:http://host:port/name (the model's name after the port)")
    return f"{parts.scheme}://{parts.netloc}", name


DEFAULT_TIMEOUT = 600.0
"""Seconds a UM-Bridge request may take before it is given up (``--forward-timeout``)."""
_SETUP_TIMEOUT = 30.0  # the model's description (Info, sizes) and every connection


class UMBridgeForward(ForwardModel):
    """A UM-Bridge model over HTTP: parameters (B, n_in) -> observations (B, n_out).

    Each row of a batch is one request; ``set_jobs(N)`` keeps up to N in flight (the server's
    workers, or a load balancer in front of many servers, spread them), and the rows come back
    in order, so the draws do not depend on N. ``timeout``: seconds a request may take. A
    model's error comes back with the server's own message; a server that stops answering,
    or answers nothing within ``timeout``, stops the run with one line naming it (the chain
    folder keeps its last checkpoint: run the same command again to resume). A parameter set
    the model cannot evaluate should give NaN outputs: the sampler then rejects it.
    """

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        super().__init__()
        import requests

        self.url = url
        self.base, self.model_name = _split(url)
        self.name = f"umbridge:{url}"
        self.timeout = check_timeout(timeout)
        self._local = threading.local()
        try:
            info = requests.get(f"{self.base}/Info", timeout=_SETUP_TIMEOUT).json()
        except (requests.RequestException, ValueError) as err:
            raise ValueError(f"cannot reach a UM-Bridge server at {self.base} "
                             f"({type(err).__name__}); is it running, and is the address "
                             "right?") from None
        models = info.get("models", []) if isinstance(info, dict) else []
        if self.model_name not in models:
            raise ValueError(f"the UM-Bridge server at {self.base} has no model "
                             f"{self.model_name!r}; it serves {', '.join(models) or 'none'}")
        support = self._post("ModelInfo", {}, _SETUP_TIMEOUT)["support"]
        ins = self._post("InputSizes", {"config": {}}, _SETUP_TIMEOUT)["inputSizes"]
        outs = self._post("OutputSizes", {"config": {}}, _SETUP_TIMEOUT)["outputSizes"]
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"the UM-Bridge model {self.model_name} takes {len(ins)} input and "
                             f"gives {len(outs)} output vectors; autovae needs one of each")
        if not support.get("Evaluate", False):
            raise ValueError(f"the UM-Bridge model {self.model_name} does not support Evaluate")
        self.param_shape, self.n_obs = (int(ins[0]),), int(outs[0])
        self.gradient = bool(support.get("Gradient", False))
        if not self.gradient:
            self.gradient_reason = (f"the UM-Bridge model {self.model_name} at {self.base} "
                                    "does not support Gradient")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url}

    def set_jobs(self, jobs: int) -> None:
        """Keep up to ``jobs`` requests in flight."""
        from .parallel import check_jobs

        self.jobs = check_jobs(jobs)

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        return _Remote.apply(params.to(torch.float64), self)

    # -- HTTP -----------------------------------------------------------------------------------
    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:  # one connection per worker thread
            session = self._local.session = requests.Session()
        return session

    def _post(self, route: str, body: dict[str, Any], timeout: float | None = None
              ) -> dict[str, Any]:
        """One request (``timeout``: seconds, default ``self.timeout``); the model's or the
        server's failure as a ValueError naming both."""
        import requests

        timeout = self.timeout if timeout is None else timeout
        where = f"the UM-Bridge model {self.model_name} at {self.base}"
        resume = ("; nothing is lost: the chain folder keeps its last checkpoint, and running "
                  "the same command again resumes it")
        try:
            r = self._session().post(f"{self.base}/{route}", json={"name": self.model_name,
                                                                  **body},
                                     timeout=(min(timeout, _SETUP_TIMEOUT), timeout))
        except requests.Timeout:
            raise ValueError(f"{where} did not answer {route} within {timeout:g} s "
                             f"(--forward-timeout){resume}") from None
        except requests.RequestException as err:
            raise ValueError(f"lost the UM-Bridge server at {self.base}: it stopped answering "
                             f"({route}: {type(err).__name__}){resume} once it is back") \
                from None
        try:
            data = r.json()
        except ValueError:
            text = " ".join(r.text.split())[:200] or "no body"
            raise ValueError(f"{where} failed in {route}: HTTP {r.status_code} ({text}); see "
                             "the server's log for the model's traceback") from None
        if isinstance(data, dict) and "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {"message": data["error"]}
            raise ValueError(f"{where} failed in {route}: {err.get('type', 'Error')}: "
                             f"{err.get('message', '')}")
        if not isinstance(data, dict):
            raise ValueError(f"{where} answered {route} with {type(data).__name__}, not a JSON "
                             "object")
        return data

    def _vector(self, data: dict[str, Any], key: str, route: str, size: int) -> list[float]:
        try:
            v = np.asarray(data[key][0] if route == "Evaluate" else data[key],
                           dtype=np.float64)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f"the UM-Bridge model {self.model_name} at {self.base} answered "
                             f"{route} without a vector of numbers under {key!r}") from None
        if v.shape != (size,):
            raise ValueError(f"the UM-Bridge model {self.model_name} at {self.base} returned "
                             f"{v.size} values from {route}; it declares {size}")
        return v

    def _map(self, fn, n: int) -> np.ndarray:
        """fn(i) for i in 0..n, one request each, up to ``jobs`` in flight, in order (every
        request answered before an error is raised)."""
        from .parallel import run_rows

        return np.stack(run_rows(lambda i, _: fn(i), n, self.jobs, each=True))

    def _evaluate_rows(self, rows: np.ndarray) -> np.ndarray:
        def one(i):
            data = self._post("Evaluate", {"input": [rows[i].tolist()], "config": {}})
            return self._vector(data, "output", "Evaluate", self.n_obs)

        return self._map(one, len(rows))

    def _gradient_rows(self, rows: np.ndarray, sens: np.ndarray) -> np.ndarray:
        def one(i):
            data = self._post("Gradient", {"outWrt": 0, "inWrt": 0, "input": [rows[i].tolist()],
                                           "sens": sens[i].tolist(), "config": {}})
            return self._vector(data, "output", "Gradient", rows.shape[1])

        return self._map(one, len(rows))

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def check_timeout(value) -> float:
    """A request timeout in seconds: positive and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"--forward-timeout must be a positive number of seconds, got "
                         f"{value!r}")
    return float(value)


class _Remote(torch.autograd.Function):
    """Rows through the server; backward by its Gradient (vector-Jacobian product)."""

    @staticmethod
    def forward(ctx, params, model):
        rows = params.detach().cpu().numpy()
        ctx.model, ctx.rows = model, rows
        return torch.from_numpy(model._evaluate_rows(rows)).to(params.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        g = ctx.model._gradient_rows(ctx.rows, grad_out.detach().cpu().double().numpy())
        return torch.from_numpy(g).to(grad_out.dtype), None


def serve(model: ForwardModel, port: int = 4242, host: str = "127.0.0.1",
          name: str | None = None, workers: int = 1) -> None:
    """Serve ``model`` under the UM-Bridge protocol at http://host:port/name (blocks).

    The parameters travel flat (``prod(param_shape)`` values); Gradient is offered when the
    model is differentiable. ``workers``: requests evaluated at once (threads; a model whose
    work releases the GIL, or waits, runs that many in parallel).
    """
    from .parallel import check_jobs

    workers = check_jobs(workers, name="--workers")
    import functools

    import aiohttp.web
    import umbridge

    name = check_serve(host, port, model.name if name is None else name)
    size = int(np.prod(model.param_shape))

    class Served(umbridge.Model):
        def get_input_sizes(self, config=None):
            return [size]

        def get_output_sizes(self, config=None):
            return [model.n_obs]

        def _params(self, parameters):
            return torch.tensor(parameters[0], dtype=torch.float64).reshape(1,
                                                                            *model.param_shape)

        def __call__(self, parameters, config=None):
            with torch.no_grad():
                return [model(self._params(parameters))[0].tolist()]

        def gradient(self, out_wrt, in_wrt, parameters, sens, config=None):
            x = self._params(parameters).requires_grad_(True)
            with torch.enable_grad():
                y = model(x)
                (g,) = torch.autograd.grad(y, x, torch.tensor([sens], dtype=torch.float64))
            return g.reshape(-1).tolist()

        def supports_evaluate(self):
            return True

        def supports_gradient(self):
            return bool(model.gradient)

    # umbridge's serve_models listens on every interface; bind the host asked for instead
    aiohttp.web.run_app = functools.partial(aiohttp.web.run_app, host=host)
    try:
        umbridge.serve_models([Served(name)], port=port, max_workers=workers)
    except OSError as err:  # taken between the check and the bind
        raise ValueError(f"cannot serve on {host}:{port}: {err.strerror or err}; give another "
                         "--port or --host") from None


# a model's name travels as the last part of the client's URL (umbridge:http://host:port/NAME)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*")


def check_serve(host: str, port: int, name: str) -> str:
    """``name`` if the model can be served as ``name`` at ``host``:``port``: a ValueError naming
    the input otherwise (a port out of range or in use, a host that is not this machine's, a
    name that does not fit a URL's last part)."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(f"the model name {name!r} cannot be the last part of a UM-Bridge "
                         "URL (umbridge:http://host:port/NAME); give --name with letters, "
                         "digits, '.', '_', '~' and '-', starting with a letter or digit")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"--port must be an integer in [1, 65535], got {port!r}")
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"--host must be an address of this machine (127.0.0.1, 0.0.0.0, a "
                         f"name), got {host!r}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError, ValueError) as err:
        raise ValueError(f"--host {host!r} is not an address ({err}); give 127.0.0.1 (this "
                         "machine only), 0.0.0.0 (every interface) or a name that resolves") \
            from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind(address)
        except OSError as err:
            why = {errno.EADDRINUSE: "the port is in use (another server?)",
                   errno.EACCES: "ports below 1024 need privileges",
                   errno.EADDRNOTAVAIL: "the host is not an address of this machine"
                   }.get(err.errno, err.strerror or str(err))
            raise ValueError(f"cannot serve on {host}:{port}: {why}; give another --port or "
                             "--host") from None
    return name
