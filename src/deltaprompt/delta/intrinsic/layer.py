"""Random projections from a d-dimensional vector to a weight tensor, never stored as a matrix.

``Fastfood`` is Le et al.'s (2013) transform as used by Li et al. (2018) and Aghajanyan et al.
(2021), stacked as Le et al. do when the output is longer than the input: a tensor of D entries
is covered by ceil(D / L) blocks ``H G_j Π_j H B`` of size L (the power of two >= d), with H the
Walsh-Hadamard matrix, B random signs, Π_j a random permutation and G_j a Gaussian diagonal.
``H B z`` is the same for every block, so it is computed once; the rest costs one fast
Walsh-Hadamard transform per block: O(D log d) work and O(D) stored numbers (2 + 4 bytes per
entry), never a D x d matrix. Each block is scaled so that every column of the projection has
norm exactly 1 when L divides D (1 in expectation otherwise): one unit of z moves each tensor by
one unit of Frobenius norm, as in the papers' code.

``SparseProjection``: a very sparse random projection (Li, Hastie & Church 2006, s = sqrt(D)):
each column has k = ceil(sqrt(D)) entries ±1/sqrt(k) at random rows, so its squared norm is 1
in expectation. 5 bytes per non-zero, d sqrt(D) of them: less than Fastfood for large tensors.

Both are built from a ``torch.Generator`` the method seeds per tensor, so re-applying the
method to a freshly loaded model rebuilds exactly the same projection; their tensors are
non-persistent buffers (never saved, moved with the model). ``project`` runs them through a
custom autograd function: the backward pass applies the transpose, so nothing of size D is
kept for it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

_CHUNK = 1 << 20  # entries per pass: intermediate tensors stay a few MB whatever the tensor
_RADIX_BITS = 6  # butterflies of up to 2**6 points: ceil(log2(L) / 6) passes


@lru_cache(maxsize=64)
def hadamard(size: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    """The unnormalised Sylvester-Hadamard matrix of ``size`` (a power of two)."""
    matrix = torch.ones(1, 1, dtype=dtype, device=device)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform over the last dimension (a power of two):
    ``fwht(x) == x @ H`` with H the Sylvester-Hadamard matrix, in O(n log n) per row.

    Radix-64 butterflies rather than the textbook radix-2 ones: H_n is the Kronecker product of
    Hadamard matrices of at most 64 points, so each pass transforms the last (at most 6) bits of
    the index with one (rows, m) x (m, m) product and rotates them to the front; after
    ceil(log2(n) / 6) passes every group of bits is done and the order restored. A few dense
    passes instead of log2(n) elementwise ones: 4 to 8 times faster on CPU (measured).
    """
    n = x.shape[-1]
    bits = n.bit_length() - 1
    if n != 1 << bits:
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-two length, got {n}")
    y = x.reshape(-1, n)
    rows = y.shape[0]
    passes = -(-bits // _RADIX_BITS)
    for index in range(passes):  # the bits split as evenly as possible
        size = 1 << (bits // passes + (index < bits % passes))
        factor = hadamard(size, y.dtype, str(y.device))
        y = (y.reshape(-1, size) @ factor).reshape(rows, n // size, size).transpose(1, 2).reshape(rows, n)
    return y.reshape(x.shape)


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.promote_types(z.dtype, torch.float32)


class Projection(nn.Module):
    """A fixed (numel x dimension) linear map: ``forward_map`` z -> delta, ``transpose_map`` back."""

    numel: int
    dimension: int

    def forward_map(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transpose_map(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Fastfood(Projection):
    """Stacked Fastfood blocks ``H G_j Π_j H B`` (see the module docstring). ``gauss`` holds each
    block's Gaussian diagonal already multiplied by its normalisation."""

    def __init__(self, numel: int, dimension: int, generator: torch.Generator):
        super().__init__()
        self.numel, self.dimension = numel, dimension
        self.block = 1 << max(0, (dimension - 1).bit_length())
        shape = (-(-numel // self.block), self.block)
        signs = torch.randint(0, 2, (self.block,), generator=generator, dtype=torch.int8) * 2 - 1
        permutation = torch.argsort(torch.rand(shape, generator=generator), dim=1)
        gauss = torch.randn(shape, generator=generator)
        # Block j's columns have norm sqrt(L * sum G_j^2); stacking ceil(D/L) of them and
        # keeping D rows: scale by 1/sqrt(D * sum G_j^2) for norm 1 (exact when L divides D).
        gauss = gauss / (numel * gauss.square().sum(1, keepdim=True)).sqrt()
        index_dtype = torch.int16 if self.block <= 1 << 15 else torch.int32
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("permutation", permutation.to(index_dtype), persistent=False)
        self.register_buffer("gauss", gauss, persistent=False)

    def _chunks(self) -> list[slice]:
        rows = max(1, _CHUNK // self.block)
        return [slice(start, start + rows) for start in range(0, self.gauss.shape[0], rows)]

    def forward_map(self, z: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(z)
        padded = torch.zeros(self.block, dtype=dtype, device=self.gauss.device)
        padded[: self.dimension] = z.to(dtype)
        mixed = fwht(self.signs * padded)  # H B z, shared by every block
        out = torch.empty(self.gauss.shape, dtype=dtype, device=self.gauss.device)
        for part in self._chunks():
            index = self.permutation[part].long()
            picked = mixed.index_select(0, index.reshape(-1)).view(index.shape)  # Π_j
            out[part] = fwht(picked * self.gauss[part].to(dtype))  # H G_j
        return out.reshape(-1)[: self.numel]

    def transpose_map(self, grad: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(grad)
        padded = torch.zeros(self.gauss.numel(), dtype=dtype, device=self.gauss.device)
        padded[: self.numel] = grad.reshape(-1).to(dtype)
        padded = padded.view(self.gauss.shape)
        total = torch.zeros(self.block, dtype=dtype, device=self.gauss.device)
        for part in self._chunks():
            spread = fwht(padded[part]) * self.gauss[part].to(dtype)  # G_j H
            total.index_add_(0, self.permutation[part].long().reshape(-1), spread.reshape(-1))  # sum_j Π_j^T
        return (fwht(total) * self.signs)[: self.dimension]  # B H


class SparseProjection(Projection):
    """Each of the ``dimension`` columns: k = ceil(sqrt(numel)) entries ±1/sqrt(k) at rows drawn
    uniformly (with replacement, so a repeated row adds up; the squared norm stays 1 in
    expectation)."""

    def __init__(self, numel: int, dimension: int, generator: torch.Generator):
        super().__init__()
        self.numel, self.dimension = numel, dimension
        self.per_column = min(numel, math.isqrt(numel - 1) + 1)
        count = dimension * self.per_column
        rows = torch.randint(0, numel, (count,), generator=generator)
        signs = torch.randint(0, 2, (count,), generator=generator, dtype=torch.int8) * 2 - 1
        self.register_buffer("rows", rows.to(torch.int32), persistent=False)
        self.register_buffer("signs", signs, persistent=False)

    def forward_map(self, z: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(z)
        values = z.to(dtype).repeat_interleave(self.per_column) * self.signs / math.sqrt(self.per_column)
        out = torch.zeros(self.numel, dtype=dtype, device=self.rows.device)
        return out.index_add_(0, self.rows.long(), values)

    def transpose_map(self, grad: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(grad)
        picked = grad.reshape(-1).to(dtype)[self.rows.long()] * self.signs
        return picked.view(self.dimension, self.per_column).sum(1) / math.sqrt(self.per_column)


class _Project(torch.autograd.Function):
    """z -> P z with P^T in the backward pass; saves nothing of the tensor's size."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, projection: Projection) -> torch.Tensor:  # type: ignore[override]
        ctx.projection = projection
        ctx.z_dtype = z.dtype
        return projection.forward_map(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.projection.transpose_map(grad).to(ctx.z_dtype), None


def project(z: torch.Tensor, projection: Projection) -> torch.Tensor:
    """``P z`` (flat, ``projection.numel`` entries), differentiable in z."""
    device = next(projection.buffers()).device
    return _Project.apply(z.to(device), projection)


class Subspace(nn.Module):
    """The trained coordinates: ``z`` (``dimension`` values, zero at the start) and, with SAID,
    one scale per target tensor (``scales``, one at the start: at zero, neither z nor the
    scales would receive a gradient)."""

    def __init__(
        self, dimension: int, projections: list[Projection], said: bool, device: torch.device | None = None
    ):
        super().__init__()
        self.z = nn.Parameter(torch.zeros(dimension, device=device))
        self.scales = nn.Parameter(torch.ones(len(projections), device=device)) if said else None
        self.projections = nn.ModuleList(projections)

    def delta(self, index: int) -> torch.Tensor:
        """Flat update of target ``index``: ``P_i z`` (times its scale with SAID)."""
        projection = self.projections[index]
        step = project(self.z, projection)  # type: ignore[arg-type]
        if self.scales is not None:
            step = step * self.scales[index].to(step.device)
        return step


class SubspaceDelta(nn.Module):
    """Parametrisation of one target: ``theta0 -> theta0 + P_i z`` (cast to the tensor's dtype).

    The subspace is held outside the module tree (a plain list), so ``z`` keeps the one name
    ``intrinsic.z`` instead of also appearing under every parametrised layer."""

    def __init__(self, subspace: Subspace, index: int):
        super().__init__()
        self._subspace = [subspace]
        self.index = index

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        step = self._subspace[0].delta(self.index)
        return original + step.view(original.shape).to(original.dtype)
