"""``medrae evaluate DATASET --report DIR``: every method through one harness, the paper's tables.

For each method and eps, over the images the white-box classifier gets right: ASR on the 8-bit
file a third party gets (encoded as PNG and decoded again), PSNR and SSIM (data range 255, C1 =
6.5025, C2 = 58.5225), the largest and mean change inside the true lung mask, payload bits per
pixel, seconds per image, transfer ASR on every other shipped classifier (each over the images it
gets right), and for reversible methods the fraction that fit and the fraction restored bit-exact.
An image whose payload does not fit cannot be published reversibly: a reversible method leaves it
unchanged, so it counts as not fooled.

Methods: ``ours_ae`` / ``ours_rae`` (the shipped ONNX pipeline, the same code as ``medrae protect``:
sparse gradient refinement on the white-box classifier), ``ours_rae_transfer`` (``--transfer-steps
10``: the transfer stage on the zoo surrogates first), ``ours_rae_transfer8`` (``--transfer-eps 8``:
the stronger, more visible stage), ``ours_gen_ae`` / ``ours_gen_rae`` (the
NROI-AdvGAN generator alone, ``medrae protect --refine-steps 0``), ``ours_rae_robust`` (``medrae
protect --robust``), ``ours_rae_ensemble`` (``--white-box resnet18,vgg16_small``: its transfer
column for vgg16_small is then not transfer), ``ours_rae_defended`` (``--white-box
resnet18,vgg16_small_cbam_pruned``: a data owner who includes the known defended model; its column
for that model is white-box), ``ours_rae_robust_defended`` (both: ``--robust --white-box
resnet18,vgg16_small_cbam_pruned``), ``ours_rae_convex`` (``--roi-convex``: each lung's convex hull), ``pgd_defended`` (PGD crafted on the defended model itself, the usual
white-box test of a defense; its resnet18 ASR is then transfer), ``ours_rae_noregion`` (an empty ROI: the whole image may change, Table 5), ``csm_gan`` / ``csm_gan_rdh``
(a generator trained with ``--loss csm --no-roi``, when ``models/generator_csm.onnx`` exists), ``fgsm``, ``bim``, ``pgd``
(10 steps of 1/255, random start), ``cw`` (L2, eq. 4-5), ``mi_di_ti`` (momentum + input diversity +
translation invariance: the usual recipe for transfer to unseen models), ``liu_rae`` (PGD, then the whole
perturbation embedded with the same codec + RDH), ``rit_rae`` (Yin et al.: reversible image
transformation of the original into its FGSM example, auxiliary data embedded, ``medrae.evaluation.rit``), ``paper_rae`` (the ``--arch paper`` generator +
RLE + histogram shifting, when ``models/generator_paper.onnx`` exists). Attacks need PyTorch (the
``train`` extra); they run on a torch rebuild of the shipped ONNX classifier (checked equal).

``--transfer`` adds Table 8, the transfer matrix (:mod:`medrae.evaluation.transfer`): every method's saved
files scored on the zoo's held-out targets, as the file is and after JPEG 90 / 75, beside a floor of
uniform ±eps noise on the whole image.
"""
from __future__ import annotations

import html
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from medrae import kernels

from medrae.toolkit.datasets import load_split
from medrae.toolkit.imageio import Image
from medrae.toolkit.metrics import psnr, ssim
from medrae.toolkit.ort import file_sha256, session
from medrae.toolkit.protect import MODELS_DIR, Fitted, Protector, fit_analysed, normalize, plan_perturbation
from medrae.toolkit.provenance import medrae_version
from medrae.toolkit.refine import TransferSettings
from .transfer import jpeg  # the attacker's JPEG re-save, shared with the transfer matrix

ATTACK_METHODS = ("fgsm", "bim", "pgd", "cw", "mladv", "stabilized", "mi_di_ti")  # models.attacks, run in PyTorch
AE_METHODS = ("ours_ae", "ours_gen_ae") + ATTACK_METHODS + ("csm_gan", "pgd_defended")
RAE_METHODS = ("ours_rae", "ours_rae_nopattern", "ours_rae_transfer", "ours_rae_transfer8", "ours_rae_robust", "ours_rae_ensemble", "ours_rae_defended", "ours_rae_robust_defended", "ours_rae_convex", "ours_gen_rae", "liu_rae", "rit_rae", "paper_rae", "mladv_rdh", "stabilized_rdh", "csm_gan_rdh")
# the default set (issue 5's, about 25 minutes on 2 cores for the cxr3 test split); "all" adds
# the other published attacks and any attack made reversible
DEFAULT_METHODS = ("ours_ae", "fgsm", "bim", "pgd", "cw", "ours_rae", "ours_gen_rae", "liu_rae", "rit_rae", "paper_rae", "ours_rae_noregion")
REUSES = {"liu_rae": "pgd", "rit_rae": "fgsm"}  # the attack each reversible baseline starts from
ALL_METHODS = AE_METHODS + RAE_METHODS + ("ours_rae_noregion", "pgd_rdh", "fgsm_rdh", "bim_rdh", "cw_rdh", "mi_di_ti_rdh")
WHITE_BOX = "classifier_resnet18"
ENSEMBLE = ("resnet18", "vgg16_small")  # ours_rae_ensemble's white boxes (medrae protect --white-box resnet18,vgg16_small)
DEFENDED = "vgg16_small_cbam_pruned"  # the pruning + attention target
WITH_DEFENDED = ("resnet18", DEFENDED)  # ours_rae_defended's white boxes
# methods that run protect with other options: (configuration name, Protector keyword arguments)
VARIANTS = {
    "ours_rae_nopattern": ("nopattern", {"pattern": 0}),  # medrae protect --pattern none (the default before the transfer pattern)
    "ours_rae_transfer": ("transfer", {"transfer_steps": TransferSettings().steps}),  # medrae protect --transfer-steps 10
    "ours_rae_transfer8": ("transfer8", {"transfer_settings": TransferSettings(eps=8, texture=0.0)}),  # ... --transfer-eps 8
    "ours_gen_ae": ("generator", {"refine_steps": 0}),
    "ours_gen_rae": ("generator", {"refine_steps": 0}),
    "ours_rae_robust": ("robust", {"robust": True}),
    "ours_rae_ensemble": ("ensemble", {"gradient": [f"gradient_{n}.onnx" for n in ENSEMBLE]}),
    "ours_rae_defended": ("defended", {"gradient": [f"gradient_{n}.onnx" for n in WITH_DEFENDED]}),
    "ours_rae_convex": ("convex", {"roi_convex": True}),
    "ours_rae_robust_defended": ("robust_defended", {"robust": True, "gradient": [f"gradient_{n}.onnx" for n in WITH_DEFENDED]}),
}
ON_DEFENDED = {"pgd_defended": "pgd"}  # attacks crafted on the defended classifier instead of WHITE_BOX

# Published numbers (reference paper, eps = 8/255, ResNet50 target, 3-class chest X-rays); only
# the figures given to us are filled in, the rest stay None rather than guessed.
PUBLISHED = {
    ("paper_rae", 8): {"asr": 0.8927, "psnr": 29.54, "ssim": 0.7922, "seconds_per_image": 1.891},
}


def _resize_half(x: np.ndarray) -> np.ndarray:
    from PIL import Image as PILImage

    h, w = x.shape
    small = PILImage.fromarray(x).resize((w // 2, h // 2), PILImage.BILINEAR)
    return np.asarray(small.resize((w, h), PILImage.BILINEAR))


def _median3(x: np.ndarray) -> np.ndarray:
    from PIL import Image as PILImage, ImageFilter

    return np.asarray(PILImage.fromarray(x).filter(ImageFilter.MedianFilter(3)))


def _gauss1(x: np.ndarray) -> np.ndarray:
    """Gaussian blur, sigma = 1 (separable, 7 taps, edges reflected)."""
    t = np.arange(-3, 4)
    g = np.exp(-(t**2) / 2.0)
    g /= g.sum()
    p = np.pad(x.astype(np.float64), 3, mode="reflect")
    rows = sum(g[k] * p[:, k : k + x.shape[1]] for k in range(7))
    out = sum(g[k] * rows[k : k + x.shape[0], :] for k in range(7))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# What an unauthorised party might do to an image before its model sees it (issue: --conditions)
CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg90": jpeg(90),
    "jpeg75": jpeg(75),
    "resize0.5": _resize_half,
    "median3": _median3,
    "gauss1": _gauss1,
    "resize0.5+jpeg75": lambda x: jpeg(75)(_resize_half(x)),
}


@dataclass
class Output:
    """What one method produced for a batch: the 8-bit images a third party gets, and extras."""

    images: np.ndarray  # uint8 (N, H, W)
    payload_bits: Optional[np.ndarray] = None  # reversible methods; NaN where it did not fit
    restored: Optional[np.ndarray] = None  # bool, reversible methods


def _png_roundtrip(images: np.ndarray) -> np.ndarray:
    """The pixels of each image after saving it as an 8-bit PNG and reading it back."""
    from PIL import Image as PILImage

    out = np.empty_like(images)
    for k, x in enumerate(images):
        buf = io.BytesIO()
        PILImage.fromarray(x).save(buf, format="PNG")
        buf.seek(0)
        with PILImage.open(buf) as im:
            out[k] = np.asarray(im)
    return out


class Harness:
    """Loads the models once; :meth:`run` returns one method's outputs for a batch at one eps."""

    def __init__(self, models: Path, key: bytes, cw_steps: int = 20):
        self.models, self.key, self.cw_steps = models, key, cw_steps
        self._torch: dict[str, object] = {}
        self.protector = Protector(models)
        self._variants: dict[str, Protector] = {}  # the other protect configurations, loaded when first run
        paper, csm = models / "generator_paper.onnx", models / "generator_csm.onnx"
        # the seed generators alone (refine_steps=0): left at the default, protect would refine on the
        # white-box classifier's gradient and the generator would never run
        self.paper = Protector(models, generator=paper.name, refine_steps=0) if paper.exists() else None
        self.csm = Protector(models, generator=csm.name, refine_steps=0) if csm.exists() else None

    def torch_model(self, name: str = WHITE_BOX):
        if name not in self._torch:
            from medrae.models.from_onnx import load_classifier

            self._torch[name] = load_classifier(self.models / f"{name}.onnx")
        return self._torch[name]

    def available(self, method: str) -> Optional[str]:
        """None if ``method`` can run here, else the reason it cannot."""
        if method == "paper_rae" and self.paper is None:
            return "models/generator_paper.onnx not shipped (train with --arch advgan_paper --loss paper and export)"
        if method in ("csm_gan", "csm_gan_rdh") and self.csm is None:
            return "models/generator_csm.onnx not shipped (train with --loss csm --no-roi and export)"
        gradients = VARIANTS[method][1].get("gradient", []) if method in VARIANTS else []
        missing = [g.removeprefix("gradient_").removesuffix(".onnx") for g in gradients if not (self.models / g).exists()]
        if missing:
            return f"no gradient model for {', '.join(missing)} (medrae export gradient ...)"
        if method in ON_DEFENDED and not (self.models / f"classifier_{DEFENDED}.onnx").exists():
            return f"models/classifier_{DEFENDED}.onnx not shipped"
        if self.base_attack(method):
            try:
                import torch  # noqa: F401
            except ModuleNotFoundError:
                return "needs PyTorch (pip install -e '.[train]')"
        return None

    def _attack(self, name: str, x: np.ndarray, y: np.ndarray, eps: int, target: str = WHITE_BOX) -> np.ndarray:
        import torch

        from medrae.models.attacks import ATTACKS

        opts = {"steps": self.cw_steps} if name == "cw" else {}
        attack = ATTACKS[name](self.torch_model(target), eps=eps, **opts)
        adv = attack(torch.from_numpy(x[:, None].astype(np.float32)), torch.from_numpy(y.astype(np.int64)))
        return np.clip(np.round(adv[:, 0].numpy()), 0, 255).astype(np.uint8)

    @staticmethod
    def base_attack(method: str) -> Optional[str]:
        """The PyTorch attack ``method`` runs or starts from (None for the generator methods)."""
        if method in ATTACK_METHODS:
            return method
        if method in ON_DEFENDED:
            return ON_DEFENDED[method]
        if method in REUSES:
            return REUSES[method]
        if method.endswith("_rdh") and method[:-4] in ATTACK_METHODS:
            return method[:-4]
        return None

    def _attack_cached(self, name: str, x: np.ndarray, y: np.ndarray, eps: int, cache: dict, start: int,
                       fresh: bool = False) -> np.ndarray:
        """``name``'s adversarial batch, shared between methods per (eps, batch); ``fresh``: computed
        again (the attack's own row, so that its time per image is its own)."""
        if fresh or (name, eps, start) not in cache:
            cache[(name, eps, start)] = self._attack(name, x, y, eps)
        return cache[(name, eps, start)]

    def _embed(self, x: np.ndarray, adv: np.ndarray, eps: int) -> Output:
        out, bits, restored = adv.copy(), np.full(len(x), np.nan), np.zeros(len(x), bool)
        for k in range(len(x)):
            try:  # restored and compared just below, as the measurement
                marked, info = kernels.protect_array(x[k], adv[k], self.key, eps=eps, check=False)
            except kernels.CapacityError:
                out[k] = x[k]  # cannot be published reversibly: the original goes out
                continue
            out[k], bits[k] = marked, info.payload_bits
            restored[k] = np.array_equal(kernels.restore_array(marked, self.key), x[k])
        return Output(out, bits, restored)

    def _ours(self, prot: Protector, x: np.ndarray, eps: int, embed: bool, region: bool = True,
              method: Optional[str] = None, codec: Optional[str] = None, max_roi_change: Optional[int] = 1) -> Output:
        a = prot.analyse(x, eps, region)
        if not embed:
            return Output(np.stack([plan_perturbation(Image(img, 255, "png"), roi, grid, eps).adversarial for img, roi, grid in zip(x, a.rois, a.grids)]))
        out, bits, restored = x.copy(), np.full(len(x), np.nan), np.zeros(len(x), bool)
        # the same fallbacks as medrae protect; restored and compared just below, as the measurement
        for k, fit in enumerate(fit_analysed(prot, x, a, self.key, eps, method=method, codec=codec, check=False, max_roi_change=max_roi_change)):
            if not isinstance(fit, Fitted):
                continue  # cannot be published reversibly (or QC skipped it): the original goes out
            out[k], bits[k] = fit.marked, fit.info.payload_bits
            restored[k] = np.array_equal(kernels.restore_array(fit.marked, self.key), x[k])
        return Output(out, bits, restored)

    @staticmethod
    def _rit(x: np.ndarray, target: np.ndarray) -> Output:
        from . import rit

        out, bits, restored = x.copy(), np.full(len(x), np.nan), np.zeros(len(x), bool)
        for k in range(len(x)):
            try:
                out[k], bits[k] = rit.protect(x[k], target[k])
            except kernels.CapacityError:
                continue  # not reversible: the original goes out
            restored[k] = np.array_equal(rit.restore(out[k]), x[k])
        return Output(out, bits, restored)

    def run(self, method: str, x: np.ndarray, y: np.ndarray, eps: int, cache: dict, start: int = 0) -> Output:
        if method == "ours_ae":
            return self._ours(self.protector, x, eps, embed=False)
        if method == "ours_rae":
            return self._ours(self.protector, x, eps, embed=True)
        if method in VARIANTS:
            name, opts = VARIANTS[method]
            if name not in self._variants:
                self._variants[name] = Protector(self.models, **opts)
            return self._ours(self._variants[name], x, eps, embed=method != "ours_gen_ae")
        if method == "ours_rae_noregion":
            return self._ours(self.protector, x, eps, embed=True, region=False)
        if method == "paper_rae":
            return self._ours(self.paper, x, eps, embed=True, method="hs", codec="rle", max_roi_change=None)  # as published
        if method in ("csm_gan", "csm_gan_rdh"):  # the CSM-GAN generator perturbs the whole image
            return self._ours(self.csm, x, eps, embed=method.endswith("_rdh"), region=False)
        base = self.base_attack(method)
        if base is None:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
        if method in ON_DEFENDED:
            return Output(self._attack(base, x, y, eps, target=f"classifier_{DEFENDED}"))
        adv = self._attack_cached(base, x, y, eps, cache, start, fresh=method == base)
        if method == base:
            return Output(adv)
        if method == "rit_rae":
            return self._rit(x, adv)
        return self._embed(x, adv, eps)  # liu_rae, <attack>_rdh: the same codec + RDH path as ours


@dataclass(frozen=True)
class EvaluateSettings:
    """What ``medrae evaluate`` runs: methods, budgets, the attacker's conditions, the transfer lab."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    eps: tuple[int, ...] = (1, 2, 4, 8)
    models: Path = MODELS_DIR
    limit: int = 0  # evaluate only this many images (class-balanced); 0: all
    batch: int = 30
    cw_steps: int = 20
    conditions: tuple[str, ...] = ()  # the white-box classifier after the attacker's preprocessing (Table 6)
    transfer: bool = False  # the transfer matrix on the zoo's held-out targets (Table 8)
    zoo: Path = Path("runs/zoo")
    transfer_conditions: tuple[str, ...] = ("file", "jpeg90", "jpeg75")
    frontier: bool = False  # the strength frontier (medrae.evaluation.frontier): levels and eps against quality, with the noise floor

    def __post_init__(self):
        from .transfer import CONDITIONS as TRANSFER_CONDITIONS

        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
        if not self.eps or any(not 1 <= e <= 16 for e in self.eps):
            raise ValueError(f"eps must be 1..16 (1/255 units), got {list(self.eps)}")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ValueError(f"unknown condition(s) {', '.join(bad)}; choose from {', '.join(CONDITIONS)}")
        bad = [c for c in self.transfer_conditions if c not in TRANSFER_CONDITIONS]
        if bad:
            raise ValueError(f"unknown transfer condition(s) {', '.join(bad)}; choose from {', '.join(TRANSFER_CONDITIONS)}")


def evaluate(data: Path, report: Path, settings: EvaluateSettings = EvaluateSettings(),
             on_progress: Callable[[str, int], None] = lambda m, n: None) -> dict:
    """Run every method at every eps on the dataset directory ``data``; write results and reports."""
    methods, eps_list, models, limit, batch = settings.methods, settings.eps, Path(settings.models), settings.limit, settings.batch
    conditions = settings.conditions
    split = load_split(data)
    x_all, masks_all, y_all = split.images, split.masks, split.labels
    if limit:
        pick = np.concatenate([np.flatnonzero(y_all == c)[: max(1, limit // len(split.classes))] for c in range(len(split.classes))])
        x_all, y_all = x_all[pick], y_all[pick]
        masks_all = masks_all[pick] if masks_all is not None else None
    clfs = {p.stem: session(p) for p in sorted(models.glob("classifier_*.onnx"))}
    if WHITE_BOX not in clfs:
        raise FileNotFoundError(f"{models / (WHITE_BOX + '.onnx')}: the white-box classifier is missing")
    predict = lambda s, imgs: np.concatenate([s.run(None, {"image": normalize(imgs[i : i + 64])})[0].argmax(1) for i in range(0, len(imgs), 64)])  # noqa: E731
    clean = {n: predict(s, x_all) for n, s in clfs.items()}
    ok = clean[WHITE_BOX] == y_all
    x, y = x_all[ok], y_all[ok]
    masks = masks_all[ok] if masks_all is not None else None
    harness = Harness(models, os.urandom(32), settings.cw_steps)
    lab = None
    if settings.transfer:
        from .transfer import TransferLab, noise_floor

        lab = TransferLab(settings.zoo, x, y, settings.transfer_conditions)
    # per condition: which images the white-box classifier still gets right once preprocessed
    clean_ok = {c: predict(clfs[WHITE_BOX], np.stack([CONDITIONS[c](im) for im in x])) == y for c in conditions}
    results: dict = {
        "dataset": str(data), "images": int(len(x_all)), "evaluated": int(len(x)), "white_box": WHITE_BOX,
        "clean_accuracy": {n: float((p == y_all).mean()) for n, p in clean.items()},
        "defended": [n for n in clfs if "defended" in json.loads((models / f"{n}.json").read_text()).get("role", "")] if all((models / f"{n}.json").exists() for n in clfs) else [],
        "eps": list(eps_list), "conditions": list(conditions), "methods": {}, "skipped": {}, "published": {f"{m}@{e}": v for (m, e), v in PUBLISHED.items()},
        # provenance: which code and which model files produced these numbers
        "medrae_version": medrae_version(), "models": {f.name: file_sha256(f) for f in sorted(models.glob("*.onnx"))},
    }
    if lab is not None:  # the floor: uniform +-eps noise on the whole image, saved as PNG like every method
        top = max(eps_list)
        results["zoo"] = {"dir": str(settings.zoo), "targets": lab.names, "conditions": list(lab.conditions), "eps": top,
                          "clean_accuracy": {n: lab.accuracy(n) for n in lab.names},
                          "noise_floor": lab.asr(_png_roundtrip(noise_floor(x, top)))}
    examples: dict = {}
    cache: dict = {}  # attack outputs by (method, eps, first index): Liu-RAE reuses PGD's, RIT-RAE FGSM's
    seconds: dict = {}
    for method in methods:
        why = harness.available(method)
        if why:
            results["skipped"][method] = why
            continue
        results["methods"][method] = {}
        for eps in (eps_list if method in AE_METHODS else (8,) if 8 in eps_list else eps_list[-1:]):
            t0 = time.perf_counter()
            outs = []
            for i in range(0, len(x), batch):
                outs.append(harness.run(method, x[i : i + batch], y[i : i + batch], eps, cache, i))
                on_progress(f"{method} eps={eps}", len(x[i : i + batch]))
            secs = (time.perf_counter() - t0) / max(1, len(x))
            seconds[(method, eps)] = secs
            base = harness.base_attack(method)
            if base and base != method and (base, eps) in seconds:  # it reused that attack's output: count its time too
                secs += seconds[(base, eps)]
            adv = _png_roundtrip(np.concatenate([o.images for o in outs]))
            row = _measure(adv, x, y, masks, clfs, clean, ok, secs)
            if outs[0].payload_bits is not None:
                bits = np.concatenate([o.payload_bits for o in outs])
                fit = ~np.isnan(bits)
                row["fit_fraction"] = float(fit.mean())
                row["payload_bpp"] = float(np.nanmean(bits) / x[0].size) if fit.any() else None
                row["restored_fraction"] = float(np.concatenate([o.restored for o in outs])[fit].mean()) if fit.any() else None
            if conditions:
                row["conditions"] = {}
                for c in conditions:
                    pred = predict(clfs[WHITE_BOX], np.stack([CONDITIONS[c](im) for im in adv]))
                    keep = clean_ok[c]
                    row["conditions"][c] = float((pred[keep] != y[keep]).mean()) if keep.any() else None
            if lab is not None and eps == max(eps_list):
                row["zoo_transfer"] = lab.asr(adv)
            results["methods"][method][str(eps)] = row
            if eps == max(eps_list) or method in RAE_METHODS:
                examples[method] = adv
    if settings.frontier and not len(x):
        results["skipped"]["frontier"] = "no image the white-box classifier gets right"
    elif settings.frontier:
        from .frontier import frontier

        flab = None
        if lab is not None and "file" in lab.conditions:
            flab = lab
        elif Path(settings.zoo).is_dir() and _has_targets(settings.zoo):
            from .transfer import TransferLab

            flab = TransferLab(settings.zoo, x, y, ("file",))
        else:
            results["skipped"]["frontier held-out targets"] = f"{settings.zoo}: no trained zoo (python -m medrae.models.zoo train)"
        results["frontier"] = frontier(x, y, masks, lambda imgs: predict(clfs[WHITE_BOX], imgs), flab, models=models, on_progress=on_progress)
    report.mkdir(parents=True, exist_ok=True)
    (report / "results.json").write_text(json.dumps(results, indent=1))
    write_reports(results, report, x, masks, y, split.classes, examples)
    return results


def _has_targets(zoo_dir: Path) -> bool:
    from medrae.models import zoo

    return bool(zoo.trained(zoo_dir, "target"))


def _measure(adv, x, y, masks, clfs, clean, ok, secs) -> dict:
    d = np.abs(adv.astype(np.int64) - x)
    row = {
        "asr": None, "psnr": float(np.mean([psnr(a, b, data_range=255) for a, b in zip(x, adv) if not np.array_equal(a, b)] or [float("inf")])),
        "ssim": float(np.mean([ssim(a, b, data_range=255) for a, b in zip(x, adv)])),
        "seconds_per_image": secs, "transfer": {},
    }
    if masks is not None:
        row["roi_max_change"] = int(max(int(dk[mk].max(initial=0)) for dk, mk in zip(d, masks)))
        row["roi_mean_change"] = float(np.mean([dk[mk].mean() if mk.any() else 0.0 for dk, mk in zip(d, masks)]))
        row["roi_untouched_fraction"] = float(np.mean([not dk[mk].any() for dk, mk in zip(d, masks)]))  # lungs bit-exact
    for name, s in clfs.items():
        pred = np.concatenate([s.run(None, {"image": normalize(adv[i : i + 64])})[0].argmax(1) for i in range(0, len(adv), 64)])
        right = clean[name][ok] == y  # over the images this classifier gets right
        asr = float((pred[right] != y[right]).mean()) if right.any() else None
        if name == WHITE_BOX:
            row["asr"] = asr
        else:
            row["transfer"][name] = asr
    return row


# ----------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------


def _f(v, fmt=".2f", pct=False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{100 * v:.2f} %" if pct else format(v, fmt)


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of Tables 1-5, with the published numbers beside ours."""
    M = results["methods"]
    pub = results["published"]
    out = []
    eps_list = results["eps"]
    rows = []
    for m in AE_METHODS:
        if m in M:
            rows.append([m] + [" / ".join([_f(M[m].get(str(e), {}).get("asr"), pct=True), _f(M[m].get(str(e), {}).get("psnr")), _f(M[m].get(str(e), {}).get("ssim"), ".4f")]) for e in eps_list])
    out.append(("Table 1: adversarial examples (ASR / PSNR dB / SSIM) by eps (x/255)", ["method"] + [f"eps={e}" for e in eps_list], rows))
    rows = []
    for m in [m for m in M if m in RAE_METHODS or m == "ours_rae_noregion" or m.endswith("_rdh")]:
        for e, r in M[m].items():
            p = pub.get(f"{m}@{e}", {})
            rows.append([m, e, _f(r["asr"], pct=True), _f(r["psnr"]), _f(r["ssim"], ".4f"), _f(r.get("payload_bpp"), ".3f"), _f(r.get("fit_fraction"), pct=True),
                         _f(r.get("restored_fraction"), pct=True), _f(p.get("asr"), pct=True), _f(p.get("psnr")), _f(p.get("ssim"), ".4f")])
    out.append(("Table 2: reversible adversarial examples", ["method", "eps", "ASR", "PSNR", "SSIM", "payload bpp", "fits", "restored exact", "published ASR", "published PSNR", "published SSIM"], rows))
    rows = []
    # speed relative to the in-project Liu-RAE measured in the same run (its time at the same eps)
    liu = M.get("liu_rae", {})
    for m, by_eps in M.items():
        e = "8" if "8" in by_eps else next(iter(by_eps))
        p = pub.get(f"{m}@{e}", {})
        t, t_liu = by_eps[e]["seconds_per_image"], liu.get(e, {}).get("seconds_per_image")
        rows.append([m, e, _f(t, ".4f"), _f(t_liu / t if t_liu and t else None, ".2f"), _f(p.get("seconds_per_image"), ".3f")])
    out.append(("Table 3: time per image (s, this machine)", ["method", "eps", "seconds", "Liu-RAE time / this", "published"], rows))
    rows = []
    for m, by_eps in M.items():
        e = "8" if "8" in by_eps else next(iter(by_eps))
        rows.append([m, e, _f(by_eps[e]["asr"], pct=True)] + [_f(v, pct=True) for v in by_eps[e]["transfer"].values()])
    names = next((list(b[e]["transfer"]) for b in M.values() for e in b), [])
    out.append(("Table 4: transfer (ASR on the white-box target, then on the others)", ["method", "eps", results["white_box"]] + names, rows))
    rows = []
    for m in ("ours_rae", "ours_rae_convex", "ours_rae_noregion"):
        for e, r in M.get(m, {}).items():
            rows.append([m, e, _f(r["asr"], pct=True), _f(r["psnr"]), _f(r["ssim"], ".4f"), str(r.get("roi_max_change", "-")), _f(r.get("roi_mean_change"), ".3f"),
                         _f(r.get("roi_untouched_fraction"), pct=True)])
    out.append(("Table 5: with / without the region module", ["method", "eps", "ASR", "PSNR", "SSIM", "max |d| in lungs", "mean |d| in lungs",
                                                              "lungs bit-exact"], rows))
    if results.get("conditions"):
        rows = []
        for m, by_eps in M.items():
            e = "8" if "8" in by_eps else next(iter(by_eps))
            rows.append([m, e, _f(by_eps[e]["asr"], pct=True)] + [_f(by_eps[e].get("conditions", {}).get(c), pct=True) for c in results["conditions"]])
        out.append(("Table 6: white-box ASR after the attacker's preprocessing (over images still classified right when clean)",
                    ["method", "eps", "none"] + results["conditions"], rows))
    if results.get("defended"):
        rows = []
        for m, by_eps in M.items():
            e = "8" if "8" in by_eps else next(iter(by_eps))
            rows.append([m, e] + [_f(by_eps[e]["transfer"].get(d), pct=True) for d in results["defended"]])
        clean = ", ".join(f"{d} {100 * results['clean_accuracy'][d]:.2f} %" for d in results["defended"])
        out.append((f"Table 7: ASR against the defended targets (clean accuracy: {clean}; defense rate = 1 - ASR)",
                    ["method", "eps"] + results["defended"], rows))
    if results.get("zoo"):
        out.append(transfer_table(results))
    if results.get("frontier", {}).get("points"):
        from .frontier import table

        out.append(("Strength frontier: each level and eps on the saved files (held-out targets: ASR over the images each gets right; "
                    "kept: the held-out median after an adaptive attack over the median before it)", *table(results["frontier"])))
    return [t for t in out if t[2]] if not M else out


def transfer_table(results: dict) -> tuple[str, list[str], list[list[str]]]:
    """Table 8: method x condition rows, the held-out zoo targets as columns, the noise floor first."""
    from .transfer import summary

    z = results["zoo"]
    names = z["targets"]
    e = str(z["eps"])
    rows = []
    sources = [("uniform noise +-eps, whole image (floor)", z["noise_floor"])]
    sources += [(m, by_eps[e]["zoo_transfer"]) for m, by_eps in results["methods"].items() if "zoo_transfer" in by_eps.get(e, {})]
    for label, by_cond in sources:
        for c in z["conditions"]:
            row = by_cond[c]
            sm = summary(row)
            rows.append([label, c, _f(sm["median"], pct=True), _f(sm["min"], pct=True)] + [_f(row[n], pct=True) for n in names])
    clean = ", ".join(f"{n} {100 * v:.1f} %" for n, v in z["clean_accuracy"].items())
    return (f"Table 8: transfer to the held-out zoo targets at eps {e} (ASR over the images each target gets right in that condition; "
            f"never used to make a perturbation; clean accuracy: {clean})", ["method", "condition", "median", "min"] + names, rows)


def _title(results: dict) -> str:
    """The dataset as a reader names it (its last two folders, e.g. ``cxr3/test``), not a machine path."""
    parts = Path(results["dataset"]).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else results["dataset"]


def _figures(results: dict, written: dict) -> list[tuple[str, str, str]]:
    """(heading, file, caption) of the figures :func:`write_reports` wrote; only those."""
    out = []
    if written.get("examples"):
        out.append(("Examples", "examples.png", written["examples"]))
    if written.get("frontier"):
        out.append(("Strength frontier", "frontier.svg", "PSNR (x) against white-box ASR (left) and the held-out zoo targets' median ASR "
                    "(right) for each strength level and eps, on the saved files; the cross is the reference paper's point; grey squares "
                    "and the dashed line: uniform noise on the same pixels, scaled to each file's PSNR (the floor), scored by the same targets."))
    if written.get("curves"):
        out.append(("ASR and PSNR against eps", "curves.svg", "Each attack method's white-box ASR (left) and PSNR (right) at "
                    "every eps evaluated, on the saved 8-bit files."))
    return out


def _markdown(results: dict, written: Optional[dict] = None) -> str:
    lines = [f"# medrae evaluation: {_title(results)}", "",
             f"{results['evaluated']} of {results['images']} images (those the white-box {results['white_box']} classifies right). "
             f"Clean accuracy: " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in results["clean_accuracy"].items()), ""]
    for title, header, rows in tables(results):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if results["skipped"]:
        lines += ["## Not run", ""] + [f"* {m}: {why}" for m, why in results["skipped"].items()] + [""]
    lines += ["Published numbers: the reference paper (ResNet50 target, its own data); '-' where none was given.", ""]
    for heading, file, caption in _figures(results, written or {}):
        lines += [f"## {heading}", "", f"![{heading}]({file})", "", caption, ""]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2733; margin: 0 auto;
       max-width: 1180px; padding: 24px 32px 48px; line-height: 1.45; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid #d8dee6; padding-bottom: 4px; }
.meta { color: #56606d; font-size: 14px; margin: 0 0 16px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 4px; }
th { background: #eef2f6; text-align: left; font-weight: 600; } th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
tr:nth-child(even) td { background: #f8fafc; } td:not(:first-child) { font-variant-numeric: tabular-nums; }
figure { margin: 8px 0 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; } figcaption { color: #56606d; font-size: 13px; }
ul.skipped { color: #56606d; font-size: 13px; }
"""


def _html(results: dict, written: Optional[dict] = None) -> str:
    title = html.escape(_title(results))
    clean = ", ".join(f"{html.escape(k)} {100 * v:.2f} %" for k, v in results["clean_accuracy"].items())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medrae evaluation: {title}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>medrae evaluation: {title}</h1>",
             f"<p class='meta'>{results['evaluated']} of {results['images']} images (those the white-box {html.escape(results['white_box'])} "
             f"classifies right); clean accuracy {clean}; medrae {html.escape(str(results.get('medrae_version', '')))}. "
             f"ASR is measured on the saved 8-bit files.</p>"]
    for title_, header, rows in tables(results):
        parts.append(f"<h2>{html.escape(title_)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts.append("<p class='meta'>Published numbers: the reference paper (ResNet50 target, its own data); '-' where none was given.</p>")
    for heading, file, caption in _figures(results, written or {}):
        parts.append(f"<h2>{html.escape(heading)}</h2><figure><img src='{file}' alt='{html.escape(heading)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if results["skipped"]:
        parts.append("<h2>Not run</h2><ul class='skipped'>" + "".join(f"<li>{html.escape(m)}: {html.escape(w)}</li>"
                                                                       for m, w in results["skipped"].items()) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _curves_svg(results: dict) -> Optional[str]:
    """ASR % and PSNR dB against eps for the AE methods, with axes, ticks and a legend; None when
    fewer than two eps were evaluated (a curve needs two points)."""
    eps = results["eps"]
    methods = [m for m in AE_METHODS if m in results["methods"]]
    if len(eps) < 2 or not methods:
        return None
    W, H, left, top, bottom = 360, 240, 48, 28, 44
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    legend_h = 16 * len(methods) + 8
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{2 * W + 40}' height='{H + legend_h}' font-family='sans-serif' font-size='11'>",
           "<rect width='100%' height='100%' fill='white'/>"]
    for panel, (key, lo, hi, label) in enumerate((("asr", 0, 100, "white-box ASR (%)"), ("psnr", 20, 60, "PSNR (dB)"))):
        ox, pw, ph = panel * (W + 40), W - left - 8, H - top - bottom
        x0, y0 = ox + left, top
        svg.append(f"<text x='{x0 + pw / 2}' y='16' text-anchor='middle' font-size='13' font-weight='bold'>{label} against eps</text>")
        svg.append(f"<rect x='{x0}' y='{y0}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>")
        for t in np.linspace(lo, hi, 5):
            py = y0 + ph * (1 - (t - lo) / (hi - lo))
            svg.append(f"<line x1='{x0}' x2='{x0 + pw}' y1='{py:.1f}' y2='{py:.1f}' stroke='#eee'/>"
                       f"<text x='{x0 - 6}' y='{py + 4:.1f}' text-anchor='end'>{t:g}</text>")
        xs = {e: x0 + pw * (i / (len(eps) - 1)) for i, e in enumerate(eps)}
        for e, px in xs.items():
            svg.append(f"<text x='{px:.1f}' y='{y0 + ph + 16}' text-anchor='middle'>{e}</text>")
        svg.append(f"<text x='{x0 + pw / 2}' y='{y0 + ph + 34}' text-anchor='middle'>eps (1/255)</text>")
        svg.append(f"<text transform='translate({ox + 12},{y0 + ph / 2}) rotate(-90)' text-anchor='middle'>{label}</text>")
        for k, m in enumerate(methods):
            pts = []
            for e in eps:
                r = results["methods"][m].get(str(e))
                if r is None or r.get(key) is None or not np.isfinite(r[key]):
                    continue
                v = 100 * r[key] if key == "asr" else r[key]
                pts.append((xs[e], y0 + ph * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))))
            c = colors[k % len(colors)]
            if len(pts) > 1:
                svg.append(f"<polyline points='{' '.join(f'{a:.1f},{b:.1f}' for a, b in pts)}' fill='none' stroke='{c}' stroke-width='2'/>")
            svg += [f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{c}'/>" for a, b in pts]
    for k, m in enumerate(methods):  # one legend for both panels
        c, ly = colors[k % len(colors)], H + 8 + 16 * k
        svg.append(f"<line x1='{left}' x2='{left + 18}' y1='{ly - 4}' y2='{ly - 4}' stroke='{c}' stroke-width='3'/>"
                   f"<text x='{left + 24}' y='{ly}'>{m}</text>")
    svg.append("</svg>")
    return "\n".join(svg)


def _contour(mask: np.ndarray) -> np.ndarray:
    """The outline (1 px) of a boolean mask."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def _examples_png(path: Path, x, masks, y, classes, examples: dict, per_class: int = 2) -> Optional[str]:
    """Per image a row: original | protected | |difference| x10 (heat) | with the true lung
    contour (green) on the first two, from the best method that ran (ours_rae, else ours_ae, else
    any). Returns the caption, or None when no method's output is there (nothing written)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    method = next((m for m in ("ours_rae", "ours_ae") if m in examples), next(iter(examples), None))
    if method is None:
        return None
    out = examples[method]
    tiles, labels = [], []
    for c in range(len(classes)):
        for k in np.flatnonzero(y == c)[:per_class]:
            edge = _contour(masks[k]) if masks is not None else np.zeros(x[k].shape, bool)
            row = []
            for img in (x[k], out[k]):
                rgb = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
                rgb[edge] = (40, 220, 90)
                row.append(rgb)
            d = np.clip(np.abs(out[k].astype(int) - x[k]) * 10, 0, 255).astype(np.uint8)
            heat = np.stack([d, (d * 0.45).astype(np.uint8), (255 - d) // 4], axis=2)
            row.append(heat)
            tiles.append(np.concatenate(row, axis=1))
            labels.append(classes[c])
    if not tiles:
        return None
    h, w = tiles[0].shape[:2]
    head = 22
    sheet = PILImage.new("RGB", (tiles[0].shape[1], head + h * len(tiles)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(("original", f"protected ({method})", "|difference| x10")):
        draw.text((i * (w // 3) + 6, 5), name, fill=(20, 30, 40))
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        sheet.paste(PILImage.fromarray(tile), (0, head + i * h))
        draw.text((6, head + i * h + 4), label, fill=(255, 230, 80))
    sheet.save(path)
    contour = "; green: the true lung mask's outline" if masks is not None else ""
    return (f"{len(tiles)} images ({per_class} per class): the original, the file {method} saved, and their absolute "
            f"difference x10{contour}. medrae keeps the perturbation outside the lungs.")


def write_reports(results: dict, report: Path, x, masks, y, classes, examples: dict) -> None:
    """report.md and report.html, with the figures that can be drawn (never a heading without its
    figure): examples.png when a method's outputs are there, curves.svg when two or more eps ran."""
    written: dict = {}
    for stale in ("examples.png", "curves.svg", "frontier.svg"):
        (report / stale).unlink(missing_ok=True)
    if results.get("frontier", {}).get("points"):
        from .frontier import svg

        (report / "frontier.svg").write_text(svg(results["frontier"]))
        written["frontier"] = True
    written["examples"] = _examples_png(report / "examples.png", x, masks, y, classes, examples)
    curves = _curves_svg(results)
    if curves:
        (report / "curves.svg").write_text(curves)
        written["curves"] = True
    (report / "report.md").write_text(_markdown(results, written))
    (report / "report.html").write_text(_html(results, written))


def run(data: Path, report: Path, settings: EvaluateSettings) -> dict:
    """:func:`evaluate` under a progress bar; prints the markdown report (``medrae evaluate``)."""
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("evaluate", total=None)
        res = evaluate(data, report, settings, on_progress=lambda label, n: bar.update(task, advance=n, description=label))
    print(_markdown(res))
    return res


if __name__ == "__main__":
    sys.exit("run it as: medrae evaluate DATASET --report DIR (--help lists the options)")
