"""Attribution graphs over (position, subcomponent) nodes of a decomposition.

Nodes are every (position, subcomponent) with CI g > 0, one embedding node per position, and the
target logit. The forward is the CI-masked forward (m = g, Δ dropped), run with our own hooks so
that each subcomponent's output s_c = a_c g_c (a_c = V_c^T x, the scalar it writes along U_c) is
a detached leaf: every path from one node to another then ends at the first subcomponent it
meets, which is the gradient with stops at every other subcomponent. The edge c' -> c is

    w(c' -> c) = (∂a_c / ∂s_c')* · s_c' = (∂a_c / ∂s_c')* · a_c' · g_c',

summed over the residual stream, norms, nonlinearities and attention (so cross-position edges
through attention are included; a q or k subcomponent reaches o_proj through the softmax). Edges
into the target logit use its value in place of a_c. The adjacency is stored as
`adjacency[target, source]` over the ordered node list (embeddings, subcomponents in the
target's module order, logit), as in circuit-tracer, and written in its JSON shape (metadata,
qParams, nodes, links).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.nn as nn



@dataclass
class Node:
    kind: str  # "embedding" | "subcomponent" | "logit"
    pos: int
    row: int  # y position of the figure: 0 = embedding, 1..L = matrices in module order, L+1 = logit
    matrix: str = ""
    index: int = -1  # subcomponent index c, or the token id for embedding/logit nodes
    activation: float = 0.0  # a_c (subcomponents), the logit (logit node), ||e|| (embeddings)
    ci: float = 1.0


@dataclass
class AttributionGraph:
    nodes: list[Node]
    adjacency: torch.Tensor  # [N, N], adjacency[target, source]
    matrices: list[str]
    tokens: list[int]
    target_token: int
    target_pos: int
    logits: torch.Tensor  # [V] the CI-masked logits at target_pos
    info: dict = field(default_factory=dict)

    def influence(self) -> torch.Tensor:
        """Each node's total influence on the logit (circuit-tracer style): rows of |A| normalised to
        sum 1, then the logit row of (I - Â)^-1 - I, i.e. the summed weight of all paths."""
        A = self.adjacency.abs().double()
        A = A / A.sum(1, keepdim=True).clamp_min(1e-30)
        N = A.shape[0]
        eye = torch.eye(N, dtype=A.dtype)
        B = torch.linalg.solve(eye - A, eye) - eye  # A is strictly lower-triangular in node order
        return B[-1].float()


@contextlib.contextmanager
def node_tape(
    dec,
    ci: Mapping[str, torch.Tensor],
    embedding: Optional[nn.Module] = None,
) -> Iterator[dict[str, Any]]:
    """Hooks that run the CI-masked forward (Δ dropped) with explicit node tensors.

    Within the context, each forward of `dec.target` fills tape["acts"][name] = a [..., C] (with
    gradient to upstream leaves), tape["leaves"][name] = s = a * g [..., C] (a leaf) and, with an
    `embedding` module, tape["emb"] = its output as a leaf [..., d].
    """
    modules = dict(dec.target.named_modules())
    tape: dict[str, Any] = {"acts": {}, "leaves": {}, "emb": None}
    handles = []
    for name in dec.names:
        V, U = dec.components(name)  # [d_in, C], [C, d_out]
        g = ci[name].detach().float()

        def hook(mod, args, out, _name=name, _V=V, _U=U, _g=g):
            x = args[0].float()
            a = x @ _V  # [..., C]
            s = (a * _g).detach().requires_grad_(True)
            tape["acts"][_name], tape["leaves"][_name] = a, s
            y = s @ _U
            if mod.bias is not None:
                y = y + mod.bias.float()
            return y.to(out.dtype)

        handles.append(modules[name].register_forward_hook(hook))
    if embedding is not None:
        def emb_hook(mod, args, out):
            e = out.detach().float().requires_grad_(True)
            tape["emb"] = e
            return e

        handles.append(embedding.register_forward_hook(emb_hook))
    try:
        yield tape
    finally:
        for h in handles:
            h.remove()


def attribution_graph(
    dec,
    batch: torch.Tensor,
    ci: Mapping[str, torch.Tensor],
    target_token: int,
    *,
    target_pos: int = -1,
    embedding: Optional[nn.Module] = None,
    tokens: Optional[list[int]] = None,
) -> AttributionGraph:
    """The attribution graph of one sequence (batch dim 1) under the CI masks `ci` ({name: [1, T, C]}).

    `dec` needs `.target`, `.names` and `.components(name)` (a `vpd.decomp.Decomposition`);
    `target_token` indexes the last dim of the target's output at `target_pos`.
    """
    names = list(dec.names)
    T = next(iter(ci.values())).shape[1]
    pos_t = target_pos % T
    with node_tape(dec, ci, embedding) as tape, torch.enable_grad():
        out = dec.target(batch)  # [1, T, V]
    logits = out[0, pos_t].float()
    logit = logits[target_token]
    acts, leaves, emb = tape["acts"], tape["leaves"], tape["emb"]

    # ordered nodes: embeddings (row 0), subcomponents by matrix (rows 1..L), position, index; logit
    nodes: list[Node] = []
    src_index: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []  # (key, pos idx, c idx, first node id)
    if emb is not None:
        for t in range(T):
            nodes.append(Node("embedding", t, 0, index=int(tokens[t]) if tokens else t,
                              activation=float(emb[0, t].detach().norm())))
        src_index.append(("__emb__", torch.arange(T), torch.zeros(T, dtype=torch.long), 0))
    for row, name in enumerate(names, start=1):
        g = ci[name][0].detach()  # [T, C]
        tt, cc = torch.nonzero(g > 0, as_tuple=True)
        first = len(nodes)
        for t, c in zip(tt.tolist(), cc.tolist()):
            nodes.append(Node("subcomponent", t, row, name, c, float(acts[name][0, t, c].detach()), float(g[t, c])))
        src_index.append((name, tt, cc, first))
    nodes.append(Node("logit", pos_t, len(names) + 1, index=int(target_token), activation=float(logit.detach())))
    N = len(nodes)
    adjacency = torch.zeros(N, N)

    leaf_list = ([emb] if emb is not None else []) + [leaves[n] for n in names]
    leaf_keys = (["__emb__"] if emb is not None else []) + names

    def fill(row_id: int, scalar: torch.Tensor) -> None:
        if not scalar.requires_grad:  # no upstream node (e.g. first matrix without embedding nodes)
            return
        grads = torch.autograd.grad(scalar, leaf_list, retain_graph=True, allow_unused=True)
        by_key = dict(zip(leaf_keys, grads))
        for key, tt, cc, first in src_index:
            grad = by_key[key]
            if grad is None or len(tt) == 0:
                continue
            if key == "__emb__":
                w = (grad[0] * emb[0]).sum(-1).detach()  # [T]: grad . e per position
            else:
                w = (grad[0, tt, cc] * leaves[key][0, tt, cc]).detach()
            adjacency[row_id, first:first + len(tt)] = w

    for i, node in enumerate(nodes):
        if node.kind == "subcomponent":
            fill(i, acts[node.matrix][0, node.pos, node.index])
    fill(N - 1, logit)
    return AttributionGraph(nodes, adjacency, names, list(tokens or []), int(target_token), pos_t, logits.detach())


# ---------------------------------------------------------------- circuit-tracer JSON
def _node_id(node: Node) -> str:
    if node.kind == "embedding":
        return f"E_{node.index}_{node.pos}"
    return f"{node.row}_{node.index}_{node.pos}"


def graph_to_json(
    graph: AttributionGraph,
    *,
    slug: str,
    prompt: str,
    token_strings: list[str],
    target_string: str,
    subcomponent_name=None,
    info: Optional[dict] = None,
) -> dict:
    """The graph in circuit-tracer's JSON shape: metadata, qParams, nodes, links (nonzero weights)."""
    probs = torch.softmax(graph.logits, -1)
    p_target = float(probs[graph.target_token])
    influence = graph.influence()
    nodes_json = []
    for i, node in enumerate(graph.nodes):
        nid = _node_id(node)
        entry = {
            "node_id": nid,
            "feature": node.index,
            "layer": "E" if node.kind == "embedding" else str(node.row),
            "ctx_idx": node.pos,
            "feature_type": {"embedding": "embedding", "logit": "logit", "subcomponent": "vpd subcomponent"}[node.kind],
            "token_prob": p_target if node.kind == "logit" else 0.0,
            "is_target_logit": node.kind == "logit",
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "jsNodeId": nid,
            "clerp": "",
            "influence": float(influence[i]),
            "activation": node.activation,
        }
        if node.kind == "subcomponent":
            name = subcomponent_name(node.matrix, node.index) if subcomponent_name else f"{node.matrix}:{node.index}"
            entry.update(clerp=name, matrix=node.matrix, ci=node.ci)
        elif node.kind == "logit":
            entry["clerp"] = f'Output "{target_string}" (p={p_target:.3f})'
        else:
            entry["clerp"] = f'Emb: "{token_strings[node.pos]}"'
        nodes_json.append(entry)
    tgt, src = torch.nonzero(graph.adjacency, as_tuple=True)
    links = [
        {"source": nodes_json[s]["node_id"], "target": nodes_json[t]["node_id"], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(tgt.tolist(), src.tolist())
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": "vpd",
            "transcoder_list": [],
            "prompt_tokens": token_strings,
            "prompt": prompt,
            "node_threshold": None,
            "schema_version": 1,
            "matrices": graph.matrices,
            "target_token": target_string,
            "target_token_id": graph.target_token,
            "info": info or {},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes_json,
        "links": links,
    }


# ---------------------------------------------------------------- the `attribution` stage
# The paper's numbers (paper-outputs.md: graph:princess, its ci-only variant, graph:prince), as printed.
PAPER_GRAPHS: dict[tuple[str, str], dict[str, str]] = {
    ("princess", "adversarial"): {"n_nodes": "150", "p_target": "0.586", "p_ci": "1.000", "p_stochastic": "0.999",
                                  "p_adversarial": "0.443"},
    ("princess", "ci_only"): {"n_nodes": "6", "p_target": "0.586", "p_adversarial": "<0.0005"},
    ("prince", "adversarial"): {"n_nodes": "160", "p_adversarial": "0.383"},
}
SCORE_KEYS = ("n_nodes", "p_target", "p_ci", "p_stochastic", "p_adversarial")
