"""A toy model with two optimizers for the training-loop tests: a two-player quadratic game.

Player ``a`` minimises ``f_a = a^2 / 2 + a b - a m`` and player ``b`` minimises
``f_b = b^2 / 2 - a b - b c`` (m = the batch mean of the data, c a constant). Setting each
player's own gradient to zero gives the unique Nash equilibrium ``a + b = m``, ``b - a = c``:
``a* = (M - c) / 2``, ``b* = (M + c) / 2`` with M the data mean. The simultaneous gradient field
has Jacobian [[1, 1], [-1, 1]] (eigenvalues 1 +- i), so gradient play with a small step
converges to it. Each player has its own optimizer, stepped in the order the model yields.
"""

from __future__ import annotations

import torch
from torch import nn

from autovae.models import MODELS, Model

C = 0.5


class QuadraticGame(Model):
    name = "quadratic-game"
    validation_keys = ("val_minus_distance",)

    def __init__(self, dim: int = 4):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(dim))
        self.b = nn.Parameter(torch.zeros(dim))
        self.leaked = False  # did a player's loss ever change the other player's gradient?

    @classmethod
    def from_config(cls, config, event_shape):
        return cls(dim=int(torch.Size(event_shape).numel()))

    def configure_optimizers(self, config):
        return {"player_a": torch.optim.SGD([self.a], lr=config.lr, momentum=0.5),
                "player_b": torch.optim.Adam([self.b], lr=config.lr)}

    def training_step(self, x, ctx):
        m = x.flatten(1).mean(0)
        # each loss depends on both players: the loop must step only the yielded player
        f_a = (0.5 * self.a**2 + self.a * self.b - self.a * m).sum()
        ctx.log("train_f_a", f_a.detach().expand(x.shape[0]))
        b_grad = None if self.b.grad is None else self.b.grad.clone()
        yield "player_a", f_a
        self.leaked |= not _same(b_grad, self.b.grad)
        f_b = (0.5 * self.b**2 - self.a * self.b - self.b * C).sum()
        ctx.log("train_f_b", f_b.detach().expand(x.shape[0]))
        a_grad = self.a.grad.clone()
        yield "player_b", f_b
        self.leaked |= not _same(a_grad, self.a.grad)

    def equilibrium(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (mean - C) / 2, (mean + C) / 2

    def validation_metrics(self, x, batch_size):
        a_star, b_star = self.equilibrium(x.flatten(1).mean(0))
        distance = (self.a - a_star).norm() + (self.b - b_star).norm()
        return {"minus_distance": -distance.item()}

    def diagnose(self, x, term):
        player = self.a if term == "player_a" else self.b
        return [f"the parameters of {term} have diverged (max |value| "
                f"{player.detach().abs().max().item():.3g})"]

    def generate(self, n):
        return (self.a + self.b).expand(n, -1)


def _same(before, after) -> bool:
    if before is None or after is None:
        return before is None and after is None
    return torch.equal(before, after)


def register() -> None:
    """Make ``--model quadratic-game`` known (tests and their subprocesses call this)."""
    MODELS[QuadraticGame.name] = QuadraticGame
