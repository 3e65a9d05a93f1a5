import json
import math
from pathlib import Path

import pytest
import torch

VECTORS_PATH = Path(__file__).parent / "data" / "gvi-test-vectors.json"


def load_vectors() -> dict:
    """The verified test vectors (a copy of shared/spec/gvi-test-vectors.json)."""
    return json.loads(VECTORS_PATH.read_text())


def as_float(v) -> float:
    """JSON value to float; the string "inf" stands for +infinity."""
    return math.inf if v == "inf" else float(v)


@pytest.fixture(scope="session")
def vectors() -> dict:
    return load_vectors()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
