"""The statistical cores of Kernel SHAP and Partition SHAP, vectorized over all samples of a chunk.

Kernel SHAP (Lundberg & Lee 2017, eqs. 8–9) mirrors ``shap.KernelExplainer``'s sampling: Shapley kernel
weights per coalition size, whole sizes enumerated (with their complements) while the budget allows, the
rest drawn at random in complementary pairs with repeats adding weight, then a weighted least-squares fit
under the efficiency constraint. Partition SHAP mirrors ``shap.PartitionExplainer``'s best-first Owen
recursion over the axis-aligned split tree of ``shap.maskers.Image``. Neither imports shap (it loads pyplot
at import).
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------- Kernel SHAP


def kernel_budget(n_features: int, nsamples: int | None) -> int:
    """Coalitions evaluated per sample: ``nsamples`` (None: shap's "auto", 2·M + 2048), at most 2^M − 2."""
    k = 2 * n_features + 2048 if nsamples is None else int(nsamples)
    if n_features <= 30:
        k = min(k, 2**n_features - 2)
    return max(k, 0)


@dataclass(frozen=True)
class KernelDesign:
    """Coalitions (K×M bool, True = feature present), their kernel weights and the Gram matrix ZᵀWZ."""

    masks: np.ndarray
    weights: np.ndarray
    gram: np.ndarray


def _design(n_features: int, budget: int, rng: np.random.Generator) -> KernelDesign:
    masks, weights = _kernel_coalitions(n_features, budget, rng)
    z = masks.astype(np.float64)
    design = KernelDesign(masks, weights, z.T @ (weights[:, None] * z))
    for a in (design.masks, design.weights, design.gram):
        a.setflags(write=False)
    return design


@functools.lru_cache(maxsize=16)
def _cached_design(n_features: int, budget: int, seed: int) -> KernelDesign:
    return _design(n_features, budget, np.random.default_rng(seed))


def kernel_design(n_features: int, budget: int, seed: int | None) -> KernelDesign:
    """The coalitions every sample shares (cached per seed: chunks of one call reuse them)."""
    if seed is None:
        return _design(n_features, budget, np.random.default_rng())
    return _cached_design(n_features, budget, int(seed))


def _kernel_coalitions(m: int, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import binom  # on first use

    if m < 2 or budget < 1:
        return np.zeros((0, m), bool), np.zeros(0)
    n_sizes = int(np.ceil((m - 1) / 2.0))
    n_paired = int(np.floor((m - 1) / 2.0))
    weight_vector = np.array([(m - 1.0) / (i * (m - i)) for i in range(1, n_sizes + 1)])
    weight_vector[:n_paired] *= 2
    weight_vector /= weight_vector.sum()

    # whole subset sizes first, smallest (highest kernel weight) first, while the budget covers them
    masks: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    left, n_full = budget, 0
    remaining = weight_vector.copy()
    for size in range(1, n_sizes + 1):
        paired = size <= n_paired
        n_subsets = binom(m, size) * (2 if paired else 1)
        if left * remaining[size - 1] / n_subsets < 1.0 - 1e-8:
            break
        n_full += 1
        left -= int(n_subsets)
        if remaining[size - 1] < 1.0:
            remaining /= 1 - remaining[size - 1]
        combos = np.array(list(itertools.combinations(range(m), size)))
        block = np.zeros((len(combos), m), bool)
        block[np.arange(len(combos))[:, None], combos] = True
        if paired:  # each subset followed by its complement, as shap adds them
            block = np.stack([block, ~block], 1).reshape(-1, m)
        masks.append(block)
        w = weight_vector[size - 1] / binom(m, size) / (2.0 if paired else 1.0)
        weights.append(np.full(len(block), w))

    if n_full < n_sizes and left > 0:
        sampled, counts = _sample_pairs(m, left, n_full, n_paired, weight_vector, rng)
        counts *= weight_vector[n_full:].sum() / counts.sum()
        masks.append(sampled)
        weights.append(counts)
    return np.concatenate(masks), np.concatenate(weights)


def _sample_pairs(m: int, budget: int, n_full: int, n_paired: int, weight_vector: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """shap's random phase, vectorized: draw a size from the remaining kernel weight, a uniform subset of
    that size, add it and its complement (paired sizes); a repeat adds 1 to both weights instead."""
    p = weight_vector.copy()
    p[:n_paired] /= 2  # two samples (subset and complement) per draw
    p = p[n_full:] / p[n_full:].sum()
    draws = np.zeros((0, m), bool)
    # shap draws 4× the budget once and stops when those run out; drawing more rounds instead keeps the
    # number of evaluations equal to the budget, so the cost is known before the call.
    for _ in range(100):
        n = 4 * budget
        sizes = rng.choice(len(p), n, p=p) + n_full + 1
        ranks = rng.random((n, m)).argsort(1).argsort(1)
        draws = np.concatenate([draws, ranks < sizes[:, None]])
        sizes_all = draws.sum(1)
        paired = (sizes_all <= n_paired).astype(int)
        keys = np.packbits(draws, axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        is_new = first[inverse] == np.arange(len(draws))
        used = np.cumsum(is_new * (1 + paired))
        if used[-1] >= budget:
            break
    stop = int(np.searchsorted(used, budget)) if used[-1] >= budget else len(draws) - 1
    taken = inverse[:stop + 1]
    new_rows = np.flatnonzero(is_new[:stop + 1])
    counts = np.bincount(taken, minlength=len(first)).astype(float)[inverse[new_rows]]
    out_masks, out_counts = [], []
    room = budget
    for row, count in zip(new_rows, counts):
        out_masks.append(draws[row])
        out_counts.append(count)
        room -= 1
        if paired[row] and room > 0:
            out_masks.append(~draws[row])
            out_counts.append(count)
            room -= 1
    return np.array(out_masks, bool).reshape(-1, m), np.array(out_counts, float)


def constrained_wls(design: KernelDesign, y: torch.Tensor, delta: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Kernel SHAP's fit for all samples in one batched solve (Lundberg & Lee 2017, eq. 9 with the
    efficiency constraint): minimize Σ_k w_k (y_nk − z_k·φ_n)² subject to Σ φ_n = Δ_n, φ_ni = 0 where
    feature i of sample n equals the background (shap drops such features too).

    ``y`` is N×K (v(z) − v(∅)), ``delta`` N, ``active`` N×M bool. Solved as the
    KKT system [[A, a], [aᵀ, 0]] in float64; singular systems (fewer coalitions than features) fall back to
    the pseudo-inverse, i.e. the minimum-norm solution.
    """
    dev = y.device
    z = torch.tensor(design.masks, dtype=torch.float64, device=dev)
    gram = torch.tensor(design.gram, device=dev)
    a = active.double()
    n, m = a.shape
    rhs = (y.double() * torch.tensor(design.weights, device=dev)) @ z
    kkt = torch.zeros(n, m + 1, m + 1, dtype=torch.float64, device=dev)
    kkt[:, :m, :m] = a[:, :, None] * gram * a[:, None, :] + torch.diag_embed(1.0 - a)
    kkt[:, :m, m] = a
    kkt[:, m, :m] = a
    kkt[:, m, m] = (a.sum(1) == 0).double()  # nothing varies: φ = 0
    b = torch.cat([a * rhs, (delta.double() * (a.sum(1) > 0))[:, None]], 1)
    solution, info = torch.linalg.solve_ex(kkt, b)
    bad = info != 0
    if bad.any():
        solution[bad] = (torch.linalg.pinv(kkt[bad]) @ b[bad, :, None])[..., 0]
    return solution[:, :m]


# ---------------------------------------------------------------------------------------------- Partition SHAP


@dataclass(frozen=True)
class PartitionTree:
    """A binary hierarchy over M leaves in scipy/shap linkage numbering (leaves 0..M−1, node M+i = row i).

    ``left``/``right`` give each node's children (−1 for leaves); ``members`` is (2M−1)×M, the leaves under
    each node; ``size`` their count. Parents have larger ids than their children.
    """

    left: np.ndarray
    right: np.ndarray
    members: np.ndarray
    size: np.ndarray

    @property
    def n_leaves(self) -> int:
        return int(self.members.shape[1])

    @property
    def root(self) -> int:
        return len(self.size) - 1


@functools.lru_cache(maxsize=32)
def grid_tree(height: int, width: int) -> PartitionTree:
    """shap.maskers.Image's partition tree for a (height, width, 1) grid: split the longer axis in half,
    larger groups first (a port of ``shap.maskers._image._jit_build_partition_tree``)."""
    m = height * width
    clustering = np.zeros((max(m - 1, 0), 2), dtype=np.int64)
    queue = [(0, 0, height, 0, width, -1, False)]
    ind = m - 2
    while queue:
        _, x0, x1, y0, y1, parent, is_left = heapq.heappop(queue)
        if parent >= 0:
            clustering[parent, 0 if is_left else 1] = ind + m
        if x1 - x0 > 1 or y1 - y0 > 1:
            if x1 - x0 >= y1 - y0:
                mid = x0 + (x1 - x0) // 2
                halves = ((x0, mid, y0, y1), (mid, x1, y0, y1))
            else:
                mid = y0 + (y1 - y0) // 2
                halves = ((x0, x1, y0, mid), (x0, x1, mid, y1))
            for (a0, a1, b0, b1), left in zip(halves, (True, False)):
                heapq.heappush(queue, (-(a1 - a0) * (b1 - b0), a0, a1, b0, b1, ind, left))
        ind -= 1
    left = np.full(2 * m - 1, -1, dtype=np.int64)
    right = np.full(2 * m - 1, -1, dtype=np.int64)
    left[m:], right[m:] = clustering[:, 0], clustering[:, 1]
    members = np.zeros((2 * m - 1, m), bool)
    members[np.arange(m), np.arange(m)] = True
    for node in range(m, 2 * m - 1):  # children have smaller ids, so they are filled in first
        members[node] = members[left[node]] | members[right[node]]
    for a in (left, right, members):
        a.setflags(write=False)
    return PartitionTree(left, right, members, members.sum(1))


def owen_expansions(tree: PartitionTree, max_evals: int) -> int:
    """Node expansions per sample under ``max_evals`` coalitions: 2 are the empty and full coalitions and each
    expansion evaluates 2 (as in shap), at most the count that expands the whole tree. Data independent, so
    the number of evaluations is known before the call."""
    counts = np.zeros(len(tree.size), dtype=np.int64)
    counts[tree.root] = 1
    total = 0
    while (internal := counts[tree.n_leaves:].sum()) > 0:  # every visit of an internal node is expanded once
        total += int(internal)
        inner = np.flatnonzero(counts[tree.n_leaves:]) + tree.n_leaves
        nxt = np.zeros_like(counts)
        np.add.at(nxt, tree.left[inner], 2 * counts[inner])
        np.add.at(nxt, tree.right[inner], 2 * counts[inner])
        counts = nxt
    return min(total, max(max_evals - 2, 0) // 2)


def owen_values(tree: PartitionTree, expansions: int, f_empty: torch.Tensor, f_full: torch.Tensor,
                evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                round_fraction: float = 0.25) -> torch.Tensor:
    """Owen values (N×M) by shap's recursion with ``fixed_context=None``, best first, all samples at once.

    A visit (m00, f00, f11, node, w) of an internal node evaluates its two halves added to m00 and recurses
    into both children in the empty and the full context at half the weight; a visit of a leaf credits
    (f11 − f00)·w to it. Each sample keeps its own frontier and expands its highest |f11 − f00|·w visits
    first, ``round_fraction`` of its frontier per round (shap pops 5 per model call; larger rounds keep
    model calls large). When the budget is spent, each unexpanded visit leaves (f11 − f00)·w on its node,
    lowered to the leaves in proportion to their count. ``evaluate(sample_index, masks)`` returns v for
    P pairs of (sample, M-long coalition).
    """
    dev = f_empty.device
    n, m = f_empty.shape[0], tree.n_leaves
    left, right = torch.tensor(tree.left, device=dev), torch.tensor(tree.right, device=dev)
    members = torch.tensor(tree.members, device=dev)
    credit = torch.zeros(n, 2 * m - 1, dtype=torch.float64, device=dev)
    rows = torch.arange(n, device=dev)[:, None]
    # the frontier: padded N×F visits of internal nodes (leaf visits are credited when created)
    m00 = torch.zeros(n, 1, m, dtype=torch.bool, device=dev)
    node = torch.full((n, 1), tree.root, device=dev)
    weight = torch.ones(n, 1, dtype=torch.float64, device=dev)
    f00, f11 = f_empty.double()[:, None], f_full.double()[:, None]
    valid = torch.ones(n, 1, dtype=torch.bool, device=dev)
    if m == 1:  # the root is the only leaf
        return f11 - f00
    left_over = torch.full((n,), expansions, device=dev)
    while bool((left_over > 0).any()) and bool(valid.any()):
        size = valid.sum(1)
        k = torch.minimum(torch.clamp((size * round_fraction).ceil().long(), min=1), left_over)
        k = torch.minimum(k, size)
        gain = torch.where(valid, (f11 - f00).abs() * weight, torch.tensor(-1.0, dtype=torch.float64, device=dev))
        order = torch.as_tensor(np.argsort(-gain.cpu().numpy(), axis=1, kind="stable"), device=dev)
        kmax = int(k.max())
        pick = order[:, :kmax]
        picked = torch.arange(kmax, device=dev)[None, :] < k[:, None]
        left_over -= k
        sel = (rows.expand(-1, kmax)[picked], pick[picked])  # the P expanded visits as (sample, slot)
        p_node, p_w = node[sel], weight[sel]
        p_m00, p_f00, p_f11 = m00[sel], f00[sel], f11[sel]
        lo, hi = left[p_node], right[p_node]
        m10, m01 = p_m00 | members[lo], p_m00 | members[hi]
        out = evaluate(torch.cat([sel[0], sel[0]]), torch.cat([m10, m01])).double()
        f10, f01 = out[:len(p_node)], out[len(p_node):]
        # the picked visits leave the frontier; their four children join it (or credit their leaf)
        keep = valid.clone()
        keep[sel] = False
        kid_sample = sel[0].repeat(4)
        kid_node = torch.cat([lo, hi, lo, hi])
        kid_m00 = torch.cat([p_m00, p_m00, m01, m10])
        kid_f00 = torch.cat([p_f00, p_f00, f01, f10])
        kid_f11 = torch.cat([f10, f01, p_f11, p_f11])
        kid_w = (p_w / 2).repeat(4)
        leaf = kid_node < m
        credit.index_put_((kid_sample[leaf], kid_node[leaf]), (kid_f11 - kid_f00)[leaf] * kid_w[leaf], accumulate=True)
        inner = ~leaf
        m00, node, weight, f00, f11, valid = _regroup(
            n, (m00, node, weight, f00, f11), keep,
            kid_sample[inner], (kid_m00[inner], kid_node[inner], kid_w[inner], kid_f00[inner], kid_f11[inner]))
    # budget spent: what is left stays on the internal nodes
    credit.index_put_((rows.expand_as(node)[valid], node[valid]), ((f11 - f00) * weight)[valid], accumulate=True)
    size = torch.tensor(tree.size, device=dev, dtype=torch.float64)
    return credit[:, :m] + (credit[:, m:] / size[m:]) @ members[m:].double()


def _regroup(n: int, old: tuple[torch.Tensor, ...], keep: torch.Tensor, new_sample: torch.Tensor,
             new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Pack each sample's kept visits and its new ones into a fresh padded N×F frontier (+ validity)."""
    dev = keep.device
    kept_sample, kept_slot = keep.nonzero(as_tuple=True)
    sample = torch.cat([kept_sample, new_sample])
    order = torch.argsort(sample, stable=True)
    sample = sample[order]
    count = torch.bincount(sample, minlength=n)
    start = torch.cumsum(count, 0) - count
    slot = torch.arange(len(sample), device=dev) - start[sample]
    width = max(int(count.max()) if len(sample) else 0, 1)
    out = []
    for a, b in zip(old, new):
        merged = torch.cat([a[kept_sample, kept_slot], b])[order]
        packed = torch.zeros((n, width, *merged.shape[1:]), dtype=merged.dtype, device=dev)
        packed[sample, slot] = merged
        out.append(packed)
    valid = torch.zeros(n, width, dtype=torch.bool, device=dev)
    valid[sample, slot] = True
    return (*out, valid)
