"""The per-file work of a batch and its report: collecting (input, output) pairs, decoding,
protecting a chunk (segment, perturb, code, embed, check the encoded file restores, write),
restoring, verifying, and ``medrae info``.

Both schedulers run exactly this code: :mod:`medrae.toolkit.batch` (this machine's worker
processes) and :mod:`medrae.toolkit.cluster` (Ray actors), so a file is the same bytes either way
(the encryption nonce aside).
"""
from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from medrae import kernels

from . import headers, metrics
from .imageio import Image, ImageError, OutputExists, decode_bytes, encode_image, output_name
from .storage import STORE
from .protect import (RetryWithoutHead, capacity_reason, network_view, plan_perturbation, protect_with_fallback, rdh_change, roi_change,
                      uncertain_reason)
from .display import level_size
from .settings import RETIRED_LEVELS, STRENGTHS, ProtectSettings
from .provenance import medrae_version


class UsageError(Exception):
    """Bad command-line usage (exit code 2), e.g. an output inside the input tree."""


@dataclass
class FileResult:
    """One file's outcome; ``reason`` is set for ``failed`` and ``skipped``."""

    input: str
    output: Optional[str]
    status: str  # protected | restored | identical | differs | skipped | failed
    reason: Optional[str] = None
    shape: Optional[list[int]] = None
    payload_bits: Optional[int] = None
    codec: Optional[str] = None
    rdh_passes: Optional[int] = None
    rdh_max_change: Optional[int] = None  # levels (of x >> s for 16-bit) any pixel moved for the payload
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    roi_fraction: Optional[float] = None
    coarsened: int = 0  # times the grid was subsampled 2x so that the payload fits
    roi_frozen: Optional[bool] = None  # protect: the hiding left the ROI bit-exact
    hiding: Optional[str] = None  # protect: where the payload went (toolkit.protect.HIDING_MODES)
    roi_max_change: Optional[int] = None  # protect: largest change the hiding made in the ROI and its guard, levels (measured on the file)
    hiding_band: Optional[int] = None  # protect: blocks around them that the hiding moved by one level at most (0: no band, it did not fit)
    transfer_pattern: Optional[bool] = None  # protect: the transfer pattern is in the file (False: refined again without it, which fit)
    roi_flags: Optional[list] = None  # protect: what segmentation quality control found (toolkit.qc; [] = nothing)
    white_box_margin: Optional[float] = None  # after refinement, on the 224x224 view; < 0: the classifier is fooled
    refine_steps: Optional[int] = None
    seconds: float = 0.0
    stages: dict = field(default_factory=dict)
    node: Optional[str] = None  # --ray: the node (host/node id) whose actor did the work

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "differs")


@dataclass
class BatchReport:
    command: str
    results: list[FileResult]
    seconds: float
    providers: list[str] = field(default_factory=list)
    mode: Optional[str] = None  # protect: where the perturbation came from (refine / generator)
    roi: Optional[str] = None  # protect: the rule that made the untouched region
    eps: Optional[int] = None  # protect: perturbation bound, 1/255 units
    strength: Optional[str] = None  # protect: the operating point (toolkit.settings.STRENGTHS), "(custom)" where options changed it
    models: dict = field(default_factory=dict)  # protect: model file -> SHA-256, all that shaped the perturbation
    cluster: Optional[dict] = None  # --ray: address, actors, nodes (toolkit.cluster)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    def totals(self) -> dict:
        done = [r for r in self.results if r.status in ("protected", "restored", "identical")]
        mean = lambda k: float(np.mean([getattr(r, k) for r in done if getattr(r, k) is not None])) if any(getattr(r, k) is not None for r in done) else None  # noqa: E731
        stages: dict[str, float] = {}
        for r in done:
            for k, v in r.stages.items():
                stages[k] = stages.get(k, 0.0) + v
        return {
            "files": len(self.results),
            **{s: self.count(s) for s in ("protected", "restored", "identical", "differs", "skipped", "failed")},
            "mean_psnr": mean("psnr"),
            "mean_ssim": mean("ssim"),
            "mean_payload_bits": mean("payload_bits"),
            "coarsened": sum(r.coarsened > 0 for r in self.results),
            "rdh_in_roi": sum(r.roi_frozen is False for r in self.results if r.status == "protected"),
            "no_hiding_band": sum(r.hiding_band == 0 for r in self.results if r.status == "protected"),
            "without_pattern": sum(r.transfer_pattern is False for r in self.results if r.status == "protected"),
            "roi_uncertain": sum(bool(r.roi_flags) for r in self.results),
            "roi_max_change": max((r.roi_max_change for r in done if r.roi_max_change is not None), default=None),
            "white_box_fooled": self._fooled(done),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(len(done) / self.seconds, 2) if self.seconds > 0 and done else 0.0,
            "stage_seconds_per_image": {k: v / len(done) for k, v in stages.items()} if done else {},
            **({"per_node": self.per_node()} if self.cluster else {}),
        }

    def per_node(self) -> dict:
        """--ray: per node, the files it finished and its throughput over the command's wall time
        (files / s; the nodes' figures add up to the command's)."""
        out: dict[str, dict] = {}
        for r in self.results:
            if r.node and r.status in ("protected", "restored", "identical"):
                d = out.setdefault(r.node, {"files": 0, "busy_seconds": 0.0})
                d["files"] += 1
                d["busy_seconds"] += r.seconds
        for d in out.values():
            d["images_per_second"] = round(d["files"] / self.seconds, 2) if self.seconds > 0 else 0.0
            d["busy_seconds"] = round(d["busy_seconds"], 3)
        return out

    @staticmethod
    def _fooled(done: list[FileResult]) -> Optional[float]:
        """Fraction of refined files whose white-box margin ended below zero (None: not refined)."""
        margins = [r.white_box_margin for r in done if r.white_box_margin is not None]
        return float(np.mean(np.array(margins) < 0)) if margins else None

    def to_json(self) -> dict:
        return {"command": self.command, "medrae_version": medrae_version(), "mode": self.mode, "roi": self.roi, "strength": self.strength, "eps": self.eps,
                "models": self.models, "providers": self.providers, **({"cluster": self.cluster} if self.cluster else {}),
                "totals": self.totals(), "files": [asdict(r) for r in self.results]}


# ----------------------------------------------------------------------------------------------
# collecting the work
# ----------------------------------------------------------------------------------------------


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def pair_paths(src: Path, dst: Path, map_name: bool = True) -> list[tuple[Path, Path]]:
    """(input, output) pairs: a file → one pair; a directory → every image below it, mirrored."""
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    if src.resolve() == dst.resolve():
        raise UsageError(f"{dst}: output is the input; medrae never overwrites an input")
    if src.is_file():
        # OUTPUT is a directory when it is one, or has no suffix while the input has one
        if dst.is_dir() or (not dst.suffix and src.suffix):
            dst = dst / (output_name(Path(src.name)) if map_name else src.name)
        return [(src, dst)]
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"{dst}: input is a directory, so the output must be a directory")
    if _inside(dst, src):
        raise UsageError(f"{dst}: output directory is inside the input directory {src}")
    return [(p, dst / (output_name(p.relative_to(src)) if map_name else p.relative_to(src))) for p in image_files(src)]


def image_files(root: Path) -> list[Path]:
    """Image files below ``root`` in sorted order (hidden files, e.g. temporaries, left out)."""
    return STORE.images(root)


# ----------------------------------------------------------------------------------------------
# per-file work (runs in worker processes)
# ----------------------------------------------------------------------------------------------


def _load(src: str) -> tuple[Optional[Image], Optional[np.ndarray], Optional[str], float]:
    """Decode an input to protect; refuse one that already carries a medrae payload."""
    t = time.perf_counter()
    try:
        image = STORE.read(src)
    except ImageError as exc:
        return None, None, exc.reason, time.perf_counter() - t
    if _carries_payload(image):
        return None, None, ("already protected by medrae (medrae info shows its payload): restore it first; protecting it "
                            "again would nest a second payload"), time.perf_counter() - t
    return image, network_view(image), None, time.perf_counter() - t


def _carries_payload(image: Image) -> bool:
    """True only for a complete medrae payload (side information and container magic both read):
    an ordinary image fails at the side information's signature, in ~0.05 ms."""
    try:
        kernels.inspect_array(image.pixels, image.kernel_ceiling)
    except kernels.MedraeError:
        return False
    return True


def _quality(image: Image, other: np.ndarray, with_ssim: bool) -> tuple[float, Optional[float]]:
    psnr = metrics.psnr(image.pixels, other, data_range=image.ceiling)
    ssim = metrics.ssim(image.pixels, other, data_range=image.ceiling) if with_ssim and min(image.pixels.shape) >= 11 else None
    return psnr, ssim


RETRY = "retry"  # _fit's status for a payload that fits only coarser with the pattern or transfer head: refine again without it


def _fit(res: FileResult, image: Image, roi: np.ndarray, grid: np.ndarray, eps: int, key: Optional[bytes], settings: ProtectSettings,
         guard: Optional[np.ndarray], pattern, refined_again: bool):
    """Plan, code and embed one image (in memory, unchecked); fills ``res``'s hiding fields.
    Returns ``(marked, info, plan)``, or None with ``res.status`` :data:`RETRY` (the payload fits
    only coarser with the ``pattern``) or ``res.reason`` set (it does not fit)."""
    try:
        marked, info, plan, res.coarsened, res.hiding = protect_with_fallback(
            image, roi, grid, eps, key, settings.method, settings.codec, check=False, max_rdh_change=settings.max_rdh_change,
            max_roi_change=settings.max_roi_change, guard=guard, pattern=pattern,
            head_retry=not refined_again and (pattern is not None or settings.transfer_head), strength_id=settings.strength_id)
    except RetryWithoutHead:
        res.status = RETRY
        return None
    except kernels.CapacityError as exc:
        res.roi_fraction = float(plan_perturbation(image, roi, grid, eps).roi.mean())
        res.reason = capacity_reason(exc)
        return None
    res.transfer_pattern = True if pattern is not None else False if refined_again else None
    res.roi_frozen = res.hiding == "frozen"
    res.hiding_band = plan.band if res.hiding != "anywhere" else None
    res.roi_fraction = float(plan.roi.mean())
    return marked, info, plan


def _record(res: FileResult, image: Image, marked: np.ndarray, info, plan, with_ssim: bool) -> None:
    """``res`` of a protected image whose ``marked`` pixels were checked to restore."""
    res.status, res.payload_bits, res.codec, res.rdh_passes = "protected", info.payload_bits, info.codec, info.passes
    res.rdh_max_change = rdh_change(info)
    res.roi_max_change = roi_change(image, marked, plan)
    res.psnr, res.ssim = _quality(image, marked, with_ssim)


def _finish_protect(src: str, dst: str, image: Image, roi: np.ndarray, grid: np.ndarray, eps: int, key: Optional[bytes],
                    settings: ProtectSettings, overwrite: bool, guard: Optional[np.ndarray] = None, pattern=None,
                    refined_again: bool = False) -> FileResult:
    """Plan, code, embed, check the encoded file restores, write. Runs in a worker. With a
    ``pattern`` whose payload fits only on a coarser grid, nothing is written and the status is
    :data:`RETRY` (the main process refines the view again without the pattern)."""
    stages: dict[str, float] = {}
    t = time.perf_counter()
    res = FileResult(src, dst, "failed", shape=list(image.pixels.shape))
    try:
        fitted = _fit(res, image, roi, grid, eps, key, settings, guard, pattern, refined_again)  # checked below, on the file bytes
        if fitted is None:
            return res
        marked, info, plan = fitted
        stages["code_embed"] = time.perf_counter() - t
        t1 = time.perf_counter()
        data = encode_image(image, marked)
        back = decode_bytes(data, image, dst)  # exactly what goes to disk
        try:
            restored, _ = restore_image(back, key)
        except kernels.MedraeError as exc:
            restored, res.reason = None, f"internal error: the encoded file does not restore ({exc}); not written"
        if restored is None or not np.array_equal(restored, image.pixels):
            res.reason = res.reason or "internal error: the encoded file does not restore to the original; not written"
            return res
        stages["verify"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        STORE.write(dst, data, overwrite)
        stages["write"] = time.perf_counter() - t2
        _record(res, image, back.pixels, info, plan, settings.with_ssim)
    except OutputExists as exc:  # a concurrent command finished it first: its file stands
        res.status, res.reason = "skipped", exc.reason
    except (ImageError, kernels.MedraeError, ValueError) as exc:
        res.reason = getattr(exc, "reason", None) or str(exc)
    finally:
        res.stages.update(stages)
    return res


def protect_image(protector, image: Image, key: Optional[bytes], settings: ProtectSettings,
                  name: str = "<memory>") -> tuple[FileResult, Optional[np.ndarray]]:
    """Protect one image in memory, as a batch protects each file (the same steps, the file
    written aside): ``(result, marked pixels)``; the pixels are None when ``result`` failed (its
    ``reason`` says why). The marked pixels are checked to restore to ``image``'s before they are
    returned."""
    t = time.perf_counter()
    res = FileResult(name, None, "failed", shape=list(image.pixels.shape))
    if _carries_payload(image):
        res.reason = "already protected by medrae: restore it first; protecting it again would nest a second payload"
        return res, None
    view = network_view(image)
    a = protector.analyse(view[None], key=key)
    res.roi_flags = a.assessments[0].flags
    if a.skip[0]:
        res.reason = uncertain_reason(a.assessments[0])
        return res, None
    refined = protector.refiner is not None
    margin, steps = (float(a.margins[0]), int(a.steps[0])) if refined else (None, None)
    res.stages["segment_perturb"] = time.perf_counter() - t
    t = time.perf_counter()
    fitted = _fit(res, image, a.rois[0], a.grids[0], protector.eps, key, settings, a.guards[0], a.pattern(0), False)
    if fitted is None and res.status == RETRY:
        again = protector.refine_without_pattern(view[None], a.rois[0][None])
        margin, steps = float(again.margins[0]), (steps or 0) + int(again.steps[0])
        res.status = "failed"
        fitted = _fit(res, image, a.rois[0], again.grids[0], protector.eps, key, settings, a.guards[0], None, True)
    res.white_box_margin, res.refine_steps = margin, steps
    if fitted is None:
        return res, None
    marked, info, plan = fitted
    if not np.array_equal(kernels.restore_array(marked, key, image.kernel_ceiling), image.pixels):
        res.reason = "internal error: the protected pixels do not restore to the original"
        return res, None
    _record(res, image, marked, info, plan, settings.with_ssim)
    res.stages["code_embed_verify"] = time.perf_counter() - t
    res.seconds = sum(res.stages.values())
    return res, marked


def restore_image(image: Image, key: Optional[bytes], allow_keyless: bool = False) -> tuple[np.ndarray, bytes]:
    """The original pixels of a protected image and its payload's metadata record, once both the
    pixels and (DICOM) the header are authenticated; raises the kernels' errors, and
    :class:`~medrae.toolkit.headers.HeaderChangedError` for an edited DICOM header."""
    original, rec = kernels.restore_with_metadata(image.pixels, key, image.kernel_ceiling, allow_keyless)
    headers.check(image, rec)
    return original, rec


def _restore_core(src: str, key: Optional[bytes], allow_keyless: bool = False) -> tuple[FileResult, Optional[Image], Optional[np.ndarray], bytes]:
    """Read and restore one protected file in memory: (result, protected image, original pixels,
    metadata record). With a ``key``, a keyless file fails unless ``allow_keyless``."""
    t = time.perf_counter()
    res = FileResult(src, None, "failed")
    try:
        image = STORE.read(src)
        res.shape = list(image.pixels.shape)
        t1 = time.perf_counter()
        original, rec = restore_image(image, key, allow_keyless)
        res.stages = {"decode": t1 - t, "extract_restore": time.perf_counter() - t1}
        res.status = "restored"
        res.psnr = metrics.psnr(original, image.pixels, data_range=image.ceiling)
        return res, image, original, rec
    except ImageError as exc:
        res.reason = exc.reason
    except kernels.NotProtectedError as exc:
        res.reason = f"not a medrae-protected image ({exc})"
    except kernels.KeylessError as exc:
        res.reason = f"not authenticated: {exc}"
    except kernels.KeyMismatchError as exc:
        res.reason = f"wrong or missing key: {exc}"
    except headers.HeaderChangedError as exc:
        res.reason = f"tampered: {exc}"
    except kernels.PayloadError as exc:
        res.reason = f"corrupt or tampered: {exc}"
    return res, None, None, b""


def _restore_one(src: str, dst: str, key: Optional[bytes], overwrite: bool, allow_keyless: bool = False) -> FileResult:
    """Restore one file and write it (checked to read back identically). Runs in a worker."""
    res, image, original, _ = _restore_core(src, key, allow_keyless)
    res.output = dst
    if original is not None:
        t = time.perf_counter()
        try:
            data = encode_image(image, original)
            if not np.array_equal(decode_bytes(data, image, dst).pixels, original):
                raise ImageError(dst, "internal error: encoded output does not read back identically; not written")
            STORE.write(dst, data, overwrite)
            res.stages["write"] = time.perf_counter() - t
        except OutputExists as exc:
            res.status, res.reason = "skipped", exc.reason
        except ImageError as exc:
            res.status, res.reason = "failed", exc.reason
    res.seconds = sum(res.stages.values())
    return res


def _verify_one(original: str, protected: str, key: Optional[bytes], allow_keyless: bool = False) -> FileResult:
    """Restore ``protected`` in memory and compare with ``original`` bit for bit. Runs in a worker."""
    res, _, restored, rec = _restore_core(protected, key, allow_keyless)
    res.input, res.output = original, protected
    if restored is None:
        return res
    try:
        ref = STORE.read(original)
    except ImageError as exc:
        res.status, res.reason = "failed", exc.reason
        return res
    same = ref.pixels.shape == restored.shape and ref.pixels.dtype == restored.dtype and np.array_equal(ref.pixels, restored)
    header = headers.same_header(ref, rec) if same else None
    res.status = "identical" if same and header is None else "differs"
    if not same:
        res.reason = "restored pixels differ from the original"
    elif header:
        res.reason = header
    res.seconds = sum(res.stages.values())
    return res


class _Inline(Executor):
    """``Executor`` that runs each call at once (``workers=1``)."""

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # surfaced by f.result()
            f.set_exception(exc)
        return f

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def describe(protector) -> dict:
    """A protector's provenance for a report: the providers its sessions got, mode, ROI rule, eps, model files."""
    return {"providers": list(protector.seg.get_providers()), "mode": protector.mode, "roi": protector.roi_rule,
            "eps": protector.eps, "strength": getattr(protector, "strength", None), "models": dict(protector.model_files)}


def _protect_report(command: str, results: list[FileResult], seconds: float, about: dict) -> BatchReport:
    """A protect batch's report; ``about``: :func:`describe` of its protector (empty: nothing was protected)."""
    return BatchReport(command, results, seconds, about.get("providers", []), about.get("mode"), about.get("roi"), about.get("eps"),
                       about.get("strength"), about.get("models", {}))


def protect_chunk(protector, chunk: list[tuple[str, str]], key: Optional[bytes], settings: ProtectSettings,
                  overwrite: bool) -> list[FileResult]:
    """Protect one chunk of (input, output) pairs in this process, as the single-machine batch
    protects each of its chunks (the same code: what a Ray actor runs, so the files are equal)."""
    results: list[FileResult] = []
    retry: list = []
    pool = _Inline()
    _collect(_submit_chunk(protector, pool, chunk, key, settings, overwrite, results.append), results.append, retry)
    while retry:
        jobs, retry = _refine_again(protector, pool, retry), []
        _collect(jobs, results.append, retry)
    return results


def _submit_chunk(protector, pool: Executor, chunk: list, key: Optional[bytes], settings: ProtectSettings, overwrite: bool,
                  done: Callable[[FileResult], None]) -> list:
    """Decode a chunk in ``pool``, segment and perturb it here (one batch), submit each file's
    coding, embedding, check and write to ``pool``; returns the jobs for :func:`_collect`. A file
    whose output appeared since the batch was listed (a retried chunk, a concurrent command) is
    skipped without work."""
    fresh = []
    for s, d in chunk:
        if not overwrite and STORE.exists(d):
            done(FileResult(str(s), str(d), "skipped", "output exists (written since this batch was listed: a concurrent command, "
                                                       "or an earlier attempt at this chunk by a worker that died)"))
        else:
            fresh.append((s, d))
    loaded = list(pool.map(_load, [str(s) for s, _ in fresh]))
    ok = [(pair, item) for pair, item in zip(fresh, loaded) if item[0] is not None]
    for (s, d), (_, _, reason, _) in zip(fresh, loaded):
        if reason is not None:
            done(FileResult(str(s), str(d), "failed", reason))
    if not ok:
        return []
    t = time.perf_counter()
    a = protector.analyse(np.stack([item[1] for _, item in ok]), key=key)
    infer = (time.perf_counter() - t) / len(ok)
    refined = protector.refiner is not None
    jobs = []
    for k, (((s, d), item), roi, grid, wb_margin, n_steps, guard, assessment, skip) in enumerate(zip(
            ok, a.rois, a.grids, a.margins, a.steps, a.guards, a.assessments, a.skip)):
        if skip:  # --on-uncertain-roi skip: nothing is written
            done(FileResult(str(s), str(d), "failed", uncertain_reason(assessment), roi_flags=assessment.flags))
            continue
        args = (str(s), str(d), item[0], roi, grid, protector.eps, key, settings, overwrite, guard)
        jobs.append(_Job(item[3], infer, (float(wb_margin), int(n_steps)) if refined else (None, None), assessment.flags,
                         pool.submit(_finish_protect, *args, a.pattern(k)), item[1], args))
    return jobs


def verify_pairs(original: Path, protected: Path) -> list[tuple[Path, Path]]:
    """(original, protected) pairs: two files, or every image below ``original`` beside the
    protected file its name maps to."""
    if not protected.exists():
        raise UsageError(f"{protected}: no such file or directory")
    if original.is_file() and protected.is_file():
        return [(original, protected)]
    if original.is_dir() and protected.is_dir():
        return [(o, protected / output_name(o.relative_to(original))) for o in image_files(original)]
    raise UsageError(f"{original} and {protected} must both be files or both be directories")


def _recorder(n: int, on_start: Callable[[int], None],
              on_result: Callable[[FileResult], None]) -> tuple[list[FileResult], Callable[[FileResult], None]]:
    """A batch of ``n`` files starts: ``(results, done)``; ``done`` records a result and reports it."""
    on_start(n)
    results: list[FileResult] = []

    def done(r: FileResult) -> None:
        results.append(r)
        on_result(r)

    return results, done


def _start_verify(pairs: list[tuple[Path, Path]], on_start: Callable[[int], None],
                  on_result: Callable[[FileResult], None]) -> tuple[list[FileResult], Callable[[FileResult], None], list[tuple[Path, Path]]]:
    """:func:`_start` for verify: a pair whose protected file is missing has failed already."""
    results, done = _recorder(len(pairs), on_start, on_result)
    todo = []
    for o, p in pairs:
        if STORE.exists(p):
            todo.append((o, p))
        else:
            done(FileResult(str(o), str(p), "failed", "protected file is missing"))
    return results, done, todo


def _start(pairs: list[tuple[Path, Path]], overwrite: bool, on_start: Callable[[int], None],
           on_result: Callable[[FileResult], None]) -> tuple[list[FileResult], Callable[[FileResult], None], list[tuple[Path, Path]]]:
    """A batch's bookkeeping: ``(results, done, todo)``; ``done`` records a result and reports it,
    and the pairs whose output exists are already done (skipped) unless ``overwrite``."""
    results, done = _recorder(len(pairs), on_start, on_result)
    todo = []
    for s, d in pairs:
        if not overwrite and STORE.exists(d):
            done(FileResult(str(s), str(d), "skipped", "output exists (finished earlier; --overwrite to redo)"))
        else:
            todo.append((s, d))
    return results, done, todo


@dataclass
class _Job:
    """One file's work in flight: its timings so far, and what refining it again needs."""

    decode: float
    infer: float
    white_box: tuple  # (margin, steps) after refinement, or (None, None)
    flags: list
    future: object
    view: np.ndarray
    args: tuple  # _finish_protect's arguments, the pattern aside


def _collect(jobs: list, done: Callable[[FileResult], None], retry: list) -> None:
    """Wait for ``jobs``; report each result, or append the job to ``retry`` (:data:`RETRY`)."""
    for job in jobs:
        r = job.future.result()
        if r.status == RETRY:
            retry.append(job)
        else:
            _done(job, r, done)


def _refine_again(protector, pool: Executor, retry: list) -> list:
    """Refine the views of ``retry`` again without the pattern, here (the networks run in this
    process; one batch: refining them a chunk's one or two at a time cost protect 10 % of its
    speed), and submit the fitting of that grid; returns the jobs."""
    t = time.perf_counter()
    r = protector.refine_without_pattern(np.stack([job.view for job in retry]), np.stack([job.args[3] for job in retry]))
    infer = (time.perf_counter() - t) / len(retry)
    for j, job in enumerate(retry):
        job.infer += infer
        job.white_box = (float(r.margins[j]), int(job.white_box[1] or 0) + int(r.steps[j]))
        job.future = pool.submit(_finish_protect, *job.args[:4], r.grids[j], *job.args[5:], None, True)
    return retry


def _done(job: _Job, r: FileResult, done: Callable[[FileResult], None]) -> None:
    r.white_box_margin, r.refine_steps, r.roi_flags = job.white_box[0], job.white_box[1], job.flags
    r.stages = {"decode": job.decode, "segment_perturb": job.infer, **r.stages}
    r.seconds = sum(r.stages.values())
    done(r)


def info(path: Path) -> dict:
    """What a protected file carries (no key needed); raises ImageError or kernels errors."""
    image = STORE.read(path)
    d = {"file": str(path), "kind": image.kind, **kernels.inspect_array(image.pixels, image.kernel_ceiling)}
    # the level protect recorded in the payload's public header (the pattern's placement stays secret)
    named = next((n for n, s in STRENGTHS.items() if s.ident == d["level"]), None) or RETIRED_LEVELS.get(d["level"])
    d["strength"] = named or f"custom (eps {int(round(d['eps'] / level_size(image)))})"
    d["authenticity"] = ("encrypted: only the key's holder could have made it" if d["encrypted"] else
                         "keyless: anyone with medrae could have made it (restore and verify refuse it with a key unless --allow-keyless)")
    return d


def info_entry(path: Path) -> dict:
    """:func:`info`, never raising: ``status`` (``protected``, ``not protected`` or ``failed``)
    first, then :func:`info`'s fields, or ``file`` and, for a failure, ``reason``."""
    try:
        return {"status": "protected", **info(path)}
    except kernels.NotProtectedError:
        return {"status": "not protected", "file": str(path)}
    except ImageError as exc:
        return {"status": "failed", "file": str(path), "reason": exc.reason}
    except kernels.MedraeError as exc:
        return {"status": "failed", "file": str(path), "reason": f"damaged medrae payload ({exc})"}


def info_tree(root: Path) -> list[dict]:
    """:func:`info_entry` for every image below ``root``."""
    return [info_entry(path) for path in image_files(root)]
