"""SmooSeg's smoothness loss for one pair term, exact, without the correlation tensor.

SPEC section 3: with W the (pointwise-centred) feature correlation and a_hat the teacher's
assignments L2-normalised over K, the term is ``mean over (n, i, j) of (W_ij - b) *
(1 - a_hat_i . a_hat'_j)``. Both factors are bilinear, so per image, with U [N, C] the
normalised features of the first map, V' [M, C] those of the second (centred on their mean
when ``pointwise``), P [N, K], Q [M, K] the normalised assignments and ``off = m - b`` (or
``-b``):

    sum_ij (U_i . V'_j + off) (1 - P_i . Q_j)
        = (sum_i U_i) . (sum_j V'_j) - <U^T P, V'^T Q>_F + off * N * M
          - off * (sum_i P_i) . (sum_j Q_j)

(the first term is zero when centred). That costs O((N + M) C K) instead of
O(N M (C + K)), is exact rather than approximate, and autograd through the small matmuls
gives the exact gradient.
"""

from __future__ import annotations

import torch

from unseg_kernels import _validate, reference
from unseg_kernels.kernels import KIND_SMOOSEG
from unseg_kernels.ops._pair import (
    check_pair_inputs,
    inv_norm,
    normalize_backward,
    pair_loss,
    register_precomputed_backward,
    triton_operands,
)


def _check_assignments(a1: torch.Tensor, a2: torch.Tensor) -> None:
    """Soft assignments must be finite and non-negative (this reads them: one device sync)."""
    if torch.compiler.is_compiling():
        return
    for name, a in (("a1", a1), ("a2", a2)):
        if not bool((a >= 0).all()):  # False for any NaN too
            bad = "NaN" if bool(a.isnan().any()) else "negative"
            raise ValueError(f"{name} must hold non-negative soft assignments, found {bad} values")
        if not bool(a.isfinite().all()):
            raise ValueError(f"{name} must hold finite soft assignments, found inf values")


# Bytes of float64 feature copies made at once (a chunk of images), and, on CPU, the float64
# elements of one column block: cast, normed and multiplied while it is in cache.
_CHUNK_BYTES = 1 << 26
_CPU_BLOCK_ELEMS = 1 << 17


def _project(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse norms ``r`` [s, L] of the feature columns of ``x`` [s, C, L] and, in float64,
    ``[sum_l x_l r_l p_l^T, sum_l x_l r_l]`` [s, C, K + 1] for ``p`` [s, K, L], reading ``x``
    once: on CPU in column blocks cast to float64 while cached."""
    s, C, L = x.shape
    f64 = torch.float64
    cols = L if x.is_cuda else max(64, _CPU_BLOCK_ELEMS // (s * C))
    r = x.new_empty(s, L, dtype=f64)
    acc = x.new_zeros(s, C, p.shape[1] + 1, dtype=f64)
    for l0 in range(0, L, cols):
        ls = slice(l0, l0 + cols)
        xb = x[:, :, ls].to(f64)  # [s, C, b]
        r[:, ls] = inv_norm(xb, f64)
        weights = torch.cat([p[:, :, ls] * r[:, None, ls], r[:, None, ls]], 1)  # [s, K + 1, b]
        acc.baddbmm_(xb, weights.transpose(1, 2))
    return r, acc


@torch.library.custom_op("unseg_kernels::smooseg_closed_form", mutates_args=())
def _closed_form(
    f1: torch.Tensor,
    f2: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    shift: float,
    pointwise: bool,
    grad_a1: bool,
    grad_a2: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The closed form and its gradients w.r.t. a1, a2 (empty unless requested).

    The loss is accumulated in float64: the closed form's terms are O(N M) each and cancel to
    the loss, so float32 sums would lose digits; the work is O((N + M) C K), so float64 costs
    little. Features are never normalised in place (their inverse norms scale the small
    assignment side) and each feature map is read twice: once for the loss (in float64) and
    once, in its own dtype, for the gradient. With P = norm(a1), Q = norm(a2) and
    T = -<U^T P, V'^T Q> - off (sum P) . (sum Q):
    ``dT/dP_i = -(V'^T Q)^T u_i - off sum_j Q_j`` and
    ``dT/dQ_j = -(U^T P)^T v'_j - off sum_i P_i``.
    """
    B, C, H, W = f1.shape
    N, M = H * W, f2.shape[2] * f2.shape[3]
    f64 = torch.float64
    step = max(1, _CHUNK_BYTES // (8 * C * (N + M)))
    dp = f1.new_zeros(B, a1.shape[1], N, dtype=f64) if grad_a1 else None
    dq = f1.new_zeros(B, a2.shape[1], M, dtype=f64) if grad_a2 else None
    uv, p_sum, q_sum, pair_means = [], [], [], []
    for n0 in range(0, B, step):
        ns = slice(n0, n0 + step)
        x1, x2 = f1[ns].flatten(2), f2[ns].flatten(2)  # [s, C, N|M]
        p = reference.norm(a1[ns].flatten(2).to(f64))  # [s, K, N]
        q = reference.norm(a2[ns].flatten(2).to(f64))  # [s, K, M]
        r1, up = _project(x1, p)
        r2, vq = _project(x2, q)
        up, u_sum = up[..., :-1], up[..., -1]  # [s, C, K], [s, C]
        vq, v_sum = vq[..., :-1], vq[..., -1]
        vbar = v_sum / M
        pair_means.append((u_sum * vbar).sum(-1) / N)  # mean of fd per image
        if pointwise:  # V' = V - vbar: V'^T Q = V^T Q - vbar (sum_j Q_j)^T
            vq = vq - vbar[..., None] * q.sum(2)[:, None, :]
            uv.append(-(up * vq).sum())
        else:  # plus (sum_i U_i) . (sum_j V_j), zero when centred
            uv.append((u_sum * v_sum).sum() - (up * vq).sum())
        p_sum.append(p.sum(2))
        q_sum.append(q.sum(2))
        if grad_a1:
            dp[ns] = -torch.bmm(vq.transpose(1, 2).to(x1.dtype), x1) * r1[:, None]
        if grad_a2:
            dq[ns] = -torch.bmm(up.transpose(1, 2).to(x2.dtype), x2) * r2[:, None]
            if pointwise:
                dq[ns] += torch.bmm(up.transpose(1, 2), vbar[..., None])
    p_sum, q_sum = torch.cat(p_sum), torch.cat(q_sum)  # [B, K]
    off = (torch.cat(pair_means).mean() if pointwise else 0.0) - shift
    count = B * N * M
    out_dtype = f64 if f64 in (f1.dtype, a1.dtype) else torch.float32
    loss = (torch.stack(uv).sum() + off * (count - (p_sum * q_sum).sum())) / count
    da1, da2 = loss.new_empty(0), loss.new_empty(0)
    if grad_a1:
        dp = (dp - off * q_sum[..., None]) / count
        da1 = normalize_backward(a1.flatten(2), inv_norm(a1.flatten(2), f64), dp).view(a1.shape)
    if grad_a2:
        dq = (dq - off * p_sum[..., None]) / count
        da2 = normalize_backward(a2.flatten(2), inv_norm(a2.flatten(2), f64), dq).view(a2.shape)
    return loss.to(out_dtype), da1, da2


@_closed_form.register_fake
def _(f1, f2, a1, a2, shift, pointwise, grad_a1, grad_a2):
    out_dtype = torch.float64 if torch.float64 in (f1.dtype, a1.dtype) else torch.float32
    da1 = a1.new_empty(a1.shape if grad_a1 else (0,), dtype=torch.float64)
    da2 = a2.new_empty(a2.shape if grad_a2 else (0,), dtype=torch.float64)
    return a1.new_empty((), dtype=out_dtype), da1, da2


register_precomputed_backward(_closed_form)


def smooseg_smooth_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """One SmooSeg smoothness pair term (SPEC section 3, steps 1-3):
    ``mean((W - shift) * (1 - a_hat . a_hat'))``.

    The default ("auto" and "torch", any device) is the exact closed form above: no tile,
    no ``[B, H, W, I, J]`` tensor, cost linear in the number of tokens. Whatever the input
    dtype it accumulates in float64 with autocast disabled inside, and returns float32
    (float64 for float64 inputs): fp16/bf16 autocast regions get a float32 loss.

    Args:
        f1: backbone features ``[B, C, H, W]`` (treated as constants).
        f2: backbone features ``[B, C, I, J]``.
        a1: soft assignments ``[B, K, H, W]``, non-negative (e.g. a softmax); normalised over
            K inside; receives a gradient.
        a2: soft assignments ``[B, K, I, J]``; may be ``a1`` itself (the intra term).
        shift: the term's shift b.
        pointwise: centre W per query position (SmooSeg always does).
        backend: "auto"/"torch" (closed form), "triton" (the tiled fused kernel of the
            STEGO loss with SmooSeg's elementwise function; a cross-check), "reference"
            (materialises everything).

    Returns:
        0-d float32 loss (float64 for float64 inputs).

    Example:
        >>> f = torch.randn(2, 384, 28, 28)
        >>> a = torch.randn(2, 27, 28, 28).softmax(1).requires_grad_()
        >>> smooseg_smooth_loss(f, f, a, a, shift=-0.02).backward()
    """
    device = check_pair_inputs(f1, f2, a1, a2, ("a1", "a2"), code_dim="K")
    shift = _validate.real("shift", shift)
    _check_assignments(a1, a2)
    backend = _validate.resolve_backend(backend, device, [f1.dtype, f2.dtype, a1.dtype, a2.dtype])
    if backend == "reference":
        return reference.smooseg_smooth_loss(f1, f2, a1, a2, shift, pointwise=pointwise)
    if backend == "triton":
        f1, f2, a1, a2 = triton_operands(f1, f2, a1, a2)
        return pair_loss(
            f1, f2, a1, a2, shift,
            pointwise=pointwise, kind=KIND_SMOOSEG, lo=0.0, hi=0.0, backend="triton",
            deterministic=None, return_stats=False,
        )  # fmt: skip
    grad_on = torch.is_grad_enabled()
    loss, _, _ = _closed_form(
        f1, f2, a1, a2, shift, pointwise, grad_on and a1.requires_grad, grad_on and a2.requires_grad
    )
    return loss
