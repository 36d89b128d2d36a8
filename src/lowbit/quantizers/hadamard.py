"""Fast Walsh-Hadamard transform for any size m * 2^k with a known Hadamard matrix of order m.

QuaRot (Ashkboos et al., 2024) rotates activations with orthonormal Hadamard matrices. For n = 2^k the
Sylvester matrix is applied with the O(n log n) butterfly; for other sizes (e.g. 768 = 12 * 64, 11008 =
172 * 64) the literature uses the Kronecker product H_m (x) H_{2^k} with a Hadamard matrix of order m. Here
H_m comes from Paley's constructions (q prime: order q + 1 if q = 3 mod 4, 2(q + 1) if q = 1 mod 4), which
cover the orders QuaRot ships as tables (12, 20, 28, 36, 44, 60, ...) except a few (e.g. 172).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from lowbit.errors import LowbitError


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, int(q ** 0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) with chi the quadratic character mod the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)])
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m from Paley's construction I or II, or None if neither applies."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: H = I + [[0, 1^T], [-1, Q]]
        s = torch.zeros(m, m)
        s[0, 1:] = 1.0
        s[1:, 0] = -1.0
        s[1:, 1:] = _jacobsthal(q)
        return s + torch.eye(m)
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II: C (x) [[1, -1], [-1, -1]] + I (x) [[1, 1], [1, -1]]
            c = torch.zeros(q + 1, q + 1)
            c[0, 1:] = 1.0
            c[1:, 0] = 1.0
            c[1:, 1:] = _jacobsthal(q)
            a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]])
            b = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
            return torch.kron(c, a) + torch.kron(torch.eye(q + 1), b)
    return None


@lru_cache(maxsize=32)
def factor(n: int) -> tuple[int, int]:
    """(m, p) with n = m * p, p a power of two and a Hadamard matrix of order m known (m = 1 if n = 2^k)."""
    if n < 1:
        raise LowbitError(f"a Hadamard transform needs a positive size, got {n}")
    p = n & -n  # largest power of two dividing n
    odd = n // p
    if odd == 1:
        return 1, n
    j = 4  # Hadamard orders above 2 are multiples of 4
    while j <= p:
        if _paley(odd * j) is not None:
            return odd * j, n // (odd * j)
        j *= 2
    raise LowbitError(f"no Hadamard matrix known for size {n} (= {odd} * {p}); sizes m * 2^k need a Paley order "
                      "m (q + 1 or 2(q + 1) for a prime q), e.g. 768 = 12 * 64")


@lru_cache(maxsize=32)
def _small(m: int) -> torch.Tensor:
    h = _paley(m)
    assert h is not None
    return h


def _butterfly(x: torch.Tensor) -> torch.Tensor:
    """x H_p along the last dim (Sylvester order, unnormalised), p = 2^k, in log2(p) stages."""
    shape = x.shape
    p = shape[-1]
    h = 1
    while h < p:
        y = x.reshape(*shape[:-1], p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return x.reshape(shape)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """x M along the last dimension, M = (H_m (x) H_p) / sqrt(n) orthonormal; O(n log n) for the 2^k part."""
    n = x.shape[-1]
    m, p = factor(n)
    dtype = x.dtype
    work = x if x.dtype == torch.float64 else x.float()
    y = _butterfly(work.reshape(*x.shape[:-1], m, p))
    if m > 1:  # [.., m, p]: X -> H_m^T X H_p
        y = torch.matmul(_small(m).T.to(y), y)
    y = y.reshape(x.shape)
    return (y / n ** 0.5).to(dtype)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The orthonormal matrix M that fwht multiplies by (x M), as a dense [n, n] float tensor."""
    return fwht(torch.eye(n))


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """A random orthogonal Hadamard rotation diag(signs) M (QuaRot's randomised Hadamard), dense [n, n]."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    return fwht(torch.diag(signs))
