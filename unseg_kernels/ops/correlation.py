"""The 4-D correlation tensor itself, for users who want it (visualisation, small maps)."""

from __future__ import annotations

import torch

from unseg_kernels import _validate, reference
from unseg_kernels.ops._pair import inv_norm, normalize_backward


@torch.library.custom_op("unseg_kernels::correlation", mutates_args=())
def _correlation_triton(
    a: torch.Tensor, b: torch.Tensor, normalize: bool, out_dtype: torch.dtype
) -> torch.Tensor:
    from unseg_kernels.kernels import triton_correlation

    av, bv = a.flatten(2), b.flatten(2)
    ra = inv_norm(av, torch.float32) if normalize else None
    rb = inv_norm(bv, torch.float32) if normalize else None
    out = triton_correlation.correlation(av, bv, ra, rb, out_dtype)
    return out.view(a.shape[0], *a.shape[2:], *b.shape[2:])


@_correlation_triton.register_fake
def _(a, b, normalize, out_dtype):
    return a.new_empty((a.shape[0], *a.shape[2:], *b.shape[2:]), dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    a, b, normalize, _ = inputs
    ctx.normalize = normalize
    ctx.save_for_backward(a, b)


def _backward(ctx, grad_out):
    # out = u^T v per image with u, v the (optionally normalised) inputs [B, C, N|M].
    a, b = ctx.saved_tensors
    av, bv = a.flatten(2).float(), b.flatten(2).float()
    g = grad_out.flatten(1, 2).flatten(2).float()  # [B, N, M]
    if ctx.normalize:
        ra, rb = inv_norm(av, torch.float32), inv_norm(bv, torch.float32)
        du = torch.bmm(bv * rb[:, None], g.transpose(1, 2))  # [B, C, N]
        dv = torch.bmm(av * ra[:, None], g)  # [B, C, M]
        da, db = normalize_backward(av, ra, du), normalize_backward(bv, rb, dv)
    else:
        da, db = torch.bmm(bv, g.transpose(1, 2)), torch.bmm(av, g)
    need = ctx.needs_input_grad
    return (
        da.view(a.shape).to(a.dtype) if need[0] else None,
        db.view(b.shape).to(b.dtype) if need[1] else None,
        None,
        None,
    )


_correlation_triton.register_autograd(_backward, setup_context=_setup_context)


def correlation(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    normalize: bool = True,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The correlation tensor ``out[n, h, w, i, j] = sum_c a[n, c, h, w] b[n, c, i, j]``
    (SPEC section 1), on L2-normalised inputs when ``normalize``. Differentiable.

    This materialises ``B * H * W * I * J`` values: use it to look at correlations, not
    inside a loss (the losses never build it).

    Args:
        a: ``[B, C, H, W]``.
        b: ``[B, C, I, J]``.
        normalize: L2-normalise both over C first (eps 1e-10), fused into the kernel.
        out_dtype: dtype of the result; default the promoted dtype of ``a`` and ``b``.
        backend: "auto", "torch" (= "reference": one einsum), or "triton" (one fused
            kernel; fp32 accumulation).

    Returns:
        ``[B, H, W, I, J]``.

    Example:
        >>> corr = correlation(torch.randn(1, 64, 8, 8), torch.randn(1, 64, 6, 6))
        >>> corr.shape
        torch.Size([1, 8, 8, 6, 6])
    """
    _validate.tensor("a", a, "[B, C, H, W]")
    _validate.tensor("b", b, "[B, C, I, J]")
    if b.shape[:2] != a.shape[:2]:
        raise ValueError(
            f"b must have shape [B, C, I, J] with B={a.shape[0]}, C={a.shape[1]} as a, "
            f"got {tuple(b.shape)}"
        )
    device = _validate.same_device(a=a, b=b)
    if out_dtype is None:
        out_dtype = torch.promote_types(a.dtype, b.dtype)
    elif not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating-point torch.dtype, got {out_dtype!r}")
    backend = _validate.resolve_backend(backend, device, [a.dtype, b.dtype])
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    if backend == "triton":
        return _correlation_triton(a, b, normalize, out_dtype)
    return reference.correlation(a, b, normalize).to(out_dtype)
