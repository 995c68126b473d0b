"""A checkpoint is data: loading one never imports or calls anything the user did not name.

Every crafted checkpoint below is refused by every command that loads one, with exit code 2 and
the exact message, and a marker file that its code would create never appears.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint, save_finalized
from click.testing import CliRunner

from fxdnat import checkpoint as ckpt
from fxdnat.cli import main
from fxdnat.engine import load_network

TRUST = "pass --trust-code if you trust the file's author (trust_code=True in Python)"
WEIGHTS = (
    "cache_dir, checkpoint_path, pretrained, pretrained_cfg, pretrained_cfg_overlay, weights, "
    "weights_backbone"
)
PLAIN_ONLY = (
    "from a file fxdnat takes only plain numbers, strings and booleans as model arguments, and "
    f"none that loads weights ({WEIGHTS}): {TRUST}"
)
ONLY_PLAIN = "a checkpoint holds only tensors and plain values, so this file is refused"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A genuine finished ResNet20 checkpoint, the start of every crafted one."""
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", "zoo:resnet20", {})


def craft(base: Path, path: Path, change) -> Path:
    data = torch.load(base, weights_only=True)
    change(data)
    torch.save(data, path)
    return path


def with_model(**fields):
    return lambda data: data["model"].update(fields)


@pytest.fixture
def probe(tmp_path, monkeypatch) -> tuple[str, Path, Path]:
    """A package of our own whose import and whose factory each leave a marker file: the spec
    that names it, and the two markers."""
    name = f"fxdnat_probe_{uuid.uuid4().hex[:8]}"
    imported, called = tmp_path / "imported", tmp_path / "called"
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(imported)!r}).touch()\n"
        "def make(num_classes=10):\n"
        f"    Path({str(called)!r}).touch()\n"
        "    from fxdnat import zoo\n"
        "    return zoo.create_model('resnet20', num_classes=num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield f"module:{name}:make", imported, called
    sys.modules.pop(name, None)


def loaders(path: Path, tmp_path: Path) -> list[list[str]]:
    """Every command that loads a checkpoint, on ``path``."""
    return [
        ["eval", str(path)],
        ["export", str(path), "--out", str(tmp_path / "net.pt2")],
        ["render", str(path), "--out", str(tmp_path / "cells.dot")],
        ["plot", str(path), "--out", str(tmp_path / "run.png")],
    ]


def assert_refused(path: Path, tmp_path: Path, message: str, *markers: Path) -> None:
    for args in loaders(path, tmp_path):
        result = CliRunner().invoke(main, args)
        assert (result.exit_code, result.output) == (2, f"Error: {message}\n"), args
        for marker in markers:
            assert not marker.exists(), f"{args[0]} ran code: {marker} exists"
    assert not any(p.name in ("net.pt2", "cells.dot", "run.png") for p in tmp_path.iterdir())


def test_a_module_spec_is_neither_imported_nor_called(base, tmp_path, probe):
    spec, imported, called = probe
    path = craft(base, tmp_path / "module.pt", with_model(spec=spec))
    package = spec.split(":")[1]
    message = (
        f"the checkpoint's model is {spec}, which would import and run code from {package!r}; a "
        f"file cannot vouch for code, so fxdnat runs it only if you ask: {TRUST}"
    )
    assert_refused(path, tmp_path, message, imported, called)
    assert package not in sys.modules


def test_os_system_with_a_command_is_refused(base, tmp_path):
    marker = tmp_path / "pwned"
    path = craft(
        base,
        tmp_path / "system.pt",
        with_model(spec="module:os:system", kwargs={"command": f"touch {marker}"}),
    )
    message = (
        "the checkpoint's model is module:os:system, which would import and run code from 'os'; "
        f"a file cannot vouch for code, so fxdnat runs it only if you ask: {TRUST}"
    )
    assert_refused(path, tmp_path, message, marker)


@pytest.mark.parametrize(
    ("spec", "kwargs", "shown"),
    [
        ("zoo:resnet20", {"auxiliary": [1, 2]}, "'auxiliary' (a list)"),
        ("zoo:resnet20", {"auxiliary": torch.ones(1)}, "'auxiliary' (a Tensor)"),
        ("zoo:resnet20", {"auxiliary": {"a": 1}}, "'auxiliary' (a dict)"),
        ("zoo:resnet20", {3: True}, "3 (a bool)"),
        ("timm:resnet10t", {"checkpoint_path": "/tmp/evil.pth"}, "checkpoint_path='/tmp/evil.pth'"),
        ("timm:resnet10t", {"pretrained": True}, "pretrained=True"),
        ("timm:resnet10t", {"pretrained_cfg": "x"}, "pretrained_cfg='x'"),
        ("torchvision:resnet18", {"weights": "DEFAULT"}, "weights='DEFAULT'"),
    ],
)
def test_arguments_that_are_not_plain_or_load_weights_are_refused(
    base, tmp_path, spec, kwargs, shown
):
    path = craft(base, tmp_path / "kwargs.pt", with_model(spec=spec, kwargs=kwargs))
    message = f"the checkpoint passes {shown} to {spec}; {PLAIN_ONLY}"
    assert_refused(path, tmp_path, message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zoo:../../../tmp/evil", "unknown zoo model '../../../tmp/evil'; see `fxdnat zoo`"),
        ("timm:../../evil", "unknown timm model '../../evil'"),
        ("timm:hf-hub:evil/model", "unknown timm model 'hf-hub:evil/model'"),
        ("torchvision:/etc/passwd", "unknown torchvision classification model '/etc/passwd'"),
        (
            "pip:install",
            "unknown model source 'pip' in 'pip:install'; expected one of zoo:NAME, "
            "timm:NAME, torchvision:NAME, hf:NAME or module:package.module:factory",
        ),
    ],
)
def test_names_are_looked_up_in_their_registry_before_anything_is_built(
    base, tmp_path, spec, message
):
    path = craft(base, tmp_path / "name.pt", with_model(spec=spec))
    assert_refused(path, tmp_path, message)


class Allowlisted:
    """A class a process allowed for weights_only; its objects are still no checkpoint data."""

    def __init__(self, value: int = 0) -> None:
        self.value = value


def test_an_object_of_an_allowlisted_class_is_refused(base, tmp_path):
    path = craft(base, tmp_path / "object.pt", lambda d: d["config"].update(extra=Allowlisted()))
    with torch.serialization.safe_globals([Allowlisted]):
        for args in loaders(path, tmp_path):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 2, args
            assert (
                result.output
                == f"Error: {path}: field config.extra holds an object of type Allowlisted; {ONLY_PLAIN}\n"
            )


class Payload:
    """Unpickling this runs ``os.system``: what a malicious pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("field", ["model", "config", "state", "model_state", "edges"])
def test_a_pickled_payload_in_any_field_is_refused_unrun(base, tmp_path, field):
    marker = tmp_path / "pwned"
    path = craft(base, tmp_path / "payload.pt", lambda d: d.update({field: Payload(marker)}))
    message = f"{path} refers to the Python object posix.system; {ONLY_PLAIN}"
    assert_refused(path, tmp_path, message, marker)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (with_model(leaves=[1]), "model.leaves is not a list of module paths"),
        (with_model(num_classes="10"), "model.num_classes is not a positive integer"),
        (with_model(input_size=0), "model.input_size is not a positive integer"),
        (with_model(spec=7), "model.spec is not a model spec string"),
        (
            lambda d: d.update(decisions={"layer1.0:0": "rm -rf"}),
            "decisions is not a choice of none, identity, same per edge",
        ),
        (lambda d: d.update(tie="../x"), "tie is not cell or full"),
        (lambda d: d.update(finalize_scale="learned"), "finalize_scale is not keep or one"),
        (lambda d: d.update(finalize_scale=["keep"]), "finalize_scale is not keep or one"),
        (lambda d: d.update(theta=torch.zeros(3)), "theta is not a (rows, 3) tensor"),
        (lambda d: d.update(edges="all"), "edges is not a list"),
    ],
)
def test_fields_that_reach_the_builder_have_the_shape_fxdnat_writes(
    base, tmp_path, change, message
):
    path = craft(base, tmp_path / "field.pt", change)
    assert_refused(
        path,
        tmp_path,
        f"the checkpoint's field {message} as fxdnat writes it; was the file written by fxdnat?",
    )


def test_trust_code_builds_a_module_spec(base, tmp_path, probe):
    spec, imported, called = probe
    path = craft(base, tmp_path / "module.pt", with_model(spec=spec))
    result = CliRunner().invoke(main, ["eval", str(path), "--limit", "8", "--trust-code"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{spec} (done) on digits: test accuracy")
    assert imported.exists() and called.exists()


def test_the_library_refuses_too_unless_the_caller_names_the_spec(base, tmp_path, probe):
    spec, imported, called = probe
    path = craft(base, tmp_path / "module.pt", with_model(spec=spec))
    with pytest.raises(ValueError, match=f"^the checkpoint's model is {spec}, which would import"):
        load_network(path)
    with pytest.raises(ValueError, match="which would import and run code"):
        ckpt.restore(ckpt.load(path), spec="zoo:resnet20")  # another spec vouches for nothing
    assert not imported.exists() and not called.exists()
    ckpt.restore(ckpt.load(path), spec=spec)  # the caller named this very spec
    assert imported.exists() and called.exists()
    network, _ = load_network(path, trust_code=True)
    assert network(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_restore_checks_a_dict_it_did_not_load_itself(base):
    data = torch.load(base, weights_only=True)
    data["theta_history"] = [Allowlisted()]
    with pytest.raises(
        ckpt.CheckpointError,
        match=f"^the checkpoint: field theta_history\\[0\\] holds an object of type Allowlisted; {ONLY_PLAIN}$",
    ):
        ckpt.restore(data)


def test_a_genuine_checkpoint_loads_without_trust(base):
    network, data = load_network(base)
    assert data["model"]["spec"] == "zoo:resnet20"
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------ finalize's scale: the replay is the same graph
def trained_theta(path: Path) -> torch.Tensor:
    """ResNet20's θ as training leaves it: θ_same in 0.8-1.4, the other entries small."""
    edges = len(torch.load(path, weights_only=True)["edges"])
    generator = torch.Generator().manual_seed(0)
    theta = torch.rand(edges, 3, generator=generator) * 0.4 - 0.2
    theta[:, 2] = torch.rand(edges, generator=generator) * 0.6 + 0.8
    return theta


DECISIONS = {"layer1.0:0": "identity", "layer2.1:0": "none", "layer3.2:1": "none"}


@pytest.fixture(scope="module")
def theta(base) -> torch.Tensor:
    return trained_theta(base)


def restored_outputs(path: Path, x: torch.Tensor):
    module = ckpt.restore(ckpt.load(path)).module.eval()
    with torch.no_grad():
        return module, module(x)


@pytest.mark.parametrize("scale", ["keep", "one"])
def test_a_finalized_network_with_learned_coefficients_reloads_to_the_same_outputs(
    tmp_path, theta, scale
):
    path, final = save_finalized(
        tmp_path / "ckpt.pt", "zoo:resnet20", DECISIONS, theta=theta, scale=scale
    )
    assert torch.load(path, weights_only=True)["finalize_scale"] == scale
    x = torch.randn(2, 3, 32, 32)
    module, got = restored_outputs(path, x)
    assert module.code == final.code  # a multiply's coefficient is a literal of the graph
    with torch.no_grad():
        torch.testing.assert_close(got, final.eval()(x), rtol=0, atol=0)
    assert module.meta["fxdnat"]["coefficients"] == final.meta["fxdnat"]["coefficients"]


def test_the_replay_takes_theta_from_the_history_where_the_final_module_stored_none(
    tmp_path, theta
):
    """The engine stores the final module's θ, which it no longer has: the last θ of the
    architecture stage is the one finalize saw."""
    path, final = save_finalized(
        tmp_path / "ckpt.pt", "zoo:resnet20", DECISIONS, theta=theta, scale="keep"
    )
    data = torch.load(path, weights_only=True)
    data["theta"] = None
    torch.save(data, path)
    x = torch.randn(2, 3, 32, 32)
    module, got = restored_outputs(path, x)
    assert module.code == final.code
    with torch.no_grad():
        torch.testing.assert_close(got, final.eval()(x), rtol=0, atol=0)


def test_a_checkpoint_from_before_the_scale_reloads_as_one(tmp_path, theta):
    path, final = save_finalized(tmp_path / "old.pt", "zoo:resnet20", DECISIONS, theta=theta)
    assert "finalize_scale" not in torch.load(path, weights_only=True)
    assert final.meta["fxdnat"]["scale"] == "one"
    module, _ = restored_outputs(path, torch.zeros(1, 3, 32, 32))
    assert module.meta["fxdnat"]["scale"] == "one" and module.code == final.code


def test_a_theta_history_of_the_wrong_shape_is_refused(base):
    """restore validates it (the replay may read it); ``fxdnat plot`` does not restore."""
    data = torch.load(base, weights_only=True)
    data["theta_history"] = [torch.zeros(2, 2)]
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"^the checkpoint's field theta_history is not a list of \(rows, 3\) tensors ",
    ):
        ckpt.restore(data)


def test_a_theta_that_does_not_fit_the_edges_is_refused(base, tmp_path, theta):
    path, _ = save_finalized(
        tmp_path / "ckpt.pt", "zoo:resnet20", DECISIONS, theta=theta, scale="keep"
    )
    data = torch.load(path, weights_only=True)
    data["theta"] = data["theta"][:-1]
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"^the checkpoint's θ has shape \(17, 3\) but its edges make \(18, 3\); ",
    ):
        ckpt.restore(data)


def test_an_architecture_stage_checkpoint_is_finalized_at_its_scale(tmp_path, theta):
    path, gated = save_finalized(
        tmp_path / "arch.pt", "zoo:resnet20", DECISIONS, theta=theta, scale="keep", stage="arch"
    )
    final, decisions, now = ckpt.restore(ckpt.load(path)).final()
    assert now and final.meta["fxdnat"]["scale"] == "keep"
    assert final.meta["fxdnat"]["folded"]  # θ_same is not 1: the branches' bn2 carry it


def test_a_keep_checkpoint_exports(tmp_path, theta):
    from fxdnat.export import export

    path, _ = save_finalized(
        tmp_path / "ckpt.pt", "zoo:resnet20", DECISIONS, theta=theta, scale="keep"
    )
    done = export(path, tmp_path / "net.pt2")
    assert done.max_error is not None and done.max_error < 1e-4
