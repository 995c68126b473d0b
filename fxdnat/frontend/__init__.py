"""The front end: any nn.Module → a functional torch.fx GraphModule with shapes and memory facts.

``tracer`` drives it (leaves, errors); ``inputs`` binds the example inputs and unwraps wrappers;
``modes`` merges the train and eval traces; ``state`` keeps the user's model as it was;
``facts`` runs the module once to record shapes, aliases and writes; ``functionalize`` rewrites
in-place calls; ``memory`` answers what a call does to memory, for the front end and the passes.
"""

from fxdnat.frontend.errors import TraceError
from fxdnat.frontend.tracer import trace
from fxdnat.ir import META_KEY

__all__ = ["META_KEY", "TraceError", "trace"]
