"""Comparing two computations of the same decisions that differ by float rounding only.

Two computations of one quantity (ours vs a reference implementation, a batch vs each pair alone, one
CPU vs another) agree up to float32 rounding, and rounding depends on the machine (SIMD kernels, thread
count) and on tensor shapes. A decision taken on such a quantity (an argmax, a mutual check, a threshold)
can flip where its margin is smaller than the rounding. The rule every comparison here follows:

* measure ``d``, the largest difference between the two computations of the values compared, at
  run time (so the tolerance follows the machine the test runs on);
* a decision whose margin exceeds ``tol = 2 d + floor`` cannot flip: the gap between two values moves
  by at most 2 d (a value against a fixed threshold by d: the factor 2 is headroom there), and the
  floor covers a rounding step after the values compared (e.g. exp() before a score threshold). Such
  decisions must be taken identically by both;
* decisions within ``tol`` are "fragile": left out of the comparison, and there must be few of them
  (each caller states its bound), else the comparison would be too weak;
* bit-identical values (d = 0) leave nothing fragile: everything must agree exactly.

The second half applies the rule to LightGlue's adaptive depth and width (early exit, pruning): it
records what a run decided after each layer and from which token confidences and matchabilities, for
our model (:func:`our_decisions`), transformers' (:func:`transformers_decisions`) and kornia's
(:func:`kornia_decisions`), and compares two runs decision by decision (:func:`compare_decisions`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

#: Default bound on fragile decisions, as a share of those compared (a caller may pass its own).
MAX_FRAGILE_SHARE = 0.1
#: Absolute floor of the tolerance: ~16 float32 ulps at 1, and exp()'s rounding before a score
#: threshold (a relative 1.2e-7) in log space.
FLOOR = 1e-6


# --------------------------------------------------------------------------- the rule


def max_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest |got - expected| over the entries finite in both; those entries must be the same."""
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(got)), "different entries are finite (-inf: pruned or padded)"
    if not finite.any():
        return 0.0
    return (got[finite].double() - expected[finite].double()).abs().max().item()


def flip_tolerance(d: float, floor: float = FLOOR) -> float:
    """Margin up to which a decision may flip between two computations differing by at most ``d``:
    2 d + floor; -1 (nothing fragile: all must agree) when they are bit-identical (d = 0)."""
    return 2 * d + floor if d > 0 else -1.0


def assert_few_fragile(fragile: int, total: int, what: str, tol: float | None = None,
                       max_share: float = MAX_FRAGILE_SHARE, minimum: int = 2) -> None:
    """At most ``max_share`` of ``total`` (and at least ``minimum`` allowed) are fragile."""
    within = "the tolerance" if tol is None else f"{tol:.2g}"
    assert fragile <= max(minimum, max_share * total), \
        f"{fragile} of {total} {what} within {within} of a tie/threshold: the comparison is too weak"


# --------------------------------------------------------------------------- argmax and match sets


def _top2(values: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best value, its index, margin to the second best) along ``dim``; the margin is +inf with one
    candidate or a -inf second best, and for slices that are all -inf (nothing to decide)."""
    if values.shape[dim] < 2:
        best = values.max(dim)
        return best.values, best.indices, torch.full_like(best.values, math.inf)
    top = values.topk(2, dim=dim)
    first, second = top.values.select(dim, 0), top.values.select(dim, 1)
    margin = torch.where(torch.isneginf(second), torch.full_like(first, math.inf), first - second)
    return first, top.indices.select(dim, 0), margin


def fragile_argmax(values: torch.Tensor, tol: float, dim: int = 1) -> torch.Tensor:
    """Slices of ``values`` along ``dim`` whose best and second best lie within tol."""
    return _top2(values, dim)[2] <= tol


def assert_same_argmax(got: torch.Tensor, expected: torch.Tensor, tol: float, dim: int = 1,
                       max_share: float = MAX_FRAGILE_SHARE) -> torch.Tensor:
    """Every slice along ``dim`` has the same argmax in both, except fragile ones (few). Returns the
    slices compared."""
    fragile = fragile_argmax(expected, tol, dim)
    differ = got.argmax(dim) != expected.argmax(dim)
    assert not (differ & ~fragile).any(), f"best candidates differ at {(differ & ~fragile).nonzero()[:, 0].tolist()}"
    assert_few_fragile(int(fragile.sum()), fragile.numel(), "best candidates", tol, max_share)
    return ~fragile


def row_margins(la: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) margins of the mutual-match decisions of the rows of a pair's (N+1, M+1) log assignment
    (dustbins last; -inf for points not in it). A row's match is decided by its best column, that
    column's best row (mutual check) and exp(best) > threshold; its margin is the smallest of the three
    gaps (+inf for rows all -inf: pruned or padded points, never matched)."""
    sim = la[:-1, :-1]
    if not sim.numel():
        return torch.full((sim.shape[0],), math.inf)
    best, col, margin_r = _top2(sim, 1)
    margin_c = _top2(sim, 0)[2]
    # exp(x) > 0 fails below float32's smallest subnormal: the boundary of threshold = 0
    log_threshold = math.log(max(threshold, 1.4e-45))
    margin = torch.minimum(torch.minimum(margin_r, margin_c[col]), (best - log_threshold).abs())
    return torch.where(torch.isfinite(best), margin, math.inf)


def fragile_rows(la: torch.Tensor, threshold: float, tol: float) -> torch.Tensor:
    """(N,) bool: rows whose mutual-match decision could change if each entry of the log assignment
    moved by at most tol / 2 (see row_margins)."""
    return row_margins(la, threshold) <= tol


def assert_same_matches(got: torch.Tensor, expected: torch.Tensor, expected_la: torch.Tensor, threshold: float,
                        tol: float, max_share: float = MAX_FRAGILE_SHARE) -> torch.Tensor:
    """``got`` and ``expected`` (N,) matches0 (-1 = none) of one pair agree except on fragile rows
    (see fragile_rows), which are few. Returns the rows compared (agreeing, not fragile)."""
    fragile = fragile_rows(expected_la, threshold, tol)
    differ = got != expected
    assert not (differ & ~fragile).any(), f"rows {(differ & ~fragile).nonzero()[:, 0].tolist()} differ"
    involved = fragile & ((got >= 0) | (expected >= 0))
    assert_few_fragile(int(involved.sum()), int((expected >= 0).sum()), "matched rows", tol, max_share)
    return ~fragile


def assert_same_pair_matches(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], threshold: float,
                             max_share: float = MAX_FRAGILE_SHARE, floor: float = FLOOR,
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair, each side as (matches0, matches1, log assignment (N+1, M+1)): matches0 and matches1
    agree up to fragile rows / columns, the tolerance being flip_tolerance of the largest difference of
    the point-to-point log assignments. Returns the rows of image0 and the columns of image1 compared."""
    (got0, got1, la_got), (exp0, exp1, la_exp) = got, expected
    n0, n1 = la_exp.shape[0] - 1, la_exp.shape[1] - 1
    tol = flip_tolerance(max_difference(la_got[:-1, :-1], la_exp[:-1, :-1]), floor)
    rows = assert_same_matches(got0[:n0], exp0[:n0], la_exp, threshold, tol, max_share)
    cols = assert_same_matches(got1[:n1], exp1[:n1], la_exp.T, threshold, tol, max_share)
    return rows, cols


# --------------------------------------------------------------------------- LightGlue's adaptive decisions


@dataclass
class LayerDecision:
    """What one LightGlue run saw and decided for one pair after one layer (not the last): its points
    still running (index in their image, ascending, per image), their token confidences and whether the
    pair stopped (both None: early exit off), their matchabilities and which of them were dropped (both
    None: no pruning step)."""

    index: tuple[torch.Tensor, torch.Tensor]
    num_points: int = 0  # the pair's initial point count (the stop ratio's denominator)
    confidence: tuple[torch.Tensor, torch.Tensor] | None = None
    stopped: bool | None = None
    matchability: tuple[torch.Tensor, torch.Tensor] | None = None
    dropped: tuple[torch.Tensor, torch.Tensor] | None = None


#: One run: pair (index in its batch) -> layer index -> what was decided there.
Decisions = dict[int, dict[int, LayerDecision]]


def _ordered(index: torch.Tensor, *values: torch.Tensor | None) -> tuple:
    order = index.argsort()
    return (index[order].clone(),) + tuple(None if v is None else v[order].clone() for v in values)


@contextlib.contextmanager
def our_decisions(model):
    """Record the decisions of every forward of our LightGlue ``model`` meanwhile: yields a list that
    gets one Decisions per forward. Layouts come from _AdaptiveState (the working set it is handed)."""
    from glue_ros.models import lightglue as lg

    runs: list[Decisions] = []
    seen: dict = {}
    forward, check, mask = model.forward, model.check_if_stop, model.get_pruning_mask
    ran_layer, prune = lg._AdaptiveState.ran_layer, lg._AdaptiveState.prune

    def spy_forward(*args, **kwargs):
        runs.append({})
        seen["running"] = True  # the class-level spies act for this model only
        try:
            return forward(*args, **kwargs)
        finally:
            seen["running"] = False

    def spy_ran_layer(self, st):
        if seen.get("running"):
            seen["layout"] = (st.pairs.clone(), st.index.clone(), st.active.clone())
        return ran_layer(self, st)

    def spy_check(confidences, active, num_points, layer_index):
        stop = check(confidences, active, num_points, layer_index)
        pairs, index, _ = seen["layout"]
        num_points = torch.broadcast_to(torch.as_tensor(num_points), pairs.shape)
        for row, pair in enumerate(pairs.tolist()):
            per_image = [_ordered(index[row, s][active[row, s]], confidences[row, s][active[row, s]]) for s in (0, 1)]
            runs[-1].setdefault(int(pair), {})[layer_index] = LayerDecision(
                index=(per_image[0][0], per_image[1][0]), num_points=int(num_points[row]),
                confidence=(per_image[0][1], per_image[1][1]), stopped=bool(stop[row]))
        return stop

    def spy_mask(confidences, matchability, layer_index):
        seen["pruning"] = (confidences, matchability, layer_index)
        return mask(confidences, matchability, layer_index)

    def spy_prune(self, st, drop):
        if not seen.get("running"):
            return prune(self, st, drop)
        confidences, matchability, layer = seen.pop("pruning")
        for row, pair in enumerate(st.pairs.tolist()):
            active = st.active[row]
            per_image = [_ordered(st.index[row, s][active[s]], matchability[row, s][active[s]], drop[row, s][active[s]],
                                  None if confidences is None else confidences[row, s][active[s]]) for s in (0, 1)]
            entry = runs[-1].setdefault(int(pair), {}).get(layer)
            if entry is None:  # early exit off: no stop check recorded it
                entry = runs[-1][int(pair)][layer] = LayerDecision(index=(per_image[0][0], per_image[1][0]))
            assert all(torch.equal(entry.index[s], per_image[s][0]) for s in (0, 1))
            entry.matchability = (per_image[0][1], per_image[1][1])
            entry.dropped = (per_image[0][2], per_image[1][2])
        return prune(self, st, drop)

    model.forward, model.check_if_stop, model.get_pruning_mask = spy_forward, spy_check, spy_mask
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lg._AdaptiveState, "ran_layer", spy_ran_layer)
        mp.setattr(lg._AdaptiveState, "prune", spy_prune)
        try:
            yield runs
        finally:
            del model.forward, model.check_if_stop, model.get_pruning_mask


class _Tracker:
    """Builds Decisions of a reference implementation that keeps each pair's running points in index
    order (compacted, padding last): it follows which pairs still run and which points each keeps."""

    def __init__(self) -> None:
        self.runs: list[Decisions] = []

    def start(self, counts: list[tuple[int, int]]) -> None:
        """A new run of pairs with these point counts (image0, image1)."""
        self.runs.append({})
        self.pairs = list(range(len(counts)))  # the pairs still running
        self.index = {(p, s): torch.arange(n) for p, c in enumerate(counts) for s, n in enumerate(c)}
        self.num_points = {p: n0 + n1 for p, (n0, n1) in enumerate(counts)}

    def entry(self, pair: int, layer: int) -> LayerDecision:
        per_pair = self.runs[-1].setdefault(pair, {})
        if layer not in per_pair:
            per_pair[layer] = LayerDecision(index=(self.index[pair, 0], self.index[pair, 1]),
                                            num_points=self.num_points[pair])
        return per_pair[layer]

    def stopped(self, layer: int, confidences: list[tuple[torch.Tensor, torch.Tensor]], stop: list[bool]) -> None:
        """The running pairs' confidences (over their running points) and stop decisions."""
        for pair, c, s in zip(self.pairs, confidences, stop):
            entry = self.entry(pair, layer)
            entry.confidence = tuple(c[i][: len(entry.index[i])].clone() for i in (0, 1))
            entry.stopped = s
        self.pairs = [p for p, s in zip(self.pairs, stop) if not s]

    def pruned(self, layer: int, row: int, image: int, confidences: torch.Tensor | None, matchability: torch.Tensor,
               keep: torch.Tensor) -> None:
        """One image of the running pair ``row``: confidences, matchabilities and keep mask (padded)."""
        pair = self.pairs[row]
        entry = self.entry(pair, layer)
        n = len(entry.index[image])
        def with_image(values: tuple | None, value: torch.Tensor) -> tuple:
            return tuple(value if i == image else v for i, v in enumerate(values or (None, None)))

        entry.matchability = with_image(entry.matchability, matchability[:n].clone())
        entry.dropped = with_image(entry.dropped, ~keep[:n])
        if confidences is not None and (entry.confidence is None or entry.confidence[image] is None):
            entry.confidence = with_image(entry.confidence, confidences[:n].clone())  # early exit: set already
        self.index[pair, image] = entry.index[image][keep[:n]]


@contextlib.contextmanager
def transformers_decisions(ref):
    """Record the decisions of every forward (_match_image_pair) of transformers' LightGlue ``ref``
    meanwhile: yields a list that gets one Decisions per forward."""
    tracker = _Tracker()
    match, stop_check, mask = ref._match_image_pair, ref._get_early_stopped_image_pairs, ref._get_pruning_mask

    def spy_match(keypoints, descriptors, height, width, mask=None, **kwargs):
        real = mask.bool() if mask is not None else torch.ones(keypoints.shape[:3], dtype=torch.bool)
        tracker.start([(int(m[0].sum()), int(m[1].sum())) for m in real])
        return match(keypoints, descriptors, height, width, mask=mask, **kwargs)

    def spy_stop(confidences, layer_index, mask_, num_points):
        stop = stop_check(confidences, layer_index, mask_, num_points)
        rows = confidences.masked_fill(mask_ == 0, math.nan).reshape(-1, 2, confidences.shape[-1])
        tracker.stopped(layer_index, [tuple(r) for r in rows], stop.tolist())
        return stop

    def spy_mask(confidences, scores, layer_index):
        keep = mask(confidences, scores, layer_index)
        for row in range(len(scores) // 2):
            for image in (0, 1):
                k = 2 * row + image
                tracker.pruned(layer_index, row, image, None if confidences is None else confidences[k], scores[k],
                               keep[k])
        return keep

    ref._match_image_pair, ref._get_early_stopped_image_pairs, ref._get_pruning_mask = spy_match, spy_stop, spy_mask
    try:
        yield tracker.runs
    finally:
        del ref._match_image_pair, ref._get_early_stopped_image_pairs, ref._get_pruning_mask


@contextlib.contextmanager
def kornia_decisions(net):
    """As transformers_decisions, for kornia's LightGlue ``net`` on one pair per forward."""
    tracker = _Tracker()
    forward, check, mask = net.forward, net.check_if_stop, net.get_pruning_mask

    def spy_forward(data, *args, **kwargs):
        k0, k1 = data["image0"]["keypoints"], data["image1"]["keypoints"]
        assert len(k0) == 1, "recording is for single pairs"
        tracker.start([(k0.shape[1], k1.shape[1])])
        return forward(data, *args, **kwargs)

    def spy_check(confidences0, confidences1, layer_index, num_points):
        stop = check(confidences0, confidences1, layer_index, num_points)
        tracker.stopped(layer_index, [(confidences0[0], confidences1[0])], [bool(stop)])
        return stop

    def spy_mask(confidences, scores, layer_index):  # image0, then image1
        keep = mask(confidences, scores, layer_index)
        image = 0 if tracker.entry(tracker.pairs[0], layer_index).dropped is None else 1
        tracker.pruned(layer_index, 0, image, None if confidences is None else confidences[0], scores[0], keep[0])
        return keep

    net.forward, net.check_if_stop, net.get_pruning_mask = spy_forward, spy_check, spy_mask
    try:
        yield tracker.runs
    finally:
        del net.forward, net.check_if_stop, net.get_pruning_mask


@dataclass
class DecisionComparison:
    """Outcome of compare_decisions."""

    diverged: set[int] = field(default_factory=set)  # pairs where a fragile decision went the other way
    fragile: int = 0  # decisions within the tolerance (stop checks + points' prune decisions)
    decisions: int = 0  # decisions compared
    d_confidence: float = 0.0  # largest difference of token confidences seen
    d_matchability: float = 0.0

    def __str__(self) -> str:
        return (f"{self.decisions} decisions, {self.fragile} fragile, diverged pairs {sorted(self.diverged)}; "
                f"d confidence {self.d_confidence:.2g}, d matchability {self.d_matchability:.2g}")


def _stops(unconfident: int, num_points: int, depth_confidence: float) -> bool:
    """The stop rule as our model evaluates it (float32)."""
    ratio = 1.0 - torch.tensor(float(unconfident)) / torch.tensor(num_points)
    return bool(ratio > depth_confidence)


def stop_is_fragile(confidence: torch.Tensor, num_points: int, threshold: float, depth_confidence: float,
                    tol: float) -> bool:
    """A pair stops iff few enough of its points are unconfident (confidence < threshold): could that
    change if each confidence moved by at most tol?"""
    tol = max(tol, 0.0)
    surely, maybe = int((confidence + tol < threshold).sum()), int((confidence - tol < threshold).sum())
    return _stops(surely, num_points, depth_confidence) != _stops(maybe, num_points, depth_confidence)


def compare_decisions(got: Decisions, expected: Decisions, confidence_threshold: Callable[[int], float],
                      depth_confidence: float, width_confidence: float, pairs: dict[int, int] | None = None,
                      floor: float = FLOOR) -> DecisionComparison:
    """Compare two runs' exit and prune decisions, layer by layer and pair by pair (``pairs`` maps a
    pair of ``expected`` to one of ``got``; default: the same index). At each layer the tolerance comes
    from d, the largest difference of that pair's token confidences (resp. matchabilities) there: a stop
    check is fragile if the count of unconfident points could cross the limit, a point's prune decision
    if its confidence or matchability could cross its threshold. Decisions clear of the tolerance must be
    taken identically; a fragile one taken differently makes the pair "diverged": nothing later in it is
    comparable (reported, not asserted: the caller bounds ``fragile``). A run without a decision the
    other took (early exit or pruning off vs on but unable to fire) must have taken the other's
    default: not stopped, nothing dropped; confidences then come from the run that has them."""
    result = DecisionComparison()
    pairs = pairs if pairs is not None else {p: p for p in set(expected) | set(got)}
    for p_exp, p_got in pairs.items():
        mine, theirs = got.get(p_got, {}), expected.get(p_exp, {})
        for layer in sorted(set(mine) | set(theirs)):
            where = f"pair {p_exp}, layer {layer}"
            assert layer in mine and layer in theirs, f"{where}: decided in one run only"
            a, b = mine[layer], theirs[layer]
            assert all(torch.equal(a.index[s], b.index[s]) for s in (0, 1)), f"{where}: other points running"
            threshold = confidence_threshold(layer)
            confidence = b.confidence if b.confidence is not None else a.confidence
            tc = tm = 0.0  # max(tolerance, 0): 0 leaves nothing fragile
            if a.confidence is not None and b.confidence is not None:
                d = max(max_difference(a.confidence[s], b.confidence[s]) for s in (0, 1))
                result.d_confidence = max(result.d_confidence, d)
                tc = max(flip_tolerance(d, floor), 0.0)
            if a.matchability is not None and b.matchability is not None:
                d = max(max_difference(a.matchability[s], b.matchability[s]) for s in (0, 1))
                result.d_matchability = max(result.d_matchability, d)
                tm = max(flip_tolerance(d, floor), 0.0)
            if a.stopped is not None and b.stopped is not None:  # stop iff few unconfident points (< threshold)
                assert a.num_points == b.num_points, f"{where}: stop ratio over {a.num_points} vs {b.num_points}"
                fragile = stop_is_fragile(torch.cat(b.confidence), b.num_points, threshold, depth_confidence, tc)
                result.decisions += 1
                result.fragile += int(fragile)
                if a.stopped != b.stopped:
                    assert fragile, f"{where}: stopped in one run only, clear of the threshold"
                    result.diverged.add(p_exp)
                    break
            else:
                assert not a.stopped and not b.stopped, f"{where}: stopped in the run that cannot exit early"
            if a.stopped or b.stopped:
                continue
            if (a.matchability is None) != (b.matchability is None):  # one cannot prune: nor may the other
                dropped = a.dropped if b.matchability is None else b.dropped
                assert not any(d.any() for d in dropped), f"{where}: pruned in the run that cannot prune"
            elif b.matchability is not None:  # drop iff matchability <= 1 - width and (confident or no exit)
                low = 1 - width_confidence
                for s in (0, 1):
                    m = b.matchability[s]
                    could_drop, could_keep = m - tm <= low, m + tm > low
                    if confidence is not None:
                        could_drop = could_drop & (confidence[s] + tc > threshold)
                        could_keep = could_keep | (confidence[s] - tc <= threshold)
                    fragile = could_drop & could_keep
                    result.decisions += len(m)
                    result.fragile += int(fragile.sum())
                    differ = a.dropped[s] != b.dropped[s]
                    assert not (differ & ~fragile).any(), \
                        f"{where}: image {s} points {b.index[s][differ & ~fragile].tolist()} pruned in one run only"
                    if differ.any():
                        result.diverged.add(p_exp)
                if p_exp in result.diverged:
                    break
    return result


def final_points(decisions: dict[int, LayerDecision], n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a pair's points in its final log assignment: those running at its last decision less
    those dropped there (all points when it took none)."""
    if not decisions:
        return torch.arange(n0), torch.arange(n1)
    last = decisions[max(decisions)]
    if last.dropped is None:
        return last.index
    return last.index[0][~last.dropped[0]], last.index[1][~last.dropped[1]]


def scatter_assignment(la: torch.Tensor, points0: torch.Tensor, points1: torch.Tensor, n0: int,
                       n1: int) -> torch.Tensor:
    """A compacted log assignment (its points first, padding, dustbins last) at full size (n0+1, n1+1),
    -inf for the points not in it."""
    full = torch.full((n0 + 1, n1 + 1), -math.inf, dtype=la.dtype)
    rows, cols = torch.cat([points0, torch.tensor([n0])]), torch.cat([points1, torch.tensor([n1])])
    src_rows = torch.cat([torch.arange(len(points0)), torch.tensor([la.shape[0] - 1])])
    src_cols = torch.cat([torch.arange(len(points1)), torch.tensor([la.shape[1] - 1])])
    full[rows[:, None], cols[None, :]] = la[src_rows[:, None], src_cols[None, :]]
    return full


def assert_same_lightglue_pair(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], threshold: float,
                               la_rtol: float = 1e-4, score_atol: float = FLOOR, max_share: float = MAX_FRAGILE_SHARE,
                               best_share: float = MAX_FRAGILE_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair whose runs took the same exit and prune decisions, each as (matches0, matches1, scores0,
    scores1, log assignment (n0+1, n1+1) at full size, -inf for points not in it): the same points in
    the assignment, which agrees within la_rtol of its largest magnitude; the same matches and best
    candidates of every point (random weights give few mutual matches) up to fragile ones; on the rows /
    columns compared, scores (exp of a log-assignment entry) within what d allows: s (e^d - 1) + score_atol.
    Fragile matched rows may be ``max_share`` of the matches, fragile best candidates ``best_share`` of the
    points. Returns the rows and columns compared."""
    (m0, m1, s0, s1, la), (e0, e1, t0, t1, la_exp) = got, expected
    d = max_difference(la, la_exp)
    finite = torch.isfinite(la_exp)
    scale = la_exp[finite].abs().max().item() if finite.any() else 0.0
    assert d <= la_rtol * scale, f"log assignments differ by {d:.3g} (largest magnitude {scale:.3g})"
    rows, cols = assert_same_pair_matches((m0, m1, la), (e0, e1, la_exp), threshold, max_share)
    for s, t, where in ((s0, t0, rows), (s1, t1, cols)):
        excess = (s[where] - t[where]).abs() - (t[where] * math.expm1(d) + score_atol)
        assert not (excess > 0).any(), f"scores differ by more than the log assignments allow ({excess.max():.3g})"
    alive0, alive1 = finite[:-1, :-1].any(1), finite[:-1, :-1].any(0)
    best = (torch.ones(0, dtype=torch.bool),) * 2
    if alive0.any() and alive1.any():
        sim, sim_exp = la[:-1, :-1][alive0][:, alive1], la_exp[:-1, :-1][alive0][:, alive1]
        tol = flip_tolerance(max_difference(sim, sim_exp))
        best = tuple(assert_same_argmax(sim, sim_exp, tol, dim, best_share) for dim in (1, 0))
    involved = int((~rows & ((m0 >= 0) | (e0 >= 0))).sum())
    print(f"log assignment d {d:.2g} (largest magnitude {scale:.3g}); matches {int((e0 >= 0).sum())}, fragile rows "
          f"{int((~rows).sum())} ({involved} matched) / columns {int((~cols).sum())}; fragile best candidates "
          f"{int((~best[0]).sum())} of {len(best[0])} rows, {int((~best[1]).sum())} of {len(best[1])} columns")
    return rows, cols


def pair_of(out, k: int, n0: int, n1: int) -> tuple[torch.Tensor, ...]:
    """Pair ``k`` of our LightGlueOutput on its own points, as assert_same_lightglue_pair takes it."""
    la = out.log_assignment[k][list(range(n0)) + [-1]][:, list(range(n1)) + [-1]]
    return out.matches0[k, :n0], out.matches1[k, :n1], out.matching_scores0[k, :n0], out.matching_scores1[k, :n1], la


def assert_same_batched_pairs(model, batched: tuple, singles: list[tuple], counts: list[tuple[int, int]],
                              max_fragile: int = 2, **pair_options) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Our batched (output, Decisions) equals each pair run alone (output, Decisions) on that pair's
    own points: the same exit and prune decisions up to fragile ones (at most ``max_fragile`` per pair),
    then the same stop layer, layer counts, pruned sets, and matches (see assert_same_lightglue_pair,
    which gets ``pair_options``). Returns per pair the rows / columns compared (None for a pair where a
    fragile decision went the other way, whose outputs are not comparable)."""
    out, decisions = batched
    config, compared = model.config, []
    for k, ((single, single_decisions), (n0, n1)) in enumerate(zip(singles, counts)):
        cmp = compare_decisions(decisions, single_decisions, model.confidence_threshold, config.depth_confidence,
                                config.width_confidence, pairs={0: k})
        print(f"batched vs alone, pair {k}: {cmp}")
        assert cmp.fragile <= max_fragile, f"pair {k}: {cmp}"
        if cmp.diverged:
            print(f"pair {k}: a fragile decision went the other way ({cmp}): outputs not compared")
            compared.append(None)
            continue
        assert out.stop_layer[k] == single.stop_layer[0]
        assert torch.equal(out.layers0[k, :n0], single.layers0[0, :n0])
        assert torch.equal(out.layers1[k, :n1], single.layers1[0, :n1])
        assert torch.equal(out.pruned0[k, :n0], single.pruned0[0, :n0])
        assert torch.equal(out.pruned1[k, :n1], single.pruned1[0, :n1])
        compared.append(assert_same_lightglue_pair(pair_of(out, k, n0, n1), pair_of(single, 0, n0, n1),
                                                   config.filter_threshold, **pair_options))
    return compared
