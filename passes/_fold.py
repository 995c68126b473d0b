"""Fold a constant factor into the op that made a value: scale its weights instead of its output.

finalize's ``scale="keep"`` keeps each decided candidate's learned coefficient c. Where the
value c multiplies is made by an affine op — a norm with an affine transform, a convolution, a
linear layer — possibly followed by ops that commute with a scalar factor (dropout, drop-path,
views), ``c·op(x)`` is the same op with its weight and bias times c: no extra multiply, and the
network keeps the original's ops and parameters. A BatchNorm's running statistics are those of
its input, which c does not change, so the fold is exact in train mode too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxdnat.ir import within
from fxdnat.passes import _graph

# Ops whose output times c equals the op with its weight and bias times c. Exact types: a
# subclass may override forward (timm's BatchNormAct2d adds an activation; see _affine).
_AFFINE = frozenset(
    {
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.SyncBatchNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Linear,
    }
)
# timm's norm followed by its own dropout and activation: affine when both are nn.Identity
_NORM_ACT = frozenset({"timm.layers.norm_act.BatchNormAct2d"})
# Ops f with f(c·x) = c·f(x), walked through towards the affine op that made their input.
_LINEAR_MODULES = frozenset(
    {nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten, nn.Unflatten}
)
_DROP_PATHS = frozenset(
    {"timm.layers.drop.DropPath", "torchvision.ops.stochastic_depth.StochasticDepth"}
)
_LINEAR_FUNCTIONS = frozenset(
    {F.dropout, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute}
    | {torch.transpose}
)
_DROP_PATH_FUNCTIONS = frozenset(  # as FX records them where tracing goes through the module
    {"timm.layers.drop.drop_path", "torchvision.ops.stochastic_depth.stochastic_depth"}
)
_LINEAR_METHODS = frozenset(
    ["view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze"]
)


def fold_scale_(gm: fx.GraphModule, value: fx.Node, c: float) -> str | None:
    """Make ``value`` c times what it was by scaling the weights of the affine op that made it;
    returns that module's path, or None where no fold is exact and safe (the caller multiplies).

    The caller guarantees that one reader alone reads ``value``. Every value on the way back to
    the affine op must have a single reader as well (no one else may see the factor), and the
    op must be a module called once, whose parameters nothing else holds or reads. The module's
    scaled parameters are new tensors: ``gm`` may share its parameters with another module.
    """
    node = value
    while True:
        if node.op == "call_module" and _affine(gm.get_submodule(node.target)):
            if not _alone(gm, node.target):
                return None
            _scale_parameters(gm.get_submodule(node.target), c)
            return node.target
        source = _linear_input(gm, node)
        if source is None or _graph.use_count(source) != 1:
            return None
        node = source


def _affine(module: nn.Module) -> bool:
    kind = type(module)
    if kind not in _AFFINE and _qualified(kind) not in _NORM_ACT:
        return False
    if _qualified(kind) in _NORM_ACT and not (
        type(module.act) is nn.Identity and type(module.drop) is nn.Identity
    ):
        return False
    weight = module._parameters.get("weight")
    return (
        weight is not None
        and weight.is_floating_point()
        and not _hooked(module)
        and set(module._parameters) <= {"weight", "bias"}
    )


def _linear_input(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The tensor input x of ``node`` where ``node`` computes a linear f(x) (else None)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        kind = type(module)
        if (kind not in _LINEAR_MODULES and _qualified(kind) not in _DROP_PATHS) or _hooked(module):
            return None
    elif node.op == "call_function":
        if (
            node.target not in _LINEAR_FUNCTIONS
            and _qualified(node.target) not in _DROP_PATH_FUNCTIONS
        ):
            return None
    elif node.op != "call_method" or node.target not in _LINEAR_METHODS:
        return None
    source = node.args[0] if node.args else None
    return source if isinstance(source, fx.Node) else None


def _alone(gm: fx.GraphModule, path: str) -> bool:
    """The module at ``path`` is called once, under no other name and by no leaf around it,
    and its parameters are not read or held (shared, tied, or views) anywhere else."""
    module = gm.get_submodule(path)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    if calls.count(path) != 1 or any(t != path and within(path, t) for t in calls):
        return False
    if sum(m is module for _, m in gm.named_modules(remove_duplicate=False)) != 1:
        return False
    own = {id(p) for p in module.parameters(recurse=False)}
    storages = {_storage(p) for p in module.parameters(recurse=False)} - {0}
    prefix = path + "."
    read = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    if any(t.startswith(prefix) and "." not in t[len(prefix) :] for t in read):
        return False
    for name, tensor in [
        *gm.named_parameters(remove_duplicate=False),
        *gm.named_buffers(remove_duplicate=False),
    ]:
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            continue
        if id(tensor) in own or _storage(tensor) in storages:
            return False
    return True


@torch.no_grad()
def _scale_parameters(module: nn.Module, c: float) -> None:
    for name, param in list(module._parameters.items()):
        if param is not None:
            scaled = param.detach() * c  # a Python float keeps the parameter's dtype
            module._parameters[name] = nn.Parameter(scaled, requires_grad=param.requires_grad)


def _hooked(module: nn.Module) -> bool:
    """Hooks may change what the module computes (hook-based weight_norm and spectral_norm
    recompute the weight from other parameters before every call)."""
    return bool(module._forward_pre_hooks or module._forward_hooks)


def _storage(tensor: torch.Tensor) -> int:
    """Where a tensor's memory starts (0 for none): views and tied copies share it."""
    return tensor.untyped_storage().data_ptr()


def _qualified(kind: object) -> str:
    """``module.name`` of a class or function: matched by name, so that fxdnat imports neither
    timm nor torchvision."""
    return f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', '')}"
