"""Independent arithmetic for golden loss tests: plain `math`, never the objectives' internals."""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)
F64 = torch.float64


def ls(z: float) -> float:
    """log sigmoid(z), written independently of torch."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def t(x, dtype=F64, grad=False):
    return torch.tensor(x, dtype=dtype, requires_grad=grad)


def close(a, b, tol=1e-9):
    a = torch.as_tensor(a, dtype=F64)
    b = torch.as_tensor(b, dtype=F64)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)
