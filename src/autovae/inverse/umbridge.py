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
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from .forward import ForwardModel

__all__ = ["UMBridgeForward", "serve"]


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not name or "/" in name:
        raise ValueError(f"--forward umbridge:{url} is not of the form "
                         "umbridge:http://host:port/name (the model's name after the port)")
    return f"{parts.scheme}://{parts.netloc}", name


class UMBridgeForward(ForwardModel):
    """A UM-Bridge model over HTTP: parameters (B, n_in) -> observations (B, n_out)."""

    def __init__(self, url: str, timeout: float = 10.0):
        super().__init__()
        import requests
        import umbridge

        self.url = url
        self.base, model_name = _split(url)
        self.name = f"umbridge:{url}"
        try:
            info = requests.get(f"{self.base}/Info", timeout=timeout).json()
        except (requests.RequestException, ValueError) as err:
            raise ValueError(f"cannot reach a UM-Bridge server at {self.base} "
                             f"({type(err).__name__}); is it running, and is the address "
                             "right?") from None
        models = info.get("models", [])
        if model_name not in models:
            raise ValueError(f"the UM-Bridge server at {self.base} has no model {model_name!r}; "
                             f"it serves {', '.join(models) or 'none'}")
        self.model = umbridge.HTTPModel(self.base, model_name)
        ins, outs = self.model.get_input_sizes(), self.model.get_output_sizes()
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"the UM-Bridge model {model_name} takes {len(ins)} input and "
                             f"gives {len(outs)} output vectors; autovae needs one of each")
        if not self.model.supports_evaluate():
            raise ValueError(f"the UM-Bridge model {model_name} does not support Evaluate")
        self.param_shape, self.n_obs = (int(ins[0]),), int(outs[0])
        self.gradient = bool(self.model.supports_gradient())
        if not self.gradient:
            self.gradient_reason = (f"the UM-Bridge model {model_name} at {self.base} does not "
                                    "support Gradient")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url}

    def evaluate(self, params: torch.Tensor) -> torch.Tensor:
        return _Remote.apply(params.to(torch.float64), self)

    def _evaluate_rows(self, rows: np.ndarray) -> np.ndarray:
        out = []
        for row in rows:
            try:
                y = self.model([row.tolist()])[0]
            except Exception as err:  # the server's error is the model's: a NaN for the chain
                if "Connection" in type(err).__name__:
                    raise ValueError(f"lost the UM-Bridge server at {self.base} ({err})") \
                        from None
                y = [math.nan] * self.n_obs
            out.append(y)
        return np.asarray(out, dtype=np.float64)

    def _gradient_rows(self, rows: np.ndarray, sens: np.ndarray) -> np.ndarray:
        return np.asarray([self.model.gradient(0, 0, [r.tolist()], s.tolist())
                           for r, s in zip(rows, sens, strict=True)], dtype=np.float64)


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
          name: str | None = None) -> None:
    """Serve ``model`` under the UM-Bridge protocol at http://host:port/name (blocks).

    The parameters travel flat (``prod(param_shape)`` values); Gradient is offered when the
    model is differentiable.
    """
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
        umbridge.serve_models([Served(name)], port=port)
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
