"""Sparse integer refinement of the perturbation grid on the white-box classifier (ONNX Runtime).

The payload, not the attack, limits a reversible adversarial example: every non-zero grid cell has
to be coded and hidden. So instead of a dense ±eps pattern, protect grows a *sparse* one. Each step
asks the margin-gradient model (``models/gradient_<classifier>.onnx``, see ``models/gradient.py``) for
``d margin / d pixel`` at the current adversarial view, sums it over each grid cell, and moves only
the ``fraction`` of free (non-ROI) cells with the largest gradient by ``step`` levels against it,
clipped to ``±eps``. An image leaves the loop as soon as the classifier's margin for its clean
prediction is below ``-margin`` (misclassified with room to spare for the RDH's ±1 changes), or after
``steps`` steps. Levels are integers throughout, so what is optimised is exactly what gets applied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import diversity
from .ort import ModelsError, file_sha256, normalize, session

SIZE = 224


@dataclass(frozen=True)
class RefineSettings:
    """Defaults chosen on the cxr3 val split (270 images, white-box ASR on the RAE / PSNR / payload,
    ``python benchmarks/probe_refine.py --all ...``, then with the segmenter's own mask as the ROI,
    ``--roi-threshold 0.5``): fraction 0.04 and margin 2: 92.5 % / 38.6 dB /
    0.237 bpp; 0.05 and 2: 92.9 % / 38.3 / 0.249; 0.05 and 1: 93.3 % / 39.7 / 0.221 (the default).
    In runs on 90 of them (a script not kept in the repository), 80 steps instead of 40, per-pixel cells (factor 1), step 8,
    momentum, or starting from the generator's output did not do better. Rerun on all 270 with the
    default ROI, 5 % lung probability (91.4 % / 39.4 dB / 0.226 bpp, payload outside the ROI on 85.6 %): fraction 0.1 is
    faster (154 vs 198 ms per image) but reaches 90.2 % / 38.5 / 0.260, 79.3 %; doubling the
    fraction every 10 (5) steps for the images not yet fooled: 89.0 % / 39.7 / 0.219, 81.1 %
    (89.0 % / 39.4 / 0.232, 78.9 %); 10 more steps at fraction 0.1 after the 40: 91.0 % / 39.6 /
    0.220, 84.4 % (of the 40 images not wrong by the margin after 40 steps it brings 3 there)."""

    steps: int = 40
    step: int = 4  # levels per move (1/255 units); clipped to eps
    fraction: float = 0.05  # of all grid cells moved per step
    margin: float = 1.0  # logit margin the classifier must be wrong by
    factor: int = 2  # grid cell side on the 224x224 view (112x112 grid)
    robust: bool = False  # also fool the classifier on a half-size-and-back copy (EOT; ~3.5x the time)
    # the flattest free cells are left alone: a step there kills the hiding's best capacity (prediction
    # errors near 0), so the payload stops fitting outside the lungs. cxr3/test, 270 images, with the
    # lungs kept to one level (benchmarks/probe_lungs.py with this field set): 0 -> white-box ASR 84.8 %,
    # 29 images coarsened; 0.1 -> 86.4 %, 11; 0.2 -> 86.8 %, 5; 0.3 -> 79.8 %, 6
    spare_flat: float = 0.1
    # (step, margin): an image whose margin is still above ``margin`` after ``step`` steps is out of
    # reach and stops there (its grid so far is kept). cxr3/val, 270 images, the default with the
    # pattern (probe_lungs.py's 10-, 20- and 40-step runs compared by a script not kept): margin < -1 on 81.5 -> 81.1 % of the
    # images, mean steps 11.1 -> 6.8 (the images that end unfooled took 40 each); () never gives up
    give_up: tuple = ((10, 1.0), (20, 0.0))


@dataclass
class Refined:
    grids: np.ndarray  # (N, g, g) int64 levels in -eps..eps, zero on ROI cells
    margins: np.ndarray  # (N,) final margin of the clean prediction (< 0: misclassified; an ensemble: the largest)
    steps: np.ndarray  # (N,) gradient steps taken
    labels: np.ndarray  # (N,) the (first) classifier's clean prediction


def resize_half(images: np.ndarray) -> np.ndarray:
    """Each (H, W) image resized to half size and back (PIL bilinear), uint8 or float32."""
    from PIL import Image as PILImage

    out = np.empty_like(images)
    for k, x in enumerate(images):
        h, w = x.shape
        im = PILImage.fromarray(x if x.dtype == np.uint8 else x.astype(np.float32))
        out[k] = np.asarray(im.resize((w // 2, h // 2), PILImage.BILINEAR).resize((w, h), PILImage.BILINEAR))
    return out


def unit(grad: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``grad`` (..., H, W) scaled to unit L2 norm per image, and zeroed where ``keep`` (...) is False."""
    norm = np.sqrt((grad.astype(np.float64) ** 2).sum(axis=(-2, -1), keepdims=True)) + 1e-30
    return grad / norm * keep[..., None, None]


def cell_texture(views: np.ndarray, factor: int) -> np.ndarray:
    """(N, 224, 224) uint8 → (N, g, g) mean absolute Laplacian of each ``factor``-pixel cell."""
    x = views.astype(np.float32)
    lap = np.zeros_like(x)
    lap[:, 1:-1, 1:-1] = np.abs(4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    n, h, w = x.shape
    return lap.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def spare_flat(views: np.ndarray, free: np.ndarray, fraction: float) -> np.ndarray:
    """``free`` (N, g, g) without each image's ``fraction`` flattest free cells (:func:`cell_texture`)."""
    if fraction <= 0:
        return free
    tex = cell_texture(views, SIZE // free.shape[-1])
    out = free.copy()
    for k in range(len(free)):
        if free[k].any():
            out[k] &= tex[k] > np.quantile(tex[k][free[k]], fraction)
    return out


def upsample_cells(grids: np.ndarray, factor: int) -> np.ndarray:
    """(N, g, g) → (N, g*factor, g*factor) by repetition (the kernels' integer rule)."""
    return np.repeat(np.repeat(grids, factor, axis=-2), factor, axis=-1)


class Refiner:
    """The margin-gradient sessions of one or more classifiers and the refinement loop.

    With several classifiers (an ensemble of white boxes, for transfer to models it has not seen)
    an image is done when every one of them is wrong by the margin; each step follows the sum of
    their unit-normalised gradients, over the classifiers not yet fooled.

    With ``robust`` and several classifiers the refinement is staged. The first classifier (the
    target) is refined alone, on both views, for ``steps``; then all of them, from there, for
    ``steps // 2``, the others on the image as it is (the resized view only for the target). An
    image keeps the second stage's grid unless it lost the target that the first stage had fooled
    (misclassified in both views). Joint refinement of everything on both views spent its steps on
    the other models' resized views: on 90 val images with the pruned+CBAM model added, 63.5 % of
    the target fooled after resizing, against 71.8 % staged (71.8 % for the target alone), with
    91.7 % (joint 98.8 %) of the added model fooled, in 705 instead of 877 ms per image.

    Parameters
    ----------
    paths : Path or list of Path
        ``gradient_<architecture>.onnx`` files; each card (``.json``) names the classifier file and
        its SHA-256, which is checked, since the gradient model reads that file's weights.
    """

    def __init__(self, paths: Path | str | list, device: str = "auto", settings: RefineSettings = RefineSettings()):
        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        self.cards, self.sessions = [], []
        self.files: dict[str, str] = {}  # every file the refinement reads -> its SHA-256 (provenance)
        for path in paths:
            if not path.is_file():
                raise ModelsError(f"{path}: gradient model not found (--models DIR)")
            card = json.loads(path.with_suffix(".json").read_text())
            self.files[path.name] = file_sha256(path)
            if card.get("weights_file"):  # it reads another file's weights: that file must be the one it was made for
                weights = path.parent / card["weights_file"]
                if not weights.is_file() or file_sha256(weights) != card["weights_sha256"]:
                    raise ValueError(f"{path}: reads its weights from {weights.name}, which is missing or not the file it was exported against")
                self.files[weights.name] = card["weights_sha256"]
            self.cards.append(card)
            self.sessions.append(session(path, device))
        self.settings = settings

    @property
    def architectures(self) -> list[str]:
        return [c["architecture"] for c in self.cards]

    def margins(self, views: np.ndarray, labels: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per classifier (first axis; the first ``count``, default all): margins (M, N), labels
        (M, N; the clean prediction where ``labels < 0``) and pixel gradients (M, N, 224, 224) of
        the margins."""
        x = normalize(views)
        out_m, out_l, out_g = [], [], []
        for sess, lab in zip(self.sessions[:count], labels):
            logits, grad = sess.run(None, {"image": x, "label": lab.astype(np.int64)})
            lab = np.where(lab < 0, logits.argmax(1), lab)
            own = np.take_along_axis(logits, lab[:, None], 1)[:, 0]
            np.put_along_axis(logits, lab[:, None], -np.inf, 1)
            out_m.append(own - logits.max(1))
            out_l.append(lab)
            out_g.append(grad[:, 0])
        return np.stack(out_m), np.stack(out_l), np.stack(out_g)

    def _direction(self, m: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """One gradient per image: the unit-normalised sum over the classifiers not yet fooled."""
        if len(grad) == 1:
            return grad[0]
        return unit(grad, m > -self.settings.margin).sum(0)

    def refine(self, views: np.ndarray, free: np.ndarray, eps: int, grids: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> Refined:
        """Refine ``grids`` (default: zero) for the (N, 224, 224) uint8 ``views``.

        ``free`` (N, g, g) bool marks the cells that may change (outside the ROI); ``g`` divides 224.
        ``labels`` (M, N): each classifier's clean prediction, where the caller already has it (the
        refinement of a head start otherwise runs every classifier on the clean views to get it).
        """
        s = self.settings
        n, g = free.shape[0], free.shape[-1]
        if views.shape != (n, SIZE, SIZE) or views.dtype != np.uint8 or SIZE % g or free.shape != (n, g, g):
            raise ValueError(f"expected (N, {SIZE}, {SIZE}) uint8 views and (N, g, g) free cells with g dividing {SIZE}, "
                             f"got {views.shape} {views.dtype} and {free.shape}")
        if labels is not None and labels.shape != (len(self.sessions), n):
            raise ValueError(f"expected ({len(self.sessions)}, {n}) clean labels, got {labels.shape}")
        if not (s.robust and len(self.sessions) > 1):
            return self._refine(views, free, eps, grids, len(self.sessions), s.steps, labels)[0]
        first, _ = self._refine(views, free, eps, grids, 1, s.steps, labels)  # its margins are the target's
        both, kept = self._refine(views, free, eps, first.grids, len(self.sessions), s.steps // 2, labels)
        keep = (kept < 0) | (first.margins >= 0)
        pick = lambda a, b: np.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
        # a reverted image reports the target's margin: the others' on its grid were not the goal
        return Refined(pick(both.grids, first.grids), pick(both.margins, first.margins), first.steps + both.steps, first.labels)

    def _refine(self, views: np.ndarray, free: np.ndarray, eps: int, grids: np.ndarray | None, count: int,
                max_steps: int, clean: np.ndarray | None = None) -> tuple[Refined, np.ndarray]:
        """The loop, on the first ``count`` classifiers (the resized view, if ``robust``, on the first
        only); also returns the first classifier's margin (its worse view) on each final grid."""
        s = self.settings
        n, g = free.shape[0], free.shape[-1]
        f = SIZE // g
        grids = np.zeros((n, g, g), np.int64) if grids is None else np.where(free, grids, 0).astype(np.int64)
        labels = np.full((count, n), -1, np.int64)
        if grids.any():  # a head start: the margins are still those of the *clean* prediction
            labels = clean[:count].astype(np.int64) if clean is not None else self.margins(views, labels, count)[1]
        margins, target = np.zeros(n), np.zeros(n)
        steps = np.zeros(n, np.int64)
        active = np.arange(n)
        step, k = min(s.step, eps), max(1, int(round(s.fraction * g * g)))
        base = views.astype(np.int64)
        for t in range(max_steps + 1):
            adv = np.clip(base[active] + upsample_cells(grids[active], f), 0, 255).astype(np.uint8)
            m, labels[:, active], grad = self.margins(adv, labels[:, active], count)
            grad = self._direction(m, grad)
            target[active] = m[0]
            if s.robust:  # expectation over {identity, resize}: the resize is linear and ~symmetric, so
                # its transpose is approximated by itself. Each view's gradient is unit-normalised and
                # dropped once that view is fooled: the blurred view's gradient is the weaker one, and
                # left unscaled it was drowned by the identity's (val: 65.0 -> 69.3 % ASR after resizing)
                m_r, _, grad_r = self.margins(resize_half(adv), labels[:1, active], 1)
                grad_r = resize_half(grad_r[0].astype(np.float32))
                grad = unit(grad, m.max(0) > -s.margin) + unit(grad_r, m_r[0] > -s.margin)
                target[active] = np.maximum(m[0], m_r[0])  # the target's worse view
                m = np.concatenate([m, m_r])
            m = m.max(0)  # done when every classifier (and view) is wrong by the margin
            margins[active] = m
            going = m > -s.margin
            for at, beyond in s.give_up:
                if t == at:
                    going &= m <= beyond
            active, grad = active[going], grad[going]
            if t == max_steps or active.size == 0:
                break
            steps[active] += 1
            cell = grad.reshape(len(active), g, f, g, f).sum(axis=(2, 4))
            cur = grids[active]
            moved = np.clip(cur - step * np.sign(cell).astype(np.int64), -eps, eps)
            score = np.where(free[active] & (moved != cur), np.abs(cell), -1.0).reshape(len(active), -1)
            top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            pick = np.zeros_like(score, dtype=bool)
            np.put_along_axis(pick, top, True, 1)
            pick &= score > 0
            grids[active] = np.where(pick.reshape(cur.shape), moved, cur)
        return Refined(grids, margins, steps, labels[0]), target


@dataclass(frozen=True)
class TransferSettings:
    """The transfer stage that runs before the refinement (``medrae protect --transfer-steps N``;
    opt-in: it nearly doubles the payload, README "Transfer to unseen models").

    Chosen on 90 cxr3 val images against the *shipped* classifiers the stage never uses (VGG16-small,
    its pruned+CBAM variant; the zoo's held-out targets were not looked at), under the default's
    bounds (white-box ASR >= 90 %, PSNR >= 34 dB, SSIM >= 0.90): eps 4 with the texture rule is the
    strongest that keeps SSIM >= 0.90 (0.901; VGG16-small 6.1 %, pruned 12.2 %, against 2.4 / 7.3 %
    without the stage); eps 6: 0.866 (7.3 / 24.4 %); eps 8: 0.848 (11.0 / 30.5 %); eps 3 without the
    rule 0.898 (6.1 / 12.2 %); 5 steps instead of 10 at eps 4: 0.889 (6.1 / 17.1 %).

    Dense sign steps on a coarse grid (``factor``-pixel cells) against an ensemble of surrogates
    trained independently of the white box (the zoo's ``s_*`` members: other widths, input sizes,
    seeds), each step following the sum of their unit-normalised margin gradients, with ``|cell|
    <= eps`` levels. A coarse pattern is cheap to code and hide, and a perturbation that fools several
    unrelated models is more likely to fool one more; the sparse refinement then makes sure the
    white box is fooled. Measured in README "Transfer to unseen models"."""

    steps: int = 10
    eps: int = 4  # levels; the refinement may go on to protect's eps
    factor: int = 4
    # a cell's bound scales with the local contrast (std of the view over its 3x3-cell neighbourhood,
    # in levels) up to ``eps`` from this std on: SSIM punishes any pattern in flat areas (air, smooth
    # soft tissue), where it is also the most visible; 0: the full bound everywhere
    texture: float = 8.0
    # with a key: each cell starts at a random fraction (up to this) of its bound, drawn from the key
    # and the image, so that running the public stage again on the file (evaluation/adaptive.py
    # ``replay``) gives back less of what it added (and it fools fewer: docs/STRENGTH.md); 0: zero
    keyed_start: float = 0.0
    # the share of steps whose gradient goes through a randomly drawn resize/shift pipeline
    # (toolkit/diversity.py; drawn from the key where there is one); 0: the view as it is
    diversity: float = 0.0
    # pipelines drawn once per image and taken in turn (0: a new draw each step); 1: the whole stage
    # attacks the surrogates through one key-drawn pipeline. Neither helped on val (docs/STRENGTH.md)
    pipelines: int = 0

    def bounds(self, views: np.ndarray, eps: int) -> np.ndarray:
        """Per-cell bounds (N, g, g) in levels for (N, 224, 224) views."""
        n, f = len(views), self.factor
        g = SIZE // f
        top = float(min(self.eps, eps))
        if not self.texture:
            return np.full((n, g, g), top)
        x = views.astype(np.float64).reshape(n, g, f, g, f)
        s1, s2 = x.sum(axis=(2, 4)), (x * x).sum(axis=(2, 4))
        pad = lambda a: np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")  # noqa: E731
        box = lambda a: sum(pad(a)[:, i : i + g, j : j + g] for i in range(3) for j in range(3))  # noqa: E731
        cnt = 9.0 * f * f
        std = np.sqrt(np.maximum(box(s2) / cnt - (box(s1) / cnt) ** 2, 0))
        return np.floor(np.clip(top * std / self.texture, 0, top))


class TransferStage:
    """The surrogates' margin-gradient sessions (a :class:`Refiner` holds and checks them) and the
    dense coarse-grid attack of :class:`TransferSettings`."""

    def __init__(self, paths: list, device: str = "auto", settings: TransferSettings = TransferSettings()):
        self.gradients = Refiner(paths, device)
        self.settings = settings
        self.files = self.gradients.files

    @property
    def architectures(self) -> list[str]:
        return [c.get("zoo_member", {}).get("name", c["architecture"]) for c in self.gradients.cards]

    def run(self, views: np.ndarray, free: np.ndarray, eps: int, labels: np.ndarray | None = None,
            start: np.ndarray | None = None, rngs: list | None = None) -> np.ndarray:
        """Integer grids (N, g, g), ``g = 224 / factor``, zero where ``free`` (N, g, g) is False.
        ``labels`` (N,): the class each view is pushed away from (default: each surrogate's own
        prediction on the clean view). ``start`` (N, g, g) in [-1, 1]: each cell's starting point
        as a fraction of its bound (default: zero). ``rngs``: one generator per view for the
        drawn pipelines of ``settings.diversity`` (default: :func:`diversity.rngs` without a key)."""
        s = self.settings
        n, g = free.shape[0], free.shape[-1]
        if g * s.factor != SIZE:
            raise ValueError(f"free cells must be ({n}, {SIZE // s.factor}, {SIZE // s.factor}) for factor {s.factor}, got {free.shape}")
        bound = s.bounds(views, eps)
        theta = np.zeros((n, g, g), np.float64) if start is None else np.clip(start, -1, 1) * bound * free
        alpha = 2.5 * float(min(s.eps, eps)) / max(1, s.steps)
        base = views.astype(np.float64)
        labels = np.full((len(self.gradients.sessions), n), -1, np.int64) if labels is None else \
            np.broadcast_to(np.asarray(labels, np.int64), (len(self.gradients.sessions), n)).copy()
        if s.diversity and rngs is None:
            rngs = diversity.rngs(views, None)
        identity = (np.eye(SIZE, dtype=np.float32),) * 2
        drawn = lambda r: diversity.draw(r) if r.random() < s.diversity else identity  # noqa: E731
        fixed = [[drawn(r) for _ in range(s.pipelines)] for r in rngs] if s.diversity and s.pipelines else None
        for t in range(s.steps):
            adv = np.clip(base + upsample_cells(np.round(theta), s.factor), 0, 255).astype(np.float32)
            if s.diversity:
                mats = [f[t % s.pipelines] for f in fixed] if fixed else [drawn(r) for r in rngs]
                _, labels, grad = self.gradients.margins(diversity.apply(adv, mats), labels)
                grad = diversity.pull_back(grad, mats)
            else:
                _, labels, grad = self.gradients.margins(adv, labels)
            direction = unit(grad, np.ones(grad.shape[:2], bool)).sum(0)
            cell = direction.reshape(n, g, s.factor, g, s.factor).sum(axis=(2, 4))
            theta = np.clip(theta - alpha * np.sign(cell), -bound, bound) * free
        return np.round(theta).astype(np.int64)
