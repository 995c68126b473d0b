"""render: draw what DNAT did to a network — its cells or the whole net — as a Graphviz graph.

A pass over graphs: it takes a traced module, its edges and their decisions in memory and builds
the DOT. Loading checkpoints and specs, and laying DOT out as SVG or PNG, is ``fxdnat.drawing``'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import graphviz
from torch import fx

from fxdnat.ir import IDENTITY, NONE, SAME, Edge, joins_of, within
from fxdnat.passes import _graph
from fxdnat.passes.gate import cell_structures

VIEWS = ("cell", "net")
ROOT_CELL = "(root)"
"""How the root module's cell (stored as "") is named on the command line and in captions."""
MAX_DIAGRAMS = 6
"""Cell diagrams in one cell view; beyond that the most changed are drawn (``cell=`` draws any)."""

# The paper's Figures 2-4: kept edges plain black, edges turned into the identity red, removed
# edges dashed grey.
EDGE_STYLES: dict[str, dict[str, str]] = {
    SAME: {"color": "black", "fontcolor": "black", "style": "solid"},
    IDENTITY: {"color": "#d62728", "fontcolor": "#d62728", "style": "bold"},
    NONE: {"color": "#9a9a9a", "fontcolor": "#7a7a7a", "style": "dashed"},
}
# DARTS' own cell figures: inputs green, intermediate nodes (sums) blue, output yellow.
_FILLS = {
    "input": "#c1e1c1",
    "join": "#add8e6",
    "output": "#eee8aa",
    "op": "white",
    "chain": "white",
}
_FONT = "Helvetica"
_NORM_ACT = {"bn", "relu", "relu6", "gelu", "silu", "hardswish", "sigmoid", "layernorm", "ln"}
_WRAP = 30  # characters per line of an edge label


@dataclass
class Subject:
    """What a diagram shows: the untransformed traced network, its edges and each one's choice."""

    gm: fx.GraphModule
    edges: list[Edge]
    decisions: dict[str, str]
    spec: str
    status: str = "untransformed"
    """"untransformed" (a SPEC), "preferences" (architecture stage: argmax θ now) or "final"."""
    tie: str | None = None
    data: str | None = None
    accuracy: float | None = None
    loss: float | None = None  # a language model's validation loss, nats per token: shown instead
    params: tuple[int, int] | None = None  # before -> after
    progress: str | None = None  # "epoch 3 of 6" for the architecture stage
    margins: dict[str, float] | None = None  # how sure each decision is: θ's top-two gap
    margin_label: str = "θ margin"  # "min θ margin" where one drawing stands for several cells
    method: str = "dnat"  # "random": the control's changes, placed at random

    def cells(self) -> list[str]:
        """The cells that own edges, in graph order (of their first operand)."""
        index = {node.name: i for i, node in enumerate(self.gm.graph.nodes)}
        first: dict[str, int] = {}
        for edge in self.edges:
            first[edge.cell] = min(first.get(edge.cell, len(index)), index[edge.operand])
        return sorted(first, key=first.__getitem__)


# ------------------------------------------------------------------------------ the pass
def render(subject: Subject, view: str = "cell", cell: str | None = None) -> graphviz.Digraph:
    """The DOT of ``subject``: its cells (one diagram per kind of cell, or ``cell``) or the net."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    if view == "net":
        if cell is not None:
            raise ValueError("a cell is chosen in the cell view only; drop --cell for --view net")
        return _net_view(subject)
    return _cell_view(subject, cell)


# ------------------------------------------------------------------------------ the flow
@dataclass
class _Vertex:
    """A box or circle of the diagram: one FX node or a chain of them."""

    id: str  # the FX name of its first node: stable across runs
    nodes: list[fx.Node]
    kind: str  # "input", "join", "op", "output" or "chain"
    ins: list[_Arc] = field(default_factory=list)
    outs: list[_Arc] = field(default_factory=list)


@dataclass
class _Arc:
    tail: _Vertex
    head: _Vertex
    edge: Edge | None = None  # a DNAT edge, else plain data flow
    label: str = ""


@dataclass
class _Flow:
    """The graph reduced to what a reader needs: branches collapsed into labelled edges."""

    vertices: list[_Vertex]
    arcs: list[_Arc]


def _flow(
    gm: fx.GraphModule,
    scope: Sequence[fx.Node],
    edges: Sequence[Edge],
    kinds: Mapping[str, str],
    blocks: Mapping[str, str] | None = None,
) -> _Flow:
    """Collapse each branch of ``edges`` into one arc and each chain of plain nodes into one
    vertex; ``kinds`` names the vertices that stay on their own (inputs, joins, the output)."""
    hidden = _hidden(edges)
    drawn = [e for e in edges if e.kind != "op" and e.join not in hidden and e.source not in hidden]
    visible = [n for n in scope if n.name not in hidden]
    vertex = {
        n.name: _Vertex(n.name, [n], kinds.get(n.name, "chain")) for n in visible
    }  # FX names → vertices (before merging chains)
    skips = Counter((e.source, e.user) for e in drawn if e.kind == "skip")
    arcs: list[_Arc] = []
    for node in visible:
        for user in node.users:
            if user.name not in vertex or skips[(node.name, user.name)]:
                continue  # outside the picture, or a skip edge drawn as a DNAT edge below
            arcs.append(_connect(vertex[node.name], vertex[user.name]))
    for edge in drawn:
        arcs.append(_connect(vertex[edge.source], vertex[edge.join], edge))
    vertices = list(vertex.values())
    # the cell view folds the ops before its output into the output's arrow; the net view
    # keeps them in a box of their own (the head: pool-flatten-linear)
    heads = ("chain",) if blocks is not None else ("chain", "output")
    _merge_chains(vertices, arcs, blocks or {}, heads)
    return _Flow([v for v in vertices if v.nodes], [a for a in arcs if a.tail is not a.head])


def _hidden(edges: Sequence[Edge]) -> set[str]:
    """Nodes drawn as part of an edge: branch bodies and the inner adds of a chain a + b + c."""
    hidden: set[str] = set()
    for edge in edges:
        if edge.kind != "op":
            hidden.update(edge.nodes)
            if edge.user != edge.join:
                hidden.add(edge.user)
    return hidden


def _connect(tail: _Vertex, head: _Vertex, edge: Edge | None = None) -> _Arc:
    arc = _Arc(tail, head, edge)
    tail.outs.append(arc)
    head.ins.append(arc)
    return arc


def _merge_chains(
    vertices: list[_Vertex], arcs: list[_Arc], block: Mapping[str, str], heads: Sequence[str]
) -> None:
    """Fold v into u where u → v is the only way out of u and the only way into v (and v is of
    a kind in ``heads``)."""
    for v in vertices:
        if len(v.ins) != 1 or v.ins[0].edge is not None or v.kind not in heads:
            continue
        arc = v.ins[0]
        u = arc.tail
        if u.kind != "chain" or len(u.outs) != 1 or block.get(u.id) != block.get(v.id):
            continue
        u.nodes += v.nodes
        u.kind = v.kind
        u.outs = v.outs
        for out in v.outs:
            out.tail = u
        arcs.remove(arc)
        v.nodes, v.ins, v.outs = [], [], []


# ----------------------------------------------------------------------------- cell view
def _cell_view(subject: Subject, cell: str | None) -> graphviz.Digraph:
    if not subject.edges:
        raise ValueError(
            f"{subject.spec} has no edges (nothing DNAT could transform), so it has no cells to "
            "draw; use the net view (--view net)"
        )
    groups = _cell_groups(subject)
    if cell is not None:
        groups = [[_cell_name(subject, cell)]]
    shown = sorted(_most_changed(subject, groups), key=groups.index)
    dot = _digraph("cells", rankdir="LR")
    # Unconnected parts are stacked bottom-up under rankdir=LR: declared last is drawn on top.
    _legend(dot)
    for i, cells in reversed(list(enumerate(shown))):
        with dot.subgraph(name=f"cluster_{i}") as sub:
            sub.attr(label=_cells_title(cells), style="rounded", color="#bbbbbb", labeljust="l")
            _draw_cell(sub, _for_cells(subject, cells), cells[0], prefix=f"c{i}_")
    note = ""
    if len(shown) < len(groups):
        note = (
            f"showing the {len(shown)} most changed of {len(groups)} kinds of cell; "
            "--cell NAME draws any other"
        )
    dot.attr(label=_caption(subject, note), labelloc="b", labeljust="l")
    return dot


def _for_cells(subject: Subject, cells: list[str]) -> Subject:
    """``subject`` as the drawing of ``cells[0]`` shows it for all of ``cells``: each edge's
    margin is the smallest of the edges in that role (full tie: every cell has its own θ)."""
    if not subject.margins or len(cells) == 1:
        return subject
    drawn = {e.role: e.name for e in subject.edges if e.cell == cells[0]}
    smallest: dict[str, float] = {}
    for edge in subject.edges:
        if edge.cell in cells and edge.name in subject.margins and edge.role in drawn:
            name = drawn[edge.role]
            smallest[name] = min(smallest.get(name, math.inf), subject.margins[edge.name])
    return dataclasses.replace(subject, margins=smallest, margin_label="min θ margin")


def _cell_groups(subject: Subject) -> list[list[str]]:
    """Cells drawn alike: same structure and same decisions (all cells of one structure in cell
    tie mode), in graph order."""
    structures = cell_structures(subject.gm, subject.edges)
    groups: dict[object, list[str]] = {}
    for cell in subject.cells():
        choices = tuple(subject.decisions[e.name] for e in subject.edges if e.cell == cell)
        groups.setdefault((structures[cell], choices), []).append(cell)
    return list(groups.values())


def _most_changed(subject: Subject, groups: list[list[str]]) -> list[list[str]]:
    def changed(cells: list[str]) -> int:
        return sum(subject.decisions[e.name] != SAME for e in subject.edges if e.cell == cells[0])

    return sorted(groups, key=lambda cells: -changed(cells))[:MAX_DIAGRAMS]


def _cell_name(subject: Subject, name: str) -> str:
    cell = "" if name == ROOT_CELL else name
    if cell not in subject.cells():
        names = ", ".join(c or ROOT_CELL for c in subject.cells())
        raise ValueError(f"unknown cell {name!r} in {subject.spec}; cells with edges: {names}")
    return cell


def _cells_title(cells: list[str]) -> str:
    names = [c or ROOT_CELL for c in cells]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]}, {names[1]}, ..., {names[-1]} ({len(names)} cells alike)"


def _draw_cell(dot: graphviz.Digraph, subject: Subject, cell: str, prefix: str) -> None:
    """One cell: its inputs (edge sources), sums (joins) and output, edges between them."""
    gm, edges = subject.gm, [e for e in subject.edges if e.cell == cell]
    inner = [c for c in subject.cells() if c != cell and within(c, cell)]
    scope, output = _cell_scope(gm, cell, edges, inner)
    joins = list(dict.fromkeys(e.join for e in edges if e.join))
    kinds = {name: "join" for name in joins}
    kinds.update({e.operand: "op" for e in edges if e.kind == "op" and e.operand not in kinds})
    kinds.setdefault(output.name, "output")
    flow = _flow(gm, scope, edges, kinds)
    _fold_plain_chains(flow)
    inputs = [v for v in flow.vertices if not v.ins and v.kind not in ("output", "join")]
    for k, v in enumerate(inputs):
        v.kind = "input"
        label = _input_label(v.nodes[-1], cell, k if len(inputs) > 1 else None)
        _node(dot, prefix + v.id, label, "input", tooltip=v.nodes[-1].name)
    for v in flow.vertices:
        if v.kind == "join":
            number = joins.index(v.nodes[0].name)
            _node(dot, prefix + v.id, "+" if len(joins) == 1 else str(number), "join")
        elif v.kind in ("op", "chain"):
            _draw_vertex(dot, subject, v, prefix + v.id)
    _draw_output(dot, flow, output, prefix)
    for arc in flow.arcs:
        if arc.head.kind != "output" or output.name not in {n.name for n in arc.head.nodes}:
            _arc(dot, subject, arc, prefix)


def _cell_scope(
    gm: fx.GraphModule, cell: str, edges: Sequence[Edge], inner: Sequence[str]
) -> tuple[list[fx.Node], fx.Node]:
    """The cell's nodes from its edges' sources on, and its output (the last node read outside).

    Cells inside this one (``inner``) are left out: each has its own diagram."""
    nodes = {n.name: n for n in gm.graph.nodes}
    start = {nodes[e.source] for e in edges} | {nodes[e.join] for e in edges if e.join}
    scope = set(start)
    for node in gm.graph.nodes:  # graph order is topological: one pass closes the scope
        if node in scope or node.op == "output":  # the diagram draws its own output box
            continue
        if any(within(_path(node), c) for c in inner):
            continue
        if within(_path(node), cell) and any(arg in scope for arg in node.all_input_nodes):
            scope.add(node)
    ordered = [n for n in gm.graph.nodes if n in scope]
    drawn = [n for n in ordered if n.name not in _hidden(edges)]  # a branch may escape too
    outside = [n for n in drawn if any(u not in scope or u.op == "output" for u in n.users)]
    return ordered, (outside or drawn)[-1]


def _path(node: fx.Node) -> str:
    """The module a node belongs to: the called module itself, or the one whose code made it."""
    return str(node.target) if node.op == "call_module" else _graph.owner(node)


def _fold_plain_chains(flow: _Flow) -> None:
    """In a cell, a chain with one way in and one way out reads best as a labelled arrow."""
    for v in list(flow.vertices):
        if v.kind != "chain" or len(v.ins) != 1 or len(v.outs) != 1:
            continue
        (inward,), (outward,) = v.ins, v.outs
        if inward.edge is not None or outward.edge is not None:
            continue
        inward.head = outward.head
        inward.label = "-".join(filter(None, [inward.label, _ops(v.nodes), outward.label]))
        outward.head.ins = [inward if a is outward else a for a in outward.head.ins]
        flow.arcs.remove(outward)
        flow.vertices.remove(v)


def _input_label(node: fx.Node, cell: str, number: int | None) -> str:
    """An input made inside the cell is named by its module (DARTS' ``preprocess0``)."""
    path = _path(node)
    if cell and path != cell and within(path, cell):
        name = path[len(cell) + 1 :].split(".")[0]
        if not name.isdigit():  # preprocess0, not the 1 of a Sequential's second op
            return name
        return _graph.op_label(node.graph.owning_module, node)
    return "input" if number is None else f"input {number}"


def _draw_output(dot: graphviz.Digraph, flow: _Flow, output: fx.Node, prefix: str) -> None:
    """The output box; the ops that make it (``relu``, ``cat``) go on its one arrow or under it."""
    (holder,) = [v for v in flow.vertices if output in v.nodes]
    out = prefix + "output"
    if holder.kind != "output":  # the output is a sum or an input itself
        _node(dot, out, "output", "output")
        dot.edge(prefix + holder.id, out, color="#555555")
        return
    ops = _ops(holder.nodes)
    if len(holder.ins) == 1:
        _node(dot, out, "output", "output")
        tail = holder.ins[0].tail
        label = "-".join(filter(None, [holder.ins[0].label, ops]))
        dot.edge(prefix + tail.id, out, label=_wrap(label), color="#555555")
        return
    ops = ops.replace("\\n", "<BR/>")  # an HTML label breaks lines its own way
    _node(dot, out, f'<output<BR/><FONT POINT-SIZE="10">{ops}</FONT>>', "output")
    for arc in holder.ins:
        dot.edge(prefix + arc.tail.id, out, label=_wrap(arc.label), color="#555555")


# ------------------------------------------------------------------------------ net view
def _net_view(subject: Subject) -> graphviz.Digraph:
    gm = subject.gm
    active = _graph.activations(gm.graph)
    scope = [n for n in gm.graph.nodes if n in active or n.op == "output"]
    kinds = {n.name: "input" for n in scope if n.op == "placeholder"}
    kinds.update({e.join: "join" for e in subject.edges if e.join})
    kinds.update({e.operand: "op" for e in subject.edges if e.kind == "op"})
    kinds.update({n.name: "output" for n in scope if n.op == "output"})
    blocks = _blocks(gm, subject.edges, scope)
    flow = _flow(gm, scope, subject.edges, kinds, blocks)
    dot = _digraph("net", rankdir="TB")
    tree: dict[str, list[_Vertex]] = {}
    for v in flow.vertices:
        tree.setdefault(blocks[v.id], []).append(v)
    _draw_clusters(dot, subject, "", tree)
    for arc in flow.arcs:
        _arc(dot, subject, arc, "", short=True)
    _legend(dot, flat=True)
    dot.attr(label=_caption(subject), labelloc="b", labeljust="l")
    return dot


def _blocks(gm: fx.GraphModule, edges: Sequence[Edge], scope: Sequence[fx.Node]) -> dict[str, str]:
    """The cluster of each node: its module path, cut at the depth of the deepest cell and to
    modules that hold others (a lone conv is no block)."""
    depth = max((len(e.cell.split(".")) for e in edges if e.cell), default=1)
    holders = {name for name, m in gm.named_modules() if next(m.children(), None) is not None}
    blocks = {}
    for node in scope:
        parts = _path(node).split(".")[:depth] if _path(node) else []
        while parts and ".".join(parts) not in holders:
            parts.pop()
        blocks[node.name] = ".".join(parts)
    return blocks


def _draw_clusters(
    dot: graphviz.Digraph, subject: Subject, block: str, tree: dict[str, list[_Vertex]]
) -> None:
    """Nested clusters by module path: ``layer1`` holds ``layer1.0``, which holds its sum.

    ``tree`` lists blocks in graph order, so the clusters come out in the network's order."""
    for v in tree.get(block, []):
        _draw_vertex(dot, subject, v, v.id)
    children = list(dict.fromkeys(_child(block, b) for b in tree if _inside(b, block)))
    for child in children:
        with dot.subgraph(name="cluster_" + child.replace(".", "_")) as sub:
            shade = "#f4f4f4" if child.count(".") % 2 == 0 else "white"
            sub.attr(label=child, style="rounded,filled", color="#bbbbbb", fillcolor=shade)
            sub.attr(labeljust="l")
            _draw_clusters(sub, subject, child, tree)


def _inside(block: str, parent: str) -> bool:
    return block != parent and within(block, parent)


def _child(parent: str, block: str) -> str:
    """The child of ``parent`` on the way to ``block``."""
    rest = block[len(parent) + 1 :] if parent else block
    return (parent + "." if parent else "") + rest.split(".")[0]


# ------------------------------------------------------------------------------- drawing
def _draw_vertex(dot: graphviz.Digraph, subject: Subject, v: _Vertex, name: str) -> None:
    tooltip = ", ".join(n.name for n in v.nodes)
    if v.kind != "op":
        label = {"input": "input", "output": "output", "join": "+"}.get(v.kind) or _ops(v.nodes)
        _node(dot, name, label, v.kind, tooltip=tooltip)
        return
    # an op edge on the main path ("op" granularity): the op itself is the edge
    (edge,) = [e for e in subject.edges if e.kind == "op" and e.operand == v.nodes[-1].name]
    choice = subject.decisions.get(edge.name, SAME)
    text = _ops(v.nodes)
    style = EDGE_STYLES[choice]
    dot.node(
        name,
        label=text if choice == SAME else f"{choice} (was {text})",
        shape="box",
        style="rounded," + ("dashed" if choice == NONE else "solid"),
        color=style["color"],
        fontcolor=style["fontcolor"],
        penwidth="2" if choice == IDENTITY else "1",
        id=edge.name,
        tooltip=f"{edge.name}: {choice}",
        **{"class": f"dnat op {choice}"},
    )


def _digraph(name: str, rankdir: str) -> graphviz.Digraph:
    dot = graphviz.Digraph(name)
    dot.attr(rankdir=rankdir, fontname=_FONT, fontsize="12", nodesep="0.3", ranksep="0.45")
    dot.attr("node", fontname=_FONT, fontsize="12", margin="0.12,0.04", height="0.3")
    dot.attr("edge", fontname=_FONT, fontsize="10", arrowsize="0.7")
    return dot


def _node(dot: graphviz.Digraph, name: str, label: str, kind: str, tooltip: str = "") -> None:
    shape = "circle" if kind == "join" else "box"
    style = "filled" if kind == "join" else "rounded,filled"
    dot.node(
        name,
        label=label,
        shape=shape,
        style=style,
        fillcolor=_FILLS[kind],
        id=name,
        **{"class": kind},
        **({"tooltip": tooltip} if tooltip else {}),
        **({"width": "0.3", "fixedsize": "false"} if kind == "join" else {}),
    )


def _arc(
    dot: graphviz.Digraph,
    subject: Subject,
    arc: _Arc,
    prefix: str,
    short: bool = False,
) -> None:
    tail, head = prefix + arc.tail.id, prefix + arc.head.id
    if arc.edge is None:
        dot.edge(tail, head, label=_wrap(arc.label), color="#555555")
        return
    edge, choice = arc.edge, subject.decisions.get(arc.edge.name, SAME)
    summary = _summary(subject.gm, edge, short)
    label = summary if choice == SAME else f"{choice} (was {summary})"
    inner = _changed_ops(subject, edge)
    if inner:
        label += "; " + ", ".join(inner)
    sure = ""
    if subject.margins and edge.name in subject.margins:  # θ's gap: how sure the choice is
        sure = f"{subject.margin_label} {subject.margins[edge.name]:.2f}"
        label += f" [{sure}]"
    dot.edge(
        tail,
        head,
        label=_wrap(label),
        id=edge.name,
        tooltip=f"{edge.name}: {choice}" + (f", {sure}" if sure else ""),
        **{"class": f"dnat {choice}"},
        **EDGE_STYLES[choice],
    )


def _summary(gm: fx.GraphModule, edge: Edge, short: bool) -> str:
    summary = _graph.op_summary(gm, edge).replace("…", "...")  # graphviz-pure measures ASCII only
    if not short:
        return summary
    # the net view names a branch by its first two weighted ops: dwconv3x3-conv1x1-...
    ops = [op for op in summary.split("-") if op not in _NORM_ACT] or summary.split("-")
    return "-".join(ops[:2]) + ("-..." if len(ops) > 2 else "")


def _changed_ops(subject: Subject, edge: Edge) -> list[str]:
    """Op edges inside this branch that changed ("op" granularity): ``body.0: identity``."""
    inside = set(edge.nodes)
    nodes = {node.name: node for node in subject.gm.graph.nodes}
    changed = []
    for op in subject.edges:
        choice = subject.decisions.get(op.name, SAME)
        if op.kind == "op" and op.operand in inside and choice != SAME:
            path = _path(nodes[op.operand])
            changed.append(f"{path[len(edge.cell) + 1 :] if edge.cell else path}: {choice}")
    return changed


def _ops(nodes: Sequence[fx.Node]) -> str:
    gm = nodes[0].graph.owning_module
    labels = [_graph.op_label(gm, n) for n in nodes if n.op not in ("placeholder", "output")]
    return _wrap("-".join(label for label in labels if label not in _graph.QUIET_OPS))


def _wrap(text: str, width: int = _WRAP) -> str:
    """Break a long op list at its dashes (``\\n`` is DOT's centred line break)."""
    if len(text) <= width or text.startswith("<"):
        return text
    lines, line = [], ""
    for word in text.replace("-", "-\0").split("\0"):
        if line and len(line) + len(word) > width:
            lines.append(line)
            line = ""
        line += word
    return "\\n".join([*lines, line])


def _legend(dot: graphviz.Digraph, flat: bool = False) -> None:
    """One row of sample arrows: kept, identity, removed (``flat`` for a top-down graph)."""
    with dot.subgraph(name="cluster_legend") as legend:
        legend.attr(label="", style="rounded", color="#dddddd", margin="12" if flat else "4")
        points = [f"legend_{i}" for i in range(4)]
        with legend.subgraph() as row:
            if flat:  # the same rank lays a top-down graph's arrows side by side
                row.attr(rank="same")
            for name in points:
                row.node(name, label="", shape="point", width="0.04", color="#555555")
        samples = ((SAME, "kept"), (IDENTITY, "identity"), (NONE, "removed"))
        for (choice, text), a, b in zip(samples, points, points[1:], strict=False):
            legend.edge(a, b, label=text, **EDGE_STYLES[choice], **{"class": f"legend {choice}"})


def _caption(subject: Subject, note: str = "") -> str:
    title = subject.spec + (f" on {subject.data}" if subject.data else "")
    parts = [title]
    if subject.status == "untransformed":
        parts.append("untransformed (every edge as built)")
    else:
        names = {"random": "random control", "nat": "NAT (adapted)"}
        name = names.get(subject.method, "DNAT")
        parts.append(f"{name}, tie {subject.tie}" if subject.tie else name)
    if subject.loss is not None:
        parts.append(
            f"validation loss {subject.loss:.3f} (perplexity {math.exp(subject.loss):.2f})"
        )
    elif subject.accuracy is not None:
        parts.append(f"test accuracy {100 * subject.accuracy:.1f}%")
    if subject.params:
        before, after = subject.params
        parts.append(
            f"parameters {before:,} -> {after:,}" if before != after else f"{before:,} parameters"
        )
    counts = Counter(subject.decisions.values())
    changed = len(subject.decisions) - counts[SAME]
    lines = [", ".join(parts)]
    if subject.status != "untransformed":
        detail = ", ".join(f"{counts[c]} {c}" for c in (IDENTITY, NONE) if counts[c])
        dead = sum(
            all(subject.decisions.get(e.name) == NONE for e in members)
            for members in joins_of(subject.edges).values()
        )
        lines.append(
            f"{changed} of {len(subject.decisions)} edges changed"
            + (f" ({detail})" if detail else "")
            + (f"; {dead} dead joins (no operand left: a zero tensor flows on)" if dead else "")
        )
    if subject.status == "preferences":
        lines.insert(
            0, f"architecture stage ({subject.progress}): current preferences, not finalized"
        )
    if note:
        lines.append(note)
    return "\\l".join(lines) + "\\l"
