"""Class-locked edits (ours, not in Kim & Lee): walk a direction in small steps and, wherever the classifier's margin
for the image's class has come down to a floor, drop the part of a step that would lower it further.

A linear edit ``w + eps * spread * d`` can carry an image across a class boundary even when ``d`` is a
class-specific direction: the generator's samples sit close to those boundaries (median classifier confidence
0.82 on Fashion-MNIST), so a small move flips some of them. Here the shift ``s`` (one W vector added to the chosen
W+ layers, as a linear edit) grows in steps of at most ``step`` spreads. The lock holds the classifier's margin
(the class's logit minus the log-sum-exp of the other logits, on the image as shown) at or above a floor,
min(the image's own margin, FLOOR_MARGIN). Where the margin is above the floor (by FREE_MARGIN) a step goes as
planned; elsewhere, with ``g = d margin / d s``, the step ``h`` becomes

    h - min(0, <h, g>) / |g|^2 * g

so, to first order, the edit no longer lowers the margin, and is left unchanged wherever it does not. The step is
then scaled back to its planned length (at most doubled), so a locked edit moves as far as the linear one,
redirected along the floor's level set rather than shortened. A finite step still loses some margin to curvature:
wherever the margin has fallen below the floor, the first-order move back up to it is added
(at every step, and up to CORRECTIONS times at each returned eps); a code that still lost its class ends at the
furthest point that keeps it between the last step seen to keep it and its end (bisection), so a locked edit never
changes the classifier's label.

Step lengths adapt (per code), as an ODE solver's do: a step of ``step`` spreads is always kept; a longer one
(``step`` x 2, x 4, up to MAX_STEPS_PER_STEP, each starting at a multiple of its own length) is tried only where the
margin is at least HEADROOM above the floor and the locked direction barely turned over the last GROW_AFTER steps,
and kept only where the locked direction at its end still agrees with the one it was taken along (cosine >=
SMOOTH_COS) and the margin stayed above the floor, i.e. where small steps would have walked about the same line; a
refused step is retried at half its length from where it started. Near the floor every step is ``step`` long, as
before. The forward and backward pass at a step's end both checks it and gives the next step's direction, so a walk
costs one pass per step (a refused one wastes a pass), one at the image (shared by both signs), and at each returned
eps only the moves back up to the floor where the margin is below it: 13 to 17 passes for ``eps = 3`` in steps of
0.25, down to 6 where the lock's direction is steady. (Starting with the longest step saved a third more on the
slider, but changed 5 to 7 % more of the picture on the global set: it was left out.) Every multiple of
MAX_STEPS_PER_STEP * ``step`` is a point of the walk whichever eps are asked for, so walking to 2 via 1 gives what
walking straight to 2 gives.

A slider walks the same code along the same direction again and again, a little further or back each move: a
:class:`WalkTrail` keeps one code's walk (its state before every step, while no step was cut short by an eps) and
the points it returned, so the next walk starts from the furthest point a fresh walk to its eps would pass, with
the same state, and takes only the steps beyond it (one pass per move on a dragged slider instead of 6 to 17). It
also keeps its last pass's image (:class:`Rendered`): where the walk ended there, the editor shows that image
instead of rendering the end again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from semdir_edit.models import Classifier, ClassifierEnsemble, Generator

FLOOR_MARGIN = 1.0  # The lock holds the margin at min(the image's own, this): p >= 0.73 for a confident image.
CORRECTIONS = 3     # At most this many moves back up to the floor at each returned eps (none when above it).
MAX_STRETCH = 2.0   # The most a locked step is lengthened back towards its planned length.
DEFAULT_STEP = 0.25  # Spreads per step: at 0.5 class edits at |eps| 3 changed 12 % less of the picture (30 per class).
MAX_STEPS_PER_STEP = 4  # A step grows to at most this many base steps (1 spread by default), where the lock is steady.
SMOOTH_COS = 0.95       # A long step is kept when its locked direction at the end agrees this well with its start.
GROW_AFTER = 2          # Steady steps in a row before a step doubles (after a refused one).
HEADROOM = 0.5          # Margin above the floor a longer step needs: near the floor, steps stay ``step`` long.
MAX_ENDS = 512          # Returned points a WalkTrail remembers (one w vector each).
# A step is redirected only where the margin is less than this above the floor: the lock keeps the class, not the
# margin. At |eps| 3 (100 samples) never (inf) / 1 / 0.5 / 0: class sets change 0.083 / 0.087 / 0.088 / 0.089 of
# the picture, the global set 0.035 / 0.039 / 0.039 / 0.040, the class kept in every edit.
FREE_MARGIN = 0.0


def class_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) logit of ``target`` minus the log-sum-exp of the other logits (> 0 exactly when ``target`` wins)."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).logsumexp(1)
    return own - others


def _probe(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor,
           target: torch.Tensor, trail: WalkTrail | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward pass at ``ws + mask * shift``: the margin (B,), its gradient in the shift (B, w_dim)
    and whether the class still wins (B,). trail: a single code's walk, which keeps what this pass rendered."""
    with torch.enable_grad():
        s = shift.detach().requires_grad_(True)
        code = ws + mask * s[:, None, :]
        image = G.render(code)
        logits, first = C.forward_and_first(image) if isinstance(C, ClassifierEnsemble) else (C(image),) * 2
        logits = logits.float()
        margin = class_margin(logits, target)
        (grad,) = torch.autograd.grad(margin.sum(), s)
    if trail is not None:
        trail.last = Rendered(code.detach(), image.detach(), first.detach())
    return margin.detach(), grad, logits.detach().argmax(1) == target


def _redirect(step: torch.Tensor, grad: torch.Tensor, margin: torch.Tensor, floor: torch.Tensor | None
              ) -> torch.Tensor:
    """The locked step (B, w_dim) for a planned ``step`` where the margin and its gradient are ``margin``, ``grad``.

    Within FREE_MARGIN of ``floor`` (everywhere when ``floor`` is None), the step loses its margin-lowering
    component and is scaled back to its length (the edit still moves as far, redirected along the level set);
    where the margin has fallen below ``floor`` (a finite step's second-order loss), the first-order move back up
    to it is added.
    """
    g2 = grad.square().sum(1).clamp_min(1e-12)
    along = (step * grad).sum(1) / g2
    if floor is not None:   # Well above the floor the step goes as planned.
        along = torch.where(margin >= floor + FREE_MARGIN, torch.zeros_like(along), along)
    h = step - along.clamp(max=0)[:, None] * grad
    # Back to the step's length, but at most doubled: a step almost straight down the gradient has no sideways
    # part worth stretching.
    h = h * (step.norm(dim=1) / h.norm(dim=1).clamp_min(1e-12)).clamp(max=MAX_STRETCH)[:, None]
    if floor is not None:
        h = h + ((floor - margin).clamp(min=0) / g2)[:, None] * grad
    return h


def _locked_step(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor,
                 step: torch.Tensor, target: torch.Tensor, floor: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step (B, w_dim) taken from ``ws + mask * shift`` (:func:`_redirect`), the margin there, and whether the
    class still wins."""
    margin, grad, wins = _probe(G, C, ws, mask, shift, target)
    return _redirect(step, grad, margin, floor), margin, wins


def _last_kept(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, safe: torch.Tensor,
               end: torch.Tensor, lost: torch.Tensor, target: torch.Tensor, halvings: int = 3) -> torch.Tensor:
    """``end`` where the class held, else the furthest point between ``safe`` (kept it) and ``end`` (lost it)
    that keeps it, found by bisection on the line between them (forward passes only)."""
    lo, hi = safe, end
    for _ in range(halvings):
        mid = (lo + hi) / 2
        kept = C(G.render(ws + mask * mid[:, None, :])).argmax(1) == target
        lo = torch.where(kept[:, None], mid, lo)
        hi = torch.where(kept[:, None], hi, mid)
    return torch.where(lost[:, None], lo, end)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def _aligned(t: torch.Tensor, step: float, longest: torch.Tensor) -> torch.Tensor:
    """The longest step (spreads, B) of ``step`` x a power of two, at most ``longest``, that ``t`` is a multiple of:
    steps of one length start on that length's grid, so every multiple of the longest step is a point of the walk
    whichever eps are asked for (walking to 2 via 1 takes the same steps as walking straight to 2)."""
    units = torch.round(t / step).long()
    length = torch.full_like(t, step)
    k = 2
    while k <= MAX_STEPS_PER_STEP:
        fits = (units % k == 0) & (k * step <= longest + 1e-9)
        length = torch.where(fits, torch.full_like(t, k * step), length)
        k *= 2
    return length


@dataclass
class _Stop:
    """A point of one code's walk: its state before the next step, and the furthest end of any step planned before
    it (spreads): a walk to eps >= ``before`` passes through this point with this state."""

    before: float
    state: tuple[torch.Tensor, ...]  # shift, margin, grad, wins, safe, t, longest, calm: each (1, ...)


@dataclass
class Rendered:
    """What a pass rendered: codes (B, num_ws, w_dim), their images and the logits of the lock's first classifier
    (the shared one, which names an image's class), so that whoever shows a walk's end need not render it again."""

    code: torch.Tensor
    image: torch.Tensor
    logits: torch.Tensor


@dataclass
class WalkTrail:
    """One code's class-locked walks along one direction so far, so that the next walk resumes from the furthest
    point that a fresh walk to its eps would pass (with the same state there) instead of starting over: the browser
    editor's slider, where each move walks a little further or back than the last. A resumed walk takes exactly
    the steps a fresh one takes, so it returns the same codes; only the passes already paid for are skipped."""

    start: tuple[torch.Tensor, ...] | None = None          # The pass at the image itself.
    stops: dict[float, list[_Stop]] = field(default_factory=lambda: {1.0: [], -1.0: []})
    # The shift returned for each eps walked to alone (a slider dragged back over the values it passed).
    ends: dict[float, torch.Tensor] = field(default_factory=dict)
    last: Rendered | None = None   # The walk's last pass (often at the code it returned).

    def resume(self, sign: float, goal: float) -> int | None:
        """The index of the furthest recorded point on the way to ``goal``, or None when there is none. The step
        from it is the first one cut short by ``goal`` unless it is the last point (the next point's ``before``
        is past ``goal``), so a walk records points only beyond the last."""
        usable = [j for j, stop in enumerate(self.stops[sign]) if stop.before <= goal + 1e-9]
        return usable[-1] if usable else None


def _snapshot(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.clone() for t in tensors)


@torch.no_grad()
def locked_shift_codes(G: Generator, C: Classifier, ws: torch.Tensor, direction: torch.Tensor,
                       eps: list[float], spread: float | torch.Tensor, layers: range, target: torch.Tensor,
                       step: float = DEFAULT_STEP, trail: WalkTrail | None = None) -> torch.Tensor:
    """Like :func:`~semdir_edit.ops.shift_codes.shift_codes`, but class-locked.

    ws: (B, num_ws, w_dim); direction: (w_dim,) unit vector, or (B, w_dim) one per code; spread: W's spread along
    it (a number, or (B,)); target: (B,) the class each image must keep; step: the shortest step, in spreads.
    Returns (B, E, num_ws, w_dim): for each eps, the codes reached by walking from eps 0 (each sign separately,
    so a traversal strip costs its longest side per sign, not the sum of its points).
    trail: one code's (B = 1) earlier walks with the same arguments but eps (:class:`WalkTrail`); the walk resumes
    from it and extends it.
    """
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    if trail is not None and ws.shape[0] != 1:
        raise ValueError(f"a walk trail follows one code, got {ws.shape[0]}")
    if C.cfg.num_classes < 2:
        raise ValueError("a class lock needs a classifier with at least two classes")
    B, device, dtype = ws.shape[0], ws.device, ws.dtype
    mask = torch.zeros(ws.shape[1], 1, device=device, dtype=dtype)
    mask[list(layers)] = 1.0
    spread = torch.as_tensor(spread, dtype=dtype, device=device)
    unit = (direction.to(ws) * (spread[:, None] if spread.ndim == 1 else spread)).expand(B, ws.shape[2])
    target = target.to(device).long()
    shifts = torch.zeros(B, len(eps), ws.shape[2], device=device, dtype=dtype)
    zero = torch.zeros(B, ws.shape[2], device=device, dtype=dtype)
    start = None if trail is None else trail.start  # The pass at the image itself, shared by both signs.
    for sign in (1.0, -1.0):
        goals = sorted({abs(e) for e in eps if e * sign > 0})
        if not goals:
            continue
        if trail is not None and len(goals) == 1 and sign * goals[0] in trail.ends:
            for j, e in enumerate(eps):
                if e == sign * goals[0]:
                    shifts[:, j] = trail.ends[e]
            continue
        if start is None:
            start = _probe(G, C, ws, mask, zero, target, trail)
            if trail is not None:
                trail.start = _snapshot(*start)
        margin, grad, wins = (x.clone() for x in start)
        floor, had = margin.clamp(max=FLOOR_MARGIN), wins.clone()   # The image's own margin, at most FLOOR_MARGIN.
        goal_t = torch.tensor(goals, device=device, dtype=dtype)
        shift, safe = zero.clone(), zero.clone()   # safe: the furthest point of the walk seen to keep the class.
        t = torch.zeros(B, device=device, dtype=dtype)          # Spreads walked, per code.
        nxt = torch.zeros(B, dtype=torch.long, device=device)    # Index of each code's next goal.
        longest = torch.full_like(t, step)                       # Each code's next step length.
        calm = torch.full_like(nxt, GROW_AFTER)   # Steps kept in a row since the last refused one.
        stops = None if trail is None else trail.stops[sign]     # Recorded while no step is cut short by a goal.
        if stops is not None:
            at = trail.resume(sign, goals[0])
            if at is None:
                stops.append(_Stop(0.0, _snapshot(shift, margin, grad, wins, safe, t, longest, calm)))
            else:
                shift, margin, grad, wins, safe, t, longest, calm = _snapshot(*stops[at].state)
                if at < len(stops) - 1:
                    stops = None   # Its next step is cut short by this goal: nothing new to record.
        while True:
            walking = nxt < len(goals)
            arrived = (walking & ((t - goal_t[nxt.clamp(max=len(goals) - 1)]).abs() < 1e-9)).nonzero()[:, 0]
            if len(arrived):
                end = _finish(G, C, ws[arrived], mask, shift[arrived], margin[arrived], grad[arrived],
                              wins[arrived], floor[arrived], had[arrived], safe[arrived], target[arrived], trail)
                reached = goal_t[nxt[arrived]]
                for j, e in enumerate(eps):
                    here = reached == abs(e) if e * sign > 0 else None
                    if here is not None and bool(here.any()):
                        shifts[arrived[here], j] = end[here]
                if trail is not None and len(goals) == 1 and len(trail.ends) < MAX_ENDS:
                    trail.ends[sign * goals[0]] = end.clone()
                nxt[arrived] += 1
                continue
            if not bool(walking.any()):
                break
            idx = walking.nonzero()[:, 0]
            goal = goal_t[nxt[idx]]
            length = torch.minimum(longest[idx], goal - t[idx])
            if stops is not None:
                planned_end = float(t[0] + longest[0])
                if float(length[0]) < float(longest[0]) - 1e-9:
                    stops = None   # Cut short by this walk's goal: a walk further would not take this step.
            planned = (sign * length)[:, None] * unit[idx]
            h = _redirect(planned, grad[idx], margin[idx], floor[idx])
            cand = shift[idx] + h
            m2, g2, w2 = _probe(G, C, ws[idx], mask, cand, target[idx], trail)
            smooth = _cosine(h, _redirect(planned, g2, m2, floor[idx])) >= SMOOTH_COS
            keep = (length <= step + 1e-9) | (smooth & (m2 >= floor[idx]))
            acc = idx[keep]
            shift[acc], margin[acc], grad[acc], wins[acc] = cand[keep], m2[keep], g2[keep], w2[keep]
            t[acc] = t[acc] + length[keep]
            safe[acc] = torch.where(w2[keep][:, None], cand[keep], safe[acc])
            # Longer steps only where the direction held still for GROW_AFTER steps and the margin has room above
            # the floor (a refused step there costs a wasted pass); a refused step is retried at half its length.
            calm[acc] = torch.where(smooth[keep], calm[acc] + 1, 0)
            grow = smooth[keep] & (calm[acc] >= GROW_AFTER)
            roomy = smooth[keep] & (m2[keep] >= floor[acc] + HEADROOM)
            longest[acc] = _aligned(t[acc], step, torch.where(roomy, torch.where(grow, 2, 1) * length[keep], step))
            rej = idx[~keep]
            longest[rej] = (length[~keep] / 2).clamp(min=step)
            calm[rej] = 0
            if stops is not None:
                before = max(stops[-1].before, planned_end)
                stops.append(_Stop(before, _snapshot(shift, margin, grad, wins, safe, t, longest, calm)))
    return ws[:, None] + mask * shifts[:, :, None, :]


def _finish(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, end: torch.Tensor,
            margin: torch.Tensor, grad: torch.Tensor, wins: torch.Tensor, floor: torch.Tensor, had: torch.Tensor,
            safe: torch.Tensor, target: torch.Tensor, trail: WalkTrail | None = None) -> torch.Tensor:
    """The returned point for codes that reached an eps: moved back up to the floor (up to CORRECTIONS times),
    for this output only, and at the furthest point that keeps the class where it was lost. trail: as _probe's."""
    end, margin, grad, wins = end.clone(), margin.clone(), grad.clone(), wins.clone()
    for _ in range(CORRECTIONS):
        below = (margin < floor).nonzero()[:, 0]
        if not len(below):
            break
        end[below] = end[below] + _redirect(torch.zeros_like(end[below]), grad[below], margin[below], floor[below])
        margin[below], grad[below], wins[below] = _probe(G, C, ws[below], mask, end[below], target[below], trail)
    lost = had & ~wins
    if bool(lost.any()):
        end = _last_kept(G, C, ws, mask, safe, end, lost, target)
    return end


ARRIVE_MARGIN = 2.0  # Target margin at which a to:<class> walk stops: the classifier then gives it p >= 0.88.
# Spreads walked per unit of a to:<class> eps: classes lie about 10 spreads apart in W (the walks from the example
# photos arrived after 6 to 12), so eps 3 may walk up to 12; a walk stops on arrival, so it is never longer than it
# takes. TO_STEP: spreads per step (one generator + classifier forward pass each).
TO_SCALE = 4.0
TO_STEP = 0.5
# Each to:<class> step heads half along the linear classifier's margin and half towards the target class's mean
# code: the margin alone arrived 82.5 % of the time at eps 3 (200 samples; Dress and Shirt lie past Trouser and
# Coat along it), the mean alone 91.5 % (the pullovers' mean code renders a coat), the half-and-half 97 %, for the
# same change of the picture (0.21). scripts/compare_to.py measures them side by side.
TO_CENTROID = 0.5


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _toward_step(G: Generator, C: Classifier, ws: torch.Tensor, mask: torch.Tensor, shift: torch.Tensor,
                 length: float, target: torch.Tensor, w_cov: torch.Tensor, sign: float, probe: torch.Tensor,
                 probe_bias: torch.Tensor, avoid: torch.Tensor | None, centroids: torch.Tensor | None,
                 share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of ``length`` spreads up (sign +1) or down (-1) the target's margin, and the image's margin before it.

    The step follows the margin of ``probe`` (N, w_dim), a linear classifier of W labelled by our classifier (the
    bank's class boundaries): a direction along which the generator's samples really change class; with
    ``centroids`` (N, w_dim), the classes' mean codes, it heads ``share`` of the way towards the target's mean
    instead, which the margin alone misses where a class lies beyond another (a class never drawn has a zero mean:
    the margin alone there). The image classifier's own
    gradient in W was tried first and stalls: on the example sneaker it found edits of 1 % of the pixels that moved
    neither the picture nor its class towards a boot.
    """
    w = (ws * mask).sum(1) / mask.sum() + shift                         # The edited layers' mean code (B, w_dim).
    logits = w @ probe.T + probe_bias
    others = logits.scatter(1, target[:, None], float("-inf")).softmax(1)  # (B, N): weights of the other classes.
    d = _unit(probe[target] - others @ probe)                           # d(linear margin)/dw.
    if centroids is not None and share > 0:
        mean = centroids[target]
        drawn = (mean.abs().sum(1, keepdim=True) > 0).to(w.dtype)
        d = _unit((1 - share * drawn) * d + share * drawn * _unit(mean - w))
    if avoid is not None:                                               # Orthonormal (w_dim, K) columns to avoid.
        d = _unit(d - (d @ avoid) @ avoid.T)
    spread = ((d @ w_cov) * d).sum(1).clamp_min(1e-12).sqrt()
    margin = class_margin(C(G.render(ws + mask * shift[:, None, :])).float(), target)
    return sign * length * spread[:, None] * d, margin


@torch.no_grad()
def toward_class_codes(G: Generator, C: Classifier, ws: torch.Tensor, eps: list[float], w_cov: torch.Tensor,
                       layers: range, target: torch.Tensor, probe: torch.Tensor, probe_bias: torch.Tensor,
                       step: float = DEFAULT_STEP, arrive_margin: float = ARRIVE_MARGIN,
                       avoid: torch.Tensor | None = None, centroids: torch.Tensor | None = None,
                       centroid_share: float = TO_CENTROID) -> torch.Tensor:
    """``to:<class>`` as a walk (ours): at most ``|eps|`` spreads towards the ``target`` class (away for eps < 0).

    A straight line along one boundary normal overshoots into a third class or stops short (the classes' regions in
    W are not half-spaces). Here each step of at most ``step`` spreads climbs the target's margin under the linear
    classifier of W ``probe`` / ``probe_bias`` (re-aimed at every step, from wherever the walk is), and a code stops
    as soon as the image classifier's margin for the target, on the image as shown, reaches ``arrive_margin``: the
    image changes no more than it takes to become the target. Away from the target (eps < 0), it stops once the
    margin is down to ``-arrive_margin`` (an image that is plainly not the target does not move). One generator +
    classifier forward pass per step.
    ``avoid``: orthonormal (w_dim, K) directions the walk stays orthogonal to (``--keep global``); ``centroids``:
    the classes' mean codes (N, w_dim), which the steps head for ``centroid_share`` of the way (see
    :func:`_toward_step`). Returns
    (B, E, num_ws, w_dim) like ``shift_codes``.
    """
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    mask = torch.zeros(ws.shape[1], 1, device=ws.device, dtype=ws.dtype)
    mask[list(layers)] = 1.0
    w_cov, probe, probe_bias = w_cov.to(ws), probe.to(ws), probe_bias.to(ws)
    centroids = None if centroids is None else centroids.to(ws)
    target = target.to(ws.device).long()
    out: list[torch.Tensor | None] = [ws if e == 0 else None for e in eps]
    for sign in (1.0, -1.0):
        wanted = sorted((i for i, e in enumerate(eps) if e * sign > 0), key=lambda i: abs(eps[i]))
        shift = torch.zeros(ws.shape[0], ws.shape[2], device=ws.device, dtype=ws.dtype)
        moving = torch.ones(ws.shape[0], 1, device=ws.device, dtype=ws.dtype)
        walked = 0.0
        for i in wanted:
            while walked < abs(eps[i]) - 1e-9 and bool(moving.any()):
                h = min(step, abs(eps[i]) - walked)
                delta, margin = _toward_step(G, C, ws, mask, shift, h, target, w_cov, sign, probe, probe_bias, avoid,
                                             centroids, centroid_share)
                # Arrived codes stay where they are; walking away stops once the classifier is as sure that it is
                # not the target (else a code already far from it walks on out of the generator's range).
                arrived = margin >= arrive_margin if sign > 0 else margin <= -arrive_margin
                moving = moving * (~arrived)[:, None].to(ws.dtype)
                shift = shift + moving * delta
                walked += h
            out[i] = ws + mask * shift[:, None, :]
    return torch.stack(out, 1)  # type: ignore[arg-type] — every eps was filled above.
