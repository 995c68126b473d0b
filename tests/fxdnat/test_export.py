"""export: .pt2, .onnx and .pt files that run without fxdnat and give the checkpoint's outputs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint
from click.testing import CliRunner
from torch import fx, nn

from fxdnat import checkpoint as ckpt
from fxdnat import export as exporting
from fxdnat.cli import main

DECISIONS = {"layer1.0:0": "identity", "layer1.1:1": "none", "layer3.0:1": "none"}

# Loads an exported file in a Python where `import fxdnat` fails, runs it on the saved input
# and saves the output: the file must stand on torch (or onnxruntime) alone.
LOADER = """
import sys
sys.modules["fxdnat"] = None  # any import of fxdnat now raises ImportError
import torch
path, inputs, outputs = sys.argv[1:]
x = torch.load(inputs)
if path.endswith(".pt2"):
    y = torch.export.load(path).module()(x)
elif path.endswith(".pt"):
    y = torch.jit.load(path)(x)
else:
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
torch.save(y, outputs)
"""


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "resnet20.pt"
    return save_checkpoint(path, "zoo:resnet20", DECISIONS)


def checkpoint_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    module = ckpt.restore(ckpt.load(path)).module.eval()
    with torch.no_grad():
        out = module(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def run_without_fxdnat(path: Path, x: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    inputs, outputs = tmp_path / "x.pt", tmp_path / "y.pt"
    torch.save(x, inputs)
    subprocess.run(
        [sys.executable, "-c", LOADER, str(path), str(inputs), str(outputs)],
        check=True,
        cwd=tmp_path,  # not the project root, where fxdnat/ would be importable as a folder
        capture_output=True,
    )
    return torch.load(outputs)


def needs(extension: str) -> None:
    if extension == ".onnx":  # the `onnx` extra: skipped visibly where it is not installed
        pytest.importorskip("onnxscript", reason="ONNX export needs `pip install fxdnat[onnx]`")
        pytest.importorskip("onnxruntime", reason="ONNX check needs `pip install fxdnat[onnx]`")


def inputs(checkpoint: Path) -> torch.Tensor:
    size = ckpt.load(checkpoint)["model"]["input_size"]
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def resnet_outputs(resnet_ckpt) -> torch.Tensor:
    return checkpoint_outputs(resnet_ckpt, inputs(resnet_ckpt))


def round_trip(checkpoint: Path, extension: str, tmp_path: Path, expected: torch.Tensor) -> None:
    needs(extension)
    out = tmp_path / f"network{extension}"
    done = exporting.export(checkpoint, out)
    assert done.path == out and out.is_file() and done.max_error is not None
    got = run_without_fxdnat(out, inputs(checkpoint), tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("extension", [".pt2", ".pt", ".onnx"])
def test_zoo_model_round_trip(resnet_ckpt, resnet_outputs, extension, tmp_path):
    round_trip(resnet_ckpt, extension, tmp_path, resnet_outputs)


def test_pt2_takes_any_batch_size(resnet_ckpt, tmp_path):
    done = exporting.export(resnet_ckpt, tmp_path / "net.pt2")
    assert done.dynamic_batch and done.input_shape == (1, 3, 32, 32)
    program = torch.export.load(done.path).module()
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(program(x), checkpoint_outputs(resnet_ckpt, x))


@pytest.mark.slow
@pytest.mark.parametrize("extension", [".pt2", ".pt", ".onnx"])
def test_timm_model_round_trip(extension, tmp_path):
    decisions = {"layer1.0:0": "identity", "layer2.0:1": "none"}
    path = save_checkpoint(tmp_path / "ckpt.pt", "timm:resnet10t", decisions, input_size=64)
    round_trip(path, extension, tmp_path, checkpoint_outputs(path, inputs(path)))


class _WithAuxiliary(nn.Module):
    """A net whose forward returns (logits, auxiliary logits), as DARTS' does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)
        self.auxiliary = nn.Linear(4, 10)

    def forward(self, x):
        features = self.body(x).mean((2, 3))
        return self.head(features), self.auxiliary(features)


def test_main_logits_drops_the_auxiliary_head_and_its_weights():
    model = _WithAuxiliary().eval()
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 3, 8, 8)
    main_only = exporting.main_logits(gm, x)
    torch.testing.assert_close(main_only(x), model(x)[0])
    assert not hasattr(main_only, "auxiliary")
    assert exporting.main_logits(main_only, x) is main_only  # a single output stays as it is


@pytest.mark.slow
def test_darts_with_auxiliary_head_exports_main_logits(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", "zoo:darts", {}, auxiliary=True)
    round_trip(path, ".pt2", tmp_path, checkpoint_outputs(path, inputs(path)))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_architecture_stage_is_exported_finalized_and_says_so(tmp_path):
    path = save_checkpoint(tmp_path / "arch.pt", "zoo:resnet20", DECISIONS, stage="arch")
    out = tmp_path / "net.pt"
    result = CliRunner().invoke(main, ["export", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        f"note: {path} is from the architecture stage; exported the network its current θ "
        "decides (finalized now)"
    ) in result.output
    assert f"wrote {out} (TorchScript, input (1, 3, 32, 32)); matches the checkpoint" in (
        result.output
    )
    scripted = torch.jit.load(str(out))
    x = torch.randn(1, 3, 32, 32)
    finalized = save_checkpoint(tmp_path / "final.pt", "zoo:resnet20", DECISIONS)
    torch.testing.assert_close(scripted(x), checkpoint_outputs(finalized, x))


def test_errors_are_one_line_with_exit_2(resnet_ckpt, tmp_path, monkeypatch):
    def run(out: Path):
        return CliRunner().invoke(main, ["export", str(resnet_ckpt), "--out", str(out)])

    result = run(tmp_path / "net.h5")
    assert result.exit_code == 2
    assert result.output == (
        f"Error: unknown export format '.h5' for {tmp_path / 'net.h5'}; supported: .pt2 "
        "(torch.export ExportedProgram), .onnx (ONNX), .pt (TorchScript)\n"
    )
    result = run(resnet_ckpt)
    assert result.exit_code == 2
    assert (
        result.output
        == f"Error: --out {resnet_ckpt} is the checkpoint itself; choose another file name\n"
    )

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    result = run(tmp_path / "net.onnx")
    assert result.exit_code == 2
    assert result.output == (
        "Error: ONNX export needs onnxscript, which is not installed; install it with "
        "`pip install fxdnat[onnx]`\n"
    )
