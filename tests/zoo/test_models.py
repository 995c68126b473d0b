"""Every zoo image classifier: parameter count, output shapes, gradients, and traced ≡ eager
(the language models: tests/zoo/test_gpt.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxdnat.zoo import create_model, list_models, model_info, set_drop_path_prob
from fxdnat.zoo.genotypes import PRIMITIVES, Genotype

# parameters at 10 classes without auxiliary head: the references' counts (akamaster README for
# the ResNets; kuangliu's MobileNetV2; quark0/darts NetworkCIFAR; ProxylessNAS-GPU derived from
# the mit-han-lab ImageNet model in docs/zoo.md)
PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "mobilenetv2": 2_296_922,
    "darts": 3_349_342,
    "darts_v2": 3_349_342,
    "darts_v1": 3_169_414,
    "proxylessnas": 5_408_138,
    "proxylessnas_gpu": 5_408_138,
}
# the models that take `auxiliary` and `drop_path_prob`
AUX_MODELS = {"darts", "darts_v1", "darts_v2", "proxylessnas", "proxylessnas_gpu"}
IMAGE_MODELS = [n for n in list_models() if model_info(n).task == "classification"]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _full_kwargs(name: str) -> dict:
    """Auxiliary head and drop-path on where the model has them, to cover the most code."""
    return {"auxiliary": True, "drop_path_prob": 0.2} if name in AUX_MODELS else {}


def test_every_model_has_a_pinned_count():
    assert set(PARAMS) == set(IMAGE_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_parameter_count_matches_the_reference(name):
    assert _count(create_model(name)) == PARAMS[name] == model_info(name).params


@pytest.mark.parametrize("size,classes", [(32, 10), (64, 200)])
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_shape_and_finite(name, size, classes):
    model = create_model(name, num_classes=classes, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", ["darts", "proxylessnas"])
def test_auxiliary_returns_a_pair_in_train_and_eval(name, size):
    model = create_model(name, num_classes=7, input_size=size, auxiliary=True)
    x = torch.randn(2, 3, size, size)
    for training in (True, False):
        with torch.no_grad():
            out = model.train(training)(x)
        assert isinstance(out, tuple) and len(out) == 2
        assert [tuple(t.shape) for t in out] == [(2, 7), (2, 7)]
        assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_parameter_receives_a_gradient(name):
    model = create_model(name, **_full_kwargs(name)).train()
    out = model(torch.randn(2, 3, 32, 32))
    loss = sum(t.square().mean() for t in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_traced_equals_eager_in_train_and_eval(name, trace):
    eager = create_model(name, **_full_kwargs(name))
    traced = trace(eager)  # a deep copy: BatchNorm statistics evolve apart but identically
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False, True):
        eager.train(training)
        traced.train(training)
        torch.manual_seed(0)
        expected = eager(x)
        torch.manual_seed(0)
        torch.testing.assert_close(traced(x), expected)


def test_resnet_option_a_shortcut_is_fixed_at_construction(trace):
    model = create_model("resnet20")
    assert [b.shortcut.pad for b in (model.layer2[0], model.layer3[0])] == [8, 16]
    graph = trace(model).graph
    pads = [n for n in graph.nodes if n.target is torch.nn.functional.pad]
    assert [n.args[1] for n in pads] == [(0, 0, 0, 0, 8, 8), (0, 0, 0, 0, 16, 16)]
    # no node reads a shape: the graph does not depend on the input size
    assert not any(n.target in ("size", "shape") or n.target is getattr for n in graph.nodes)


def test_mobilenetv2_shortcuts_follow_kuangliu():
    blocks = create_model("mobilenetv2").layers
    kinds = [type(b.shortcut).__name__ if b.shortcut is not None else None for b in blocks]
    # projection where stride 1 and channels change, identity where they match, none at stride 2
    assert kinds == [
        "Sequential",
        "Sequential",
        "Identity",
        None,
        "Identity",
        "Identity",
        None,
        "Identity",
        "Identity",
        "Identity",
        "Sequential",
        "Identity",
        "Identity",
        None,
        "Identity",
        "Identity",
        "Sequential",
    ]


@pytest.mark.parametrize(
    "name,drop_paths", [("darts_v2", 18 * 6 + 2 * 5), ("darts_v1", 18 * 5 + 2 * 5)]
)
def test_darts_layout_and_drop_paths(name, drop_paths):
    model = create_model(name)
    reductions = [i for i, cell in enumerate(model.cells) if isinstance(cell.ops[0], nn.MaxPool2d)]
    assert len(model.cells) == 20 and reductions == [6, 13]
    # one DropPath per non-identity op: V2 normal cells have 2 identity skips, V1 three, and the
    # three skips from node 2 in the reduction cells are identities (stride 1)
    assert set_drop_path_prob(model, 0.1) == drop_paths


def test_darts_auxiliary_head_reads_cell_13():
    model = create_model("darts", auxiliary=True)
    assert model._aux_index == 13
    assert model.auxiliary_head.features[3].in_channels == 576  # 4 · 144 channels after cell 13


def test_proxylessnas_layout():
    model = create_model("proxylessnas", auxiliary=True)
    strides = [model.first_conv[0].stride[0]] + [
        next(m for m in b.conv if isinstance(m, nn.Conv2d) and m.groups > 1).stride[0]
        for b in model.blocks
    ]
    # stride 1 stem and first stride-2 block: total stride 8 (4×4 maps at 32 px)
    assert strides == [1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.momentum, m.eps) for m in bns if m not in set(model.auxiliary_head.modules())} == {
        (0.1, 1e-3)
    }
    assert set_drop_path_prob(model, 0.1) == 7  # the 7 blocks with an identity shortcut
    assert model.auxiliary_head.features[3].in_channels == 128  # before block 9 (128 → 256, s2)


ALL_PRIMITIVES = Genotype(
    normal=(
        ("none", 0),
        ("avg_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 2),
        ("dil_conv_3x3", 1),
        ("dil_conv_5x5", 3),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("none", 0),
        ("avg_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 2),
        ("dil_conv_3x3", 1),
        ("dil_conv_5x5", 3),
    ),
    reduce_concat=(2, 3, 4, 5),
)


def test_every_darts_primitive_runs_strided_and_not_and_traces(trace):
    assert {name for name, _ in ALL_PRIMITIVES.normal} == set(PRIMITIVES)
    model = create_model(
        "darts", genotype=ALL_PRIMITIVES, channels=8, layers=3, auxiliary=True, drop_path_prob=0.3
    )
    traced = trace(model)
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        torch.manual_seed(0)
        expected = model.train(training)(x)
        torch.manual_seed(0)
        torch.testing.assert_close(traced.train(training)(x), expected)
    assert [tuple(t.shape) for t in expected] == [(2, 10), (2, 10)]


def test_darts_rejects_a_malformed_genotype():
    bad = ALL_PRIMITIVES._replace(normal=(("conv_9x9", 0), ("none", 1)), normal_concat=(2,))
    with pytest.raises(ValueError, match="unknown DARTS op 'conv_9x9'; known: none, "):
        create_model("darts", genotype=bad)
    bad = ALL_PRIMITIVES._replace(normal=(("none", 2), ("none", 1)), normal_concat=(2,))
    with pytest.raises(ValueError, match=r"DARTS op 0 \('none'\) reads state 2, not yet computed"):
        create_model("darts", genotype=bad)
