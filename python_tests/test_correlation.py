"""correlation(): the materialised 4-D tensor, against the reference einsum."""

import pytest
import torch

from unseg_kernels import correlation, reference
from unseg_kernels.testing import assert_close

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [
    pytest.param((2, 24, 5, 7, 6, 4), id="odd"),
    pytest.param((1, 40, 3, 3, 9, 2), id="batch1"),
    pytest.param((3, 5, 1, 1, 1, 1), id="single"),
]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_backend(shape, normalize):
    B, C, H, W, I, J = shape
    a, b = torch.randn(B, C, H, W), torch.randn(B, C, I, J)
    got = correlation(a, b, normalize=normalize, backend="torch")
    assert got.shape == (B, H, W, I, J)
    assert_close(got, reference.correlation(a.double(), b.double(), normalize), 1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", list(TOL), ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(triton_device, shape, normalize, dtype):
    B, C, H, W, I, J = shape
    a = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype)
    b = torch.randn(B, C, I, J, dtype=torch.float64).to(dtype)
    want = reference.correlation(a.double(), b.double(), normalize)
    got = correlation(
        a.to(triton_device), b.to(triton_device), normalize=normalize, backend="triton"
    )
    assert got.dtype == dtype
    assert_close(got, want, TOL[dtype])


@pytest.mark.triton
def test_triton_out_dtype_and_layout(triton_device):
    a = torch.randn(2, 16, 5, 6, device=triton_device).to(memory_format=torch.channels_last)
    b = torch.randn(2, 16, 4, 3, device=triton_device)[:, :, :, :]
    got = correlation(a, b, out_dtype=torch.float64, backend="triton")
    assert got.dtype == torch.float64
    assert_close(got, reference.correlation(a.double(), b.double()), 1e-5)


@pytest.mark.triton
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_gradients(triton_device, normalize):
    a = torch.randn(2, 12, 3, 5, device=triton_device, requires_grad=True)
    b = torch.randn(2, 12, 4, 2, device=triton_device, requires_grad=True)
    g = torch.randn(2, 3, 5, 4, 2, device=triton_device)
    got = torch.autograd.grad(correlation(a, b, normalize=normalize, backend="triton"), (a, b), g)
    want = torch.autograd.grad(reference.correlation(a, b, normalize), (a, b), g)
    for x, y in zip(got, want, strict=True):
        assert_close(x, y, 1e-5)


def test_mixed_dtypes_promote():
    a, b = torch.randn(1, 8, 2, 2), torch.randn(1, 8, 3, 3, dtype=torch.float64)
    assert correlation(a, b).dtype == torch.float64


@pytest.mark.parametrize(
    "a, b, kwargs, error, match",
    [
        (
            torch.randn(1, 8, 2),
            torch.randn(1, 8, 2, 2),
            {},
            ValueError,
            r"a must have shape \[B, C, H, W\]",
        ),
        (torch.randn(1, 8, 2, 2), torch.randn(1, 7, 2, 2), {}, ValueError, "b must have shape"),
        (torch.randn(2, 8, 2, 2), torch.randn(1, 8, 2, 2), {}, ValueError, "B=2"),
        (
            torch.ones(1, 8, 2, 2, dtype=torch.int64),
            torch.randn(1, 8, 2, 2),
            {},
            TypeError,
            "a must be a floating-point",
        ),
        (torch.randn(1, 8, 0, 2), torch.randn(1, 8, 2, 2), {}, ValueError, "a must not be empty"),
        (
            torch.randn(1, 8, 2, 2),
            torch.randn(1, 8, 2, 2),
            {"out_dtype": torch.int32},
            TypeError,
            "out_dtype",
        ),
        (
            torch.randn(1, 8, 2, 2),
            torch.randn(1, 8, 2, 2),
            {"backend": "cuda"},
            ValueError,
            "backend must be one of",
        ),
    ],
)
def test_bad_input(a, b, kwargs, error, match):
    with pytest.raises(error, match=match):
        correlation(a, b, **kwargs)
