"""Lower-leaky hard sigmoid: forward and the straight-through/leaky backward in every region."""

import torch

from vpd.decomp.sigmoids import lower_leaky, upper_leaky


def _grad(fn, z_val: float, upstream: float) -> float:
    z = torch.tensor([z_val], requires_grad=True)
    fn(z, 0.01).backward(torch.tensor([upstream]))
    return z.grad.item()


def test_lower_leaky_forward_clamps():
    z = torch.tensor([-2.0, 0.0, 0.3, 1.0, 4.0])
    assert lower_leaky(z).tolist() == [0.0, 0.0, 0.30000001192092896, 1.0, 1.0]


def test_lower_leaky_backward_each_region():
    # inside (0, 1]: straight through
    assert _grad(lower_leaky, 0.5, 2.0) == 2.0
    assert _grad(lower_leaky, 1.0, -3.0) == -3.0
    # above 1: blocked
    assert _grad(lower_leaky, 1.5, 2.0) == 0.0
    assert _grad(lower_leaky, 1.5, -2.0) == 0.0
    # z <= 0 with a gradient that would raise the output (negative upstream): leaks alpha * grad
    assert abs(_grad(lower_leaky, -0.7, -2.0) - (-0.02)) < 1e-9
    assert abs(_grad(lower_leaky, 0.0, -1.0) - (-0.01)) < 1e-9
    # z <= 0 with a gradient that would push it further down: zero
    assert _grad(lower_leaky, -0.7, 2.0) == 0.0
    assert _grad(lower_leaky, 0.0, 5.0) == 0.0


def test_upper_leaky_values_and_slopes():
    z = torch.tensor([-1.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = upper_leaky(z, 0.01)
    assert torch.allclose(y, torch.tensor([0.0, 0.5, 1.0, 1.02]))
    y.sum().backward()
    assert torch.allclose(z.grad, torch.tensor([0.0, 1.0, 1.0, 0.01]))
