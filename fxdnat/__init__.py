"""fxdnat: Differentiable Neural Architecture Transformation (DNAT, Kim & Lee 2020) on torch.fx.

The public API is imported lazily so that ``import fxdnat`` (and ``fxdnat --help``) stays fast and
does not load torch until a name that needs it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxdnat._lazy import lazy_exports
from fxdnat.ir import CHOICES, KINDS, Edge

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first use)
_LAZY: dict[str, str] = {
    "trace": "fxdnat.frontend",
    "TraceError": "fxdnat.frontend",
    "Architecture": "fxdnat.arch",
    "DNAT": "fxdnat.dnat",
    "transform": "fxdnat.engine",
    "RunConfig": "fxdnat.config",
    "load_network": "fxdnat.checkpoint",
    "tune_cpu_allocator": "fxdnat.allocator",
}

__all__ = [
    "CHOICES",
    "DNAT",
    "KINDS",
    "Architecture",
    "Edge",
    "RunConfig",
    "TraceError",
    "__version__",
    "load_network",
    "trace",
    "transform",
    "tune_cpu_allocator",
]

if TYPE_CHECKING:
    from fxdnat.allocator import tune_cpu_allocator
    from fxdnat.arch import Architecture
    from fxdnat.checkpoint import load_network
    from fxdnat.config import RunConfig
    from fxdnat.dnat import DNAT
    from fxdnat.engine import transform
    from fxdnat.frontend import TraceError, trace


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
