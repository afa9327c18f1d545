"""Batched dense CRF (SPEC section 4): pydensecrf's mean-field inference, as STEGO calls it,
in native code on CPU and GPU."""

from __future__ import annotations

import numbers
import os

import torch
import torch.nn.functional as F

from unseg_kernels import _alloc, _env, _validate
from unseg_kernels._native import native

# Lattice feature dimensions of the two kernels: (x, y) and (x, y, r, g, b).
_POS_D, _BI_D = 2, 5
# Vertex indices are int32: an image's worst-case lattice (N * (d + 1) vertices, and twice
# that in hash slots on CUDA) must fit.
_MAX_LATTICE_ENTRIES = 2**30
# Bytes the CPU path surely keeps per pixel: three float32 rows of labels (U, Q and Q in the
# bilateral order, labels padded to 8) and, for the two lattices, corners, splat lists and
# the sort buffers of the construction.
_CPU_BYTES_PER_PIXEL_LABEL = 3 * 4
_CPU_LABEL_PAD = 8
_CPU_BYTES_PER_PIXEL = 512
# Fraction of the free device memory one call may take for its lattice workspace, and the
# most images one launch takes (grid.y; MAX_GRID_Y in crf_cuda.cu).
_CUDA_WORKSPACE_FRACTION = 0.5
_CUDA_MAX_GROUP = 65535


def _check_params(
    iters: object,
    pos_w: object,
    pos_xy_std: object,
    bi_w: object,
    bi_xy_std: object,
    bi_rgb_std: object,
    num_threads: object,
) -> tuple[int, float, float, float, float, float, int]:
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral):
        raise TypeError(f"iters must be an int, got {type(iters).__name__}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    weights = {"pos_w": pos_w, "bi_w": bi_w}
    stds = {"pos_xy_std": pos_xy_std, "bi_xy_std": bi_xy_std, "bi_rgb_std": bi_rgb_std}
    values = {name: _validate.real(name, v) for name, v in {**weights, **stds}.items()}
    for name in stds:
        if values[name] <= 0:
            raise ValueError(f"{name} must be > 0, got {values[name]}")
    if num_threads is None:
        num_threads = torch.get_num_threads()
    elif isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}")
    elif num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return (
        int(iters),
        values["pos_w"],
        values["pos_xy_std"],
        values["bi_w"],
        values["bi_xy_std"],
        values["bi_rgb_std"],
        int(num_threads),
    )


def _require_tensor(name: str, value: object, layout: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {layout}, got {type(value).__name__}"
        )


def _check_inputs(images: object, probs: object) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validates shapes, dtypes and devices; returns batched views and whether the inputs
    were a single image."""
    _require_tensor("images", images, "[B, H, W, 3]")
    _require_tensor("probs", probs, "[B, C, H, W]")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 RGB in [0, 255] of shape [B, H, W, 3], got dtype {images.dtype}"
        )
    if not probs.is_floating_point():
        raise TypeError(
            f"probs must be a floating-point tensor of probabilities, got {probs.dtype}"
        )
    if images.dim() not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(
            f"images must have shape [B, H, W, 3] or [H, W, 3], got {tuple(images.shape)}"
        )
    if probs.dim() != images.dim():
        want = "[B, C, H, W]" if images.dim() == 4 else "[C, H, W]"
        raise ValueError(
            f"probs must have shape {want} to match images {tuple(images.shape)}, "
            f"got {tuple(probs.shape)}"
        )
    single = images.dim() == 3
    if single:
        images, probs = images.unsqueeze(0), probs.unsqueeze(0)
    B, H, W, _ = images.shape
    if probs.shape[0] != B or probs.shape[2:] != (H, W):
        raise ValueError(
            f"probs must have shape [B, C, H, W] with B={B}, H={H}, W={W} as images "
            f"{tuple(images.shape)}, got {tuple(probs.shape)}"
        )
    if B == 0 or H == 0 or W == 0:
        raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
    if probs.shape[1] < 2:
        raise ValueError(
            f"probs must have at least 2 classes (C >= 2), got C={probs.shape[1]}; with one "
            "class the CRF returns all ones"
        )
    _validate.same_device(probs=probs, images=images)
    if probs.device.type not in ("cpu", "cuda"):
        raise ValueError(f"dense_crf runs on CPU or CUDA tensors, got {probs.device}")
    if probs.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "dense_crf is not differentiable, but probs requires grad; pass probs.detach() "
            "or call it under torch.no_grad()"
        )
    n = H * W
    if n * (_BI_D + 1) > _MAX_LATTICE_ENTRIES:
        raise ValueError(
            f"images of {H}x{W} pixels are too large for the lattice: at most "
            f"{_MAX_LATTICE_ENTRIES // (_BI_D + 1)} pixels per image, got {n}"
        )
    if probs.shape[1] * n > 2**31 - 1:
        raise ValueError(
            f"probs of shape {tuple(probs.shape)} has more than 2**31 - 1 values per image"
        )
    return images, probs, single


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_bytes_per_image(C: int, H: int, W: int) -> int:
    """Memory the CPU path surely needs for one image (vertex arrays come on top)."""
    padded = -(-C // _CPU_LABEL_PAD) * _CPU_LABEL_PAD
    return H * W * (padded * _CPU_BYTES_PER_PIXEL_LABEL + _CPU_BYTES_PER_PIXEL)


def _check_cpu_memory(shape: torch.Size, num_threads: int) -> None:
    """Raises before anything is allocated when the images processed at once cannot fit."""
    B, C, H, W = shape
    need = _cpu_bytes_per_image(C, H, W) * min(B, num_threads)
    have = _physical_memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"dense_crf on {min(B, num_threads)} images of {H}x{W} with {C} classes at once "
            f"needs at least {need / 2**30:.1f} GiB, more than this machine's "
            f"{have / 2**30:.1f} GiB; pass fewer threads (num_threads) or smaller images"
        )


def _run_cpu(images, probs, out, params, num_threads) -> None:
    B, C, H, W = probs.shape
    native().dense_crf_cpu(
        images.data_ptr(),
        probs.data_ptr(),
        out.data_ptr(),
        B,
        C,
        H,
        W,
        *params,
        num_threads,
        _env.cpu_isa() == _env.CPU_ISAS["generic"],
    )


def _run_cuda(images, probs, out, params) -> None:
    lib = native()
    if not lib.build_info()["with_cuda"]:
        raise ValueError(
            "dense_crf got CUDA tensors but unseg_kernels._C was built without CUDA; "
            "reinstall with a CUDA toolkit (nvcc) on PATH, or pass CPU tensors"
        )
    B, C, H, W = probs.shape
    device = probs.device
    per_image = lib.dense_crf_cuda_workspace_bytes(1, C, H, W)
    free, total = torch.cuda.mem_get_info(device)
    if per_image > total:
        raise ValueError(
            f"dense_crf on a {H}x{W} image with {C} classes needs {per_image / 2**30:.1f} GiB "
            f"of lattice workspace, more than the device's {total / 2**30:.1f} GiB"
        )
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = int(_CUDA_WORKSPACE_FRACTION * (free + cached))
    group = max(1, min(B, _CUDA_MAX_GROUP, budget // max(per_image, 1)))
    stream = torch.cuda.current_stream(device).cuda_stream
    for b0 in range(0, B, group):
        b1 = min(B, b0 + group)
        ws_bytes = lib.dense_crf_cuda_workspace_bytes(b1 - b0, C, H, W)
        workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        lib.dense_crf_cuda(
            images[b0].data_ptr(),
            probs[b0].data_ptr(),
            out[b0].data_ptr(),
            b1 - b0,
            C,
            H,
            W,
            *params,
            device.index,
            workspace.data_ptr(),
            ws_bytes,
            stream,
        )


def dense_crf(
    images: torch.Tensor,
    probs: torch.Tensor,
    *,
    iters: int = 10,
    pos_w: float = 3.0,
    pos_xy_std: float = 1.0,
    bi_w: float = 4.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Fully connected CRF refinement of class probabilities (SPEC section 4), batched.

    Runs pydensecrf's mean-field inference with a Gaussian kernel on position and a
    bilateral kernel on position and colour, both approximated on a permutohedral lattice,
    symmetric normalisation and Potts compatibility, exactly as STEGO calls it::

        U = -log(clip(probs, 1e-5, 1));  Q = softmax(-U)
        repeat iters times:  Q = softmax(-U + sum_k w_k n_k Kt_k(n_k Q))

    The defaults are STEGO's. Each lattice is built once per image and reused for every
    iteration and label. On CPU the images run in parallel on ``num_threads`` threads (an
    image gets several threads when the batch is smaller); on CUDA the whole batch runs on
    the current stream, lattice construction included.

    Not differentiable: raises if ``probs`` requires grad while grad mode is on.

    The colour channels are used in the order given. STEGO passes the image to pydensecrf
    as BGR (``image[..., ::-1]``); pass ``images.flip(-1)`` to reproduce it exactly (the
    lattice is not symmetric in the order of its features, so the two differ slightly).

    On CUDA, probabilities are checked for NaN and negative values on the device and the
    result of that check is read once after the CRF is queued (one synchronisation per
    call, at the end); on CPU they are checked first.

    Args:
        images: uint8 RGB ``[B, H, W, 3]`` or ``[H, W, 3]``, on the device of ``probs``.
        probs: class probabilities ``[B, C, H, W]`` or ``[C, H, W]``, C >= 2, any float
            dtype, values >= 0 (clipped to [1e-5, 1] as pydensecrf's ``unary_from_softmax``).
        iters: mean-field iterations (0 returns the normalised, clipped probabilities).
        pos_w: weight of the Gaussian (position) kernel.
        pos_xy_std: its spatial standard deviation in pixels.
        bi_w: weight of the bilateral kernel.
        bi_xy_std: its spatial standard deviation in pixels.
        bi_rgb_std: its colour standard deviation in intensity levels.
        num_threads: CPU threads (default ``torch.get_num_threads()``); ignored on CUDA.

    Returns:
        Q: float32 probabilities of the shape of ``probs``, on its device.

    Example:
        >>> images = torch.randint(0, 256, (2, 64, 48, 3), dtype=torch.uint8)
        >>> probs = torch.rand(2, 5, 64, 48).softmax(1)
        >>> dense_crf(images, probs).argmax(1).shape
        torch.Size([2, 64, 48])
    """
    images, probs, single = _check_inputs(images, probs)
    params = _check_params(iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std, num_threads)
    *params, threads = params
    if probs.device.type == "cpu":
        _check_cpu_memory(probs.shape, threads)
    images = images.contiguous()
    probs = probs.detach().to(torch.float32).contiguous()
    out = _alloc.empty(tuple(probs.shape), torch.float32, probs.device)
    if probs.device.type == "cpu":
        # One pass: NaN >= 0 is false (two checks cost about 4x the time of this one).
        if not bool((probs >= 0).all()):
            raise ValueError("probs must not contain NaN or negative values")
        _run_cpu(images, probs, out, params, threads)
    else:
        bad = torch.isnan(probs).any() | (probs < 0).any()
        with torch.cuda.device(probs.device):
            _run_cuda(images, probs, out, params)
        if bad.item():
            raise ValueError("probs must not contain NaN or negative values")
    return out[0] if single else out


def dense_crf_from_logits(
    images: torch.Tensor, logits: torch.Tensor, **crf_kwargs: object
) -> torch.Tensor:
    """Dense CRF from logits at feature resolution, as STEGO's evaluation does: bilinear
    upsampling (``align_corners=False``) to the image size, softmax over classes, then
    :func:`dense_crf`. Batched; not differentiable.

    Args:
        images: uint8 RGB ``[B, H, W, 3]`` or ``[H, W, 3]``.
        logits: ``[B, C, h, w]`` or ``[C, h, w]`` at any resolution, on the device of
            ``images``.
        **crf_kwargs: keyword arguments of :func:`dense_crf` (iters, pos_w, ...).

    Returns:
        Q: float32 ``[B, C, H, W]`` (or ``[C, H, W]``).

    Example:
        >>> images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
        >>> logits = torch.randn(2, 27, 8, 8)
        >>> dense_crf_from_logits(images, logits).shape
        torch.Size([2, 27, 64, 64])
    """
    _require_tensor("logits", logits, "[B, C, h, w]")
    _require_tensor("images", images, "[B, H, W, 3]")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() not in (3, 4) or logits.dim() != images.dim():
        raise ValueError(
            f"logits must have shape [B, C, h, w] (or [C, h, w] with images [H, W, 3]), got "
            f"{tuple(logits.shape)} with images {tuple(images.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError(f"logits must not be empty, got shape {tuple(logits.shape)}")
    if logits.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "dense_crf_from_logits is not differentiable, but logits requires grad; pass "
            "logits.detach() or call it under torch.no_grad()"
        )
    single = logits.dim() == 3
    batched = logits.unsqueeze(0) if single else logits
    size = tuple(images.shape[-3:-1])
    if 0 in size:
        raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
    probs = F.interpolate(batched.float(), size=size, mode="bilinear", align_corners=False)
    probs = probs.softmax(dim=1)
    return dense_crf(images, probs[0] if single else probs, **crf_kwargs)


def crf_lattice_stats(
    image: torch.Tensor,
    labels: int,
    *,
    pos_xy_std: float = 1.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
) -> dict[str, int]:
    """Lattice size of one image on the CPU path: vertices of the Gaussian and bilateral
    lattices and the bytes kept for both (pixel orders, corners, splat lists, blur
    neighbours, and two value buffers of ``labels`` labels each). For reporting memory.

    Args:
        image: uint8 RGB ``[H, W, 3]`` on the CPU.
        labels: number of classes C the value buffers hold.

    Returns:
        ``{"pos_vertices": int, "bi_vertices": int, "bytes": int}``.

    Example:
        >>> crf_lattice_stats(torch.zeros(32, 32, 3, dtype=torch.uint8), 27)["pos_vertices"] > 0
        True
    """
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
        raise TypeError(f"image must be a uint8 torch.Tensor [H, W, 3], got {image!r:.80}")
    if image.dim() != 3 or image.shape[-1] != 3 or image.numel() == 0:
        raise ValueError(f"image must have shape [H, W, 3], got {tuple(image.shape)}")
    if image.device.type != "cpu":
        raise ValueError(f"image must be on the CPU, got {image.device}")
    if isinstance(labels, bool) or not isinstance(labels, numbers.Integral) or labels < 1:
        raise ValueError(f"labels must be a positive int, got {labels!r}")
    params = _check_params(0, 0.0, pos_xy_std, 0.0, bi_xy_std, bi_rgb_std, 1)
    H, W, _ = image.shape
    image = image.contiguous()
    return native().dense_crf_lattice_stats_cpu(
        image.data_ptr(), int(labels), H, W, params[2], params[4], params[5]
    )
