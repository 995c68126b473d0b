"""`fxdnat.DNAT`'s step: the one place where ω and θ update, for users' loops and the engine."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fxdnat
from fxdnat.zoo import create_model


def _dnat(seed: int = 0) -> tuple[fxdnat.DNAT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model("resnet20", num_classes=10).double()
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (8,))
    dnat = fxdnat.DNAT(model, x, tie="full")
    with torch.no_grad():  # a θ away from (0, 0, 1), so every candidate has a gradient
        dnat.theta.add_(0.1 * torch.randn_like(dnat.theta))
    return dnat, x, y


def _optimizers(dnat: fxdnat.DNAT):
    return torch.optim.SGD(dnat.weights(), lr=0.1, momentum=0.9), dnat.theta_optimizer(lr=0.05)


def test_alternate_steps_omega_then_theta_at_the_updated_omega():
    dnat, x, y = _dnat()
    twin = copy.deepcopy(dnat)
    opt_w, opt_theta = _optimizers(dnat)
    done = dnat.step(lambda net: F.cross_entropy(net(x), y), opt_w, opt_theta, clip=5.0)
    # by hand: ω's gradient at (ω, θ), clipped, SGD; then θ's gradient at (new ω, θ), Adam
    w, t = _optimizers(twin)
    loss = F.cross_entropy(twin.module(x), y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(twin.weights(), 5.0)
    twin.theta.grad = None  # θ's step computes its own gradient
    w.step()
    w.zero_grad()
    (twin.theta.grad,) = torch.autograd.grad(F.cross_entropy(twin.module(x), y), [twin.theta])
    t.step()
    torch.testing.assert_close(done.loss, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(done.weight_grad_norm, norm)
    for (name, got), want in zip(
        dnat.module.named_parameters(), twin.module.parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
    assert done.theta_loss is not None and done.theta_grad_norm > 0
    assert all(p.grad is None for p in dnat.module.parameters())  # nothing left behind


def test_joint_steps_both_on_one_backward():
    dnat, x, y = _dnat()
    twin = copy.deepcopy(dnat)
    opt_w, opt_theta = _optimizers(dnat)
    done = dnat.step(lambda net: F.cross_entropy(net(x), y), opt_w, opt_theta, update="joint")
    assert done.theta_loss is None  # no second forward
    w, t = _optimizers(twin)
    F.cross_entropy(twin.module(x), y).backward()
    w.step()
    t.step()
    for got, want in zip(dnat.module.parameters(), twin.module.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("update", ["alternate", "joint"])
def test_without_thetas_optimizer_a_step_trains_omega_alone(update):
    dnat, x, y = _dnat()
    theta = dnat.theta.detach().clone()
    opt_w, _ = _optimizers(dnat)
    before = [p.detach().clone() for p in dnat.weights()]
    done = dnat.step(lambda net: (F.cross_entropy(net(x), y), "extra"), opt_w, update=update)
    assert done.output == "extra" and done.theta_loss is None
    assert torch.equal(dnat.theta, theta) and dnat.theta.grad is None
    assert any(not torch.equal(p, b) for p, b in zip(dnat.weights(), before, strict=True))


def test_a_module_without_theta_steps_like_plain_sgd():
    dnat, x, y = _dnat()
    final = fxdnat.DNAT.from_module(dnat.finalize())
    assert final.theta is None and final.arch is None
    with pytest.raises(ValueError, match="has no θ"):
        final.theta_optimizer()
    twin = copy.deepcopy(final.module)
    opt = torch.optim.SGD(final.weights(), lr=0.1)
    final.step(lambda net: F.cross_entropy(net(x), y), opt)
    ref = torch.optim.SGD(twin.parameters(), lr=0.1)
    F.cross_entropy(twin(x), y).backward()
    ref.step()
    for got, want in zip(final.module.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_engine_trains_through_the_dnat_object(tmp_path):
    from fxdnat.engine import Reporter, RunConfig, Trainer

    config = RunConfig(
        spec="zoo:resnet20", out=str(tmp_path / "run"), data="digits", epochs=1, arch_epochs=1
    )
    config.batch_size, config.limit, config.device = 32, 64, "cpu"
    trainer = Trainer(config, Reporter())
    assert isinstance(trainer.dnat, fxdnat.DNAT) and trainer.dnat.wrapper is trainer.dnat.module
    assert trainer.opt_theta.param_groups[0]["params"] == [trainer.dnat.theta]
