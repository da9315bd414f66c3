"""The transfer lab's classifier zoo: independently trained models, split into surrogates and
held-out targets.

    python -m medrae.models.zoo train --data ../shared/data/cxr3 --out runs/zoo          # all members
    python -m medrae.models.zoo train --data ../shared/data/cxr3 --out runs/zoo --only t_densenet224
    python -m medrae.models.zoo list

An unauthorized party uses a classifier of its own, at its own input size and preprocessing. Each
member is such a pipeline: the saved 8-bit 224x224 image is resized to the member's size (bilinear,
antialiased, as PIL does), optionally histogram-equalised, and normalised either as one grey channel
or replicated to three with ImageNet statistics; then its network. :class:`ZooModel` takes pixels on
the 0..255 scale, so one call runs the whole pipeline, and it is differentiable except for the
histogram equalisation.

The split is fixed here, in :data:`ZOO`, and nowhere else: **surrogates** (``role="surrogate"``) may
be used to make or tune a perturbation; **targets** (``role="target"``) never are. The split is by
family: no target shares a family with a surrogate or with a shipped classifier (ResNet, VGG).

Training is seeded and single-process (each member's ``threads``): rerunning the command rebuilds
the same weights on this machine; every epoch checkpoints to ``<out>/<name>/last.pt`` and a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import create
from . import zoo_nets  # noqa: F401  (registration)

SHIPPED_FAMILIES = ("resnet", "vgg")  # the shipped classifiers' families: surrogates by definition

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ZooMember:
    """One independently trained classifier pipeline."""

    name: str
    arch: str
    family: str
    role: str  # "surrogate" | "target"
    size: int  # the input size the pipeline resizes to
    prep: str  # "plain" | "imagenet" | "histeq"
    seed: int
    epochs: int = 12
    lr: float = 2e-3
    augment: float = 1.0  # strength of models.train.augment
    adv_eps: float = 0.0  # > 0: "slightly robust" (FGSM-RS adversarial training at this eps, pixel levels)
    threads: int = 2  # torch threads it was trained with: float reductions, and so the weights, depend on it

    @property
    def in_channels(self) -> int:
        return 3 if self.prep == "imagenet" else 1


ZOO: tuple[ZooMember, ...] = (
    # surrogates: ResNet / VGG families (as the shipped classifiers), other sizes, preprocessing, seeds
    ZooMember("s_resnet10_128", "zoo_resnet10", "resnet", "surrogate", 128, "plain", 101),
    ZooMember("s_resnet14_160_imnet", "zoo_resnet14", "resnet", "surrogate", 160, "imagenet", 102),
    ZooMember("s_vgg11_150", "zoo_vgg11", "vgg", "surrogate", 150, "plain", 103),
    ZooMember("s_resnet10_128_robust", "zoo_resnet10", "resnet", "surrogate", 128, "plain", 104, adv_eps=2.0, threads=1),
    # more families and the histogram-equalised preprocessing (issue 16: a surrogate set closer to unknown pipelines)
    ZooMember("s_squeezenet_176", "zoo_squeezenet", "squeezenet", "surrogate", 176, "plain", 106),
    ZooMember("s_vit_128", "zoo_vit", "vit", "surrogate", 128, "plain", 107, epochs=20),
    ZooMember("s_resnet10_150_histeq", "zoo_resnet10", "resnet", "surrogate", 150, "histeq", 108),
    # held-out targets: families no surrogate has
    ZooMember("t_densenet_224", "zoo_densenet", "densenet", "target", 224, "plain", 201),
    ZooMember("t_mobilenetv2_128_imnet", "zoo_mobilenetv2", "mobilenet", "target", 128, "imagenet", 202),
    ZooMember("t_xception_150_histeq", "zoo_xception", "xception", "target", 150, "histeq", 203),
    ZooMember("t_convnext_256", "zoo_convnext", "convnext", "target", 256, "plain", 204, epochs=20),  # 12 epochs: 83.7 % test
    ZooMember("t_densenet_128_histeq", "zoo_densenet", "densenet", "target", 128, "histeq", 205),
)


def members(role: str | None = None) -> list[ZooMember]:
    """The zoo's members, optionally only one role's."""
    if role not in (None, "surrogate", "target"):
        raise ValueError(f"role must be 'surrogate' or 'target', got {role!r}")
    return [m for m in ZOO if role is None or m.role == role]


def member(name: str) -> ZooMember:
    for m in ZOO:
        if m.name == name:
            return m
    raise ValueError(f"unknown zoo member {name!r}; choose one of {[m.name for m in ZOO]}")


def check_split(zoo: tuple[ZooMember, ...] = ZOO) -> None:
    """Raise if a target shares a family with a surrogate or a shipped classifier, or a name repeats."""
    names = [m.name for m in zoo]
    if len(set(names)) != len(names):
        raise ValueError("zoo member names repeat")
    surrogate_families = {m.family for m in zoo if m.role == "surrogate"} | set(SHIPPED_FAMILIES)
    for m in zoo:
        if m.role not in ("surrogate", "target"):
            raise ValueError(f"{m.name}: role {m.role!r}")
        if m.role == "target" and m.family in surrogate_families:
            raise ValueError(f"{m.name}: held-out target of family {m.family!r}, which the surrogates have")


def equalize(pixels: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of 0..255 pixels (N, 1, H, W), as ``PIL.ImageOps.equalize``
    would map them (CDF-based; output 0..255, float)."""
    n = pixels.shape[0]
    q = pixels.round().clamp(0, 255).long().view(n, -1)
    hist = torch.zeros(n, 256, dtype=torch.float32).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).min(1, keepdim=True).values
    lut = ((cdf - cdf_min) / (cdf[:, -1:] - cdf_min).clamp(min=1) * 255).clamp(0, 255).round()
    out = lut.gather(1, q).view_as(pixels)
    if not pixels.requires_grad:
        return out
    # gradient: the LUT's local slope (central difference), the LUT itself held fixed (BPDA, Athalye
    # et al. 2018), so a histogram-equalised surrogate can steer a perturbation
    padded = torch.cat([lut[:, :1], lut, lut[:, -1:]], 1)
    slope = ((padded[:, 2:] - padded[:, :-2]) / 2).gather(1, q).view_as(pixels)
    return out + slope * (pixels - pixels.detach())


class ZooModel(nn.Module):
    """A member's whole pipeline: 0..255 pixels (N, 1, H, W) at any size -> logits (N, 3)."""

    def __init__(self, spec: ZooMember):
        super().__init__()
        self.spec = spec
        self.net = create(spec.arch, in_channels=spec.in_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.spec
        x = pixels
        if s.prep == "histeq":
            x = equalize(x)
        if x.shape[-2:] != (s.size, s.size):
            x = F.interpolate(x, size=(s.size, s.size), mode="bilinear", align_corners=False, antialias=True)
        x = x / 255.0
        if s.prep == "imagenet":
            return (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        return (x - 0.5) / 0.25

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(pixels))


def load(root: Path | str, name: str) -> ZooModel:
    """A trained member from ``<root>/<name>/best.pt`` (eval mode)."""
    path = Path(root) / name / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: zoo member not trained (python -m medrae.models.zoo train --only {name} ...)")
    model = ZooModel(member(name))
    model.load_state_dict(torch.load(path, weights_only=False)["model"])
    return model.eval()


def trained(root: Path | str, role: str | None = None) -> list[str]:
    """Names of the members of ``role`` whose training finished under ``root`` (``result.json``)."""
    return [m.name for m in members(role) if (Path(root) / m.name / "result.json").exists()]


@torch.no_grad()
def logits(model: nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits of uint8 images (N, H, W)."""
    out = [model(torch.from_numpy(images[i : i + batch]).unsqueeze(1).float()) for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------------------------
# surrogates for protect: margin-gradient ONNX models (ONNX Runtime only at run time)
# ---------------------------------------------------------------------------------------------


def resize_matrix(size: int, source: int = 224) -> torch.Tensor:
    """R (size, source) with ``R @ x @ R.T`` = the pipeline's antialiased bilinear resize of x."""
    eye = torch.eye(source).view(1, 1, source, source)
    r = F.interpolate(eye, size=(size, source), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return r.contiguous()


def folded(model: ZooModel) -> nn.Module:
    """A copy of the member's network with every BatchNorm folded into the convolution before it
    (BN left as "add its bias"), the form :class:`models.gradient.MarginGradient` differentiates."""
    import copy

    from .from_onnx import _execution_order

    net = copy.deepcopy(model.net).eval()
    order = _execution_order(net, (1, model.spec.in_channels, model.spec.size, model.spec.size))
    with torch.no_grad():
        for prev, bn in zip(order, order[1:]):
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            if not isinstance(prev, nn.Conv2d) or prev.bias is not None:
                raise ValueError(f"{model.spec.name}: a BatchNorm that does not follow a bias-free convolution")
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            prev.weight.mul_(scale.view(-1, 1, 1, 1))
            bn.bias.copy_(bn.bias - bn.running_mean * scale)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return net


def export_gradient(root: Path | str, name: str, out: Path | str, data: Path | str, limit: int = 64, min_cosine: float = 0.9999) -> dict:
    """Write ``out`` (ONNX: normalised 224x224 image, label -> logits, d margin / d pixel) and its
    card for the surrogate ``name``, after checking ONNX Runtime against torch autograd through the
    member's whole pipeline on ``limit`` images of the dataset directory ``data``."""
    from medrae.export.onnx_export import _cosines
    from medrae.toolkit.datasets import load_split
    from medrae.toolkit.ort import file_sha256, session

    from .gradient import MarginGradient

    spec = member(name)
    if spec.role != "surrogate":
        raise ValueError(f"{name} is a held-out target: no gradient model is made for it")
    if spec.prep != "plain":
        raise ValueError(f"{name}: only plain-normalised members have gradient models, not {spec.prep!r}")
    model = load(root, name)
    graph = MarginGradient(folded(model), resize=resize_matrix(spec.size) if spec.size != 224 else None).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names, out_names = ["image", "label"], ["logits", "grad"]
    x, label = torch.zeros(2, 1, 224, 224), torch.full((2,), -1, dtype=torch.long)
    tmp = out.with_suffix(".tmp.onnx")
    # no constant folding: the flipped kernels would be stored beside the originals (ORT folds them at load)
    torch.onnx.export(graph, (x, label), str(tmp), dynamo=False, opset_version=17, input_names=names, output_names=out_names, do_constant_folding=False,
                      dynamic_axes={n: {0: "batch"} for n in names + out_names})
    images = load_split(data).images[:limit]
    sess = session(tmp, "cpu")
    worst_logit, worst_cos, worst_autograd, mismatches = 0.0, 1.0, 1.0, 0
    for i in range(0, len(images), 16):
        pixels = torch.from_numpy(images[i : i + 16]).unsqueeze(1).float().requires_grad_(True)
        z = model(pixels)
        lab = z.argmax(1)
        top2 = z.scatter(1, lab[:, None], float("-inf")).max(1).values
        want = torch.autograd.grad((z.gather(1, lab[:, None])[:, 0] - top2).sum(), pixels)[0].numpy()
        logits, grad = sess.run(None, {"image": ((pixels.detach() / 255 - 0.5) / 0.25).numpy(), "label": np.full(len(lab), -1, np.int64)})
        with torch.no_grad():
            same = graph((pixels.detach() / 255 - 0.5) / 0.25, torch.full((len(lab),), -1, dtype=torch.long))[1].numpy()
        worst_logit = max(worst_logit, float(np.abs(logits - z.detach().numpy()).max()))
        worst_cos = min(worst_cos, float(_cosines(grad, same).min()))
        worst_autograd = min(worst_autograd, float(_cosines(grad, want).min()))
        mismatches += int((logits.argmax(1) != lab.numpy()).sum())
    # strict against the same graph in torch; autograd may route a max-pool tie or a ReLU at exactly
    # 0 differently (VGG max-pool ties: 0.94 on s_vgg11_150), so it is only bounded loosely
    report = {"images": len(images), "max_abs_logit_diff": worst_logit, "min_grad_cosine": worst_cos,
              "min_grad_cosine_to_autograd": worst_autograd, "decision_mismatches": mismatches}
    if worst_logit > 1e-3 or worst_cos < min_cosine or worst_autograd < 0.9 or mismatches:
        tmp.unlink()
        raise RuntimeError(f"{out}: gradient parity failed: {report}")
    tmp.replace(out)
    result = json.loads((Path(root) / name / "result.json").read_text())
    card = {
        "file": out.name, "sha256": file_sha256(out), "task": "margin_gradient", "architecture": spec.arch, "zoo_member": asdict(spec),
        "inputs": {"image": "(N,1,224,224) float32, (pixel / 255 - 0.5) / 0.25", "label": "(N,) int64; < 0: the predicted class"},
        "output": f"logits (N,3) and grad (N,1,224,224) = d(z[label] - max_{{j != label}} z[j]) / d pixel (0..255 scale), through the member's resize to {spec.size}",
        "opset": 17, "parity": report, "role": "surrogate of protect's transfer stage (toolkit/refine.py); weights inline",
        "training": {"command": result["command"], "data": "cxr3 train (1260 images), val for model selection"},
        "test_metrics": {"split": "cxr3 test (270)", "accuracy": result["test_acc"]},
        "command": f"python -m medrae.models.zoo export-gradient {name} --zoo {root} --out {out} --data {data}",
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1))
    return card


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def _fgsm_rs(model: nn.Module, pixels: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Wong et al. 2020 "fast" adversarial example (random start + one signed step of 1.25 eps)."""
    was = model.training
    model.eval()
    adv = (pixels + torch.empty_like(pixels).uniform_(-eps, eps)).clamp(0, 255).requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)[0]
    adv = torch.min(torch.max(adv.detach() + 1.25 * eps * grad.sign(), pixels - eps), pixels + eps).clamp(0, 255)
    model.train(was)
    return adv


def train_member(spec: ZooMember, data: Path, out: Path, threads: int | None = None, batch: int = 32, log=print) -> dict:
    """Train one member (resuming from ``out/last.pt``); returns its result (test accuracy included)."""
    from medrae.toolkit.datasets import load_split

    from .train import augment, checkpoint, resume, seed_everything

    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    torch.set_num_threads(threads or spec.threads)
    gen = seed_everything(spec.seed)
    tr, va = load_split(data / "train"), load_split(data / "val")
    model = ZooModel(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=5e-4)
    steps = spec.epochs * ((len(tr.images) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.2)
    ckpt = out / "last.pt"
    start, best, history = resume(ckpt, model, opt, sched, gen)
    if start:
        log(f"{spec.name}: resuming at epoch {start}")
    for epoch in range(start, spec.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(tr.images), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch].numpy()
            x, _ = augment(torch.from_numpy(tr.images[idx]).unsqueeze(1).float() / 255, None, gen, spec.augment)
            pixels = (x * 255).round()  # the attacker reads 8-bit files
            y = torch.from_numpy(tr.labels[idx])
            if spec.adv_eps:
                pixels = _fgsm_rs(model, pixels, y, spec.adv_eps)
            loss = F.cross_entropy(model(pixels), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        acc = float((logits(model, va.images).argmax(1) == va.labels).mean())
        history.append({"epoch": epoch + 1, "loss": round(total / len(perm), 4), "val_acc": acc, "seconds": round(time.time() - t0, 1)})
        if acc > best:
            best = acc
            torch.save({"model": model.state_dict(), "member": asdict(spec), "epoch": epoch + 1}, out / "best.pt")
        checkpoint(ckpt, model, opt, sched, gen, epoch, best, history)
        log(f"{spec.name}: {json.dumps(history[-1])}")
    model = load(out.parent, spec.name)
    te = load_split(data / "test", tr.classes)
    result = {"member": asdict(spec), "best_val": best, "test_acc": float((logits(model, te.images).argmax(1) == te.labels).mean()),
              "history": history, "command": f"python -m medrae.models.zoo train --data {data.parent}/{data.name} --out {out.parent} --only {spec.name}"}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    ckpt.unlink()  # best.pt and result.json are the member; the optimiser state is not needed again
    return result


LGV_DIR = "lgv"


def lgv_checkpoints(root: Path | str, name: str) -> list[Path]:
    """The member's collected LGV weights (``<root>/<name>/lgv/NN.pt``), [] if it has none (finished runs only)."""
    d = Path(root) / name / LGV_DIR
    return sorted(d.glob("[0-9][0-9].pt")) if (d / "result.json").exists() else []


def collect_lgv(root: Path | str, name: str, data: Path | str, epochs: int = 10, per_epoch: int = 4, lr: float = 0.05,
                batch: int = 32, seed: int = 7, threads: int = 2, log=print) -> dict:
    """LGV (Gubri et al. 2022): from the trained surrogate ``name``, SGD at a constant high learning
    rate for ``epochs`` epochs, keeping ``per_epoch`` weights per epoch (``<root>/<name>/lgv/NN.pt``).
    Attacking a random one of them per step transfers better than attacking the member itself: the
    perturbation follows the flat vicinity of the minimum, not the minimum's accidents. Seeded; each
    epoch checkpoints (``lgv/last.pt``), a rerun resumes."""
    from medrae.toolkit.datasets import load_split

    from .train import augment, checkpoint, resume, seed_everything

    spec = member(name)
    if spec.role != "surrogate":
        raise ValueError(f"{name} is a held-out target: never used to make a perturbation")
    out = Path(root) / name / LGV_DIR
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    gen = seed_everything(seed)
    tr, va = load_split(Path(data) / "train"), load_split(Path(data) / "val")
    model = load(root, name)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # constant: LGV's high learning rate throughout
    steps_per_epoch = (len(tr.images) + batch - 1) // batch
    every = max(1, steps_per_epoch // per_epoch)
    start, _, history = resume(out / "last.pt", model, opt, sched, gen)
    for epoch in range(start, epochs):
        model.train()
        perm = torch.randperm(len(tr.images), generator=gen)
        kept = 0
        for step, i in enumerate(range(0, len(perm), batch)):
            idx = perm[i : i + batch].numpy()
            x, _ = augment(torch.from_numpy(tr.images[idx]).unsqueeze(1).float() / 255, None, gen, spec.augment)
            loss = F.cross_entropy(model((x * 255).round()), torch.from_numpy(tr.labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % every == 0 and kept < per_epoch:
                model.eval()
                acc = float((logits(model, va.images).argmax(1) == va.labels).mean())
                n = epoch * per_epoch + kept
                torch.save({"model": model.state_dict(), "member": asdict(spec)}, out / f"{n:02d}.pt")
                history.append({"checkpoint": n, "epoch": epoch + 1, "val_acc": acc})
                log(f"{name} lgv: {json.dumps(history[-1])}")
                kept += 1
                model.train()
        checkpoint(out / "last.pt", model, opt, sched, gen, epoch, -1.0, history)
    result = {"member": name, "epochs": epochs, "per_epoch": per_epoch, "lr": lr, "seed": seed, "history": history,
              "command": f"python -m medrae.models.zoo lgv {name} --zoo {root} --data {data} --epochs {epochs} --per-epoch {per_epoch} --lr {lr} --seed {seed}"}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    (out / "last.pt").unlink()
    return result


def train_zoo(data: Path | str, out: Path | str, only: list[str] | None = None, threads: int | None = None) -> list[dict]:
    """Train every member (or ``only`` those), one after the other, each resumable."""
    check_split()
    data, out = Path(data), Path(out)
    todo = [member(n) for n in only] if only else list(ZOO)
    results = []
    for spec in todo:
        r = train_member(spec, data, out / spec.name, threads=threads, log=lambda s: print(s, flush=True))
        print(f"{spec.name}: test accuracy {r['test_acc']:.4f}", flush=True)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medrae.models.zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the zoo (resumable, seeded)")
    t.add_argument("--data", required=True, help="folder with train/ val/ test/ dataset directories")
    t.add_argument("--out", default="runs/zoo")
    t.add_argument("--only", nargs="*", default=None, help="member names (default: all)")
    t.add_argument("--threads", type=int, default=None, help="override the member's own thread count (its weights then differ in the last bits)")
    sub.add_parser("list", help="print the zoo and its split")
    e = sub.add_parser("export-gradient", help="a surrogate's margin-gradient ONNX model, for protect")
    e.add_argument("name")
    e.add_argument("--zoo", default="runs/zoo")
    e.add_argument("--out", required=True)
    e.add_argument("--data", required=True, help="dataset directory for the parity check (e.g. cxr3/val)")
    g = sub.add_parser("lgv", help="collect a surrogate's LGV weights (SGD at a high constant learning rate from its trained weights)")
    g.add_argument("names", nargs="+")
    g.add_argument("--zoo", default="runs/zoo")
    g.add_argument("--data", required=True, help="folder with train/ val/ dataset directories")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--per-epoch", type=int, default=4)
    g.add_argument("--lr", type=float, default=0.05)
    g.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    names = {"train": getattr(args, "only", None) or [], "lgv": getattr(args, "names", []), "export-gradient": [getattr(args, "name", "")]}.get(args.cmd, [])
    try:  # every member name is checked before anything is trained or written
        for name in names:
            member(name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "lgv":
        for name in args.names:
            r = collect_lgv(args.zoo, name, args.data, args.epochs, args.per_epoch, args.lr, seed=args.seed, log=lambda s: print(s, flush=True))
            print(f"{name}: {len(r['history'])} LGV weights, val accuracy {min(h['val_acc'] for h in r['history']):.3f}-"
                  f"{max(h['val_acc'] for h in r['history']):.3f}", flush=True)
        return 0
    if args.cmd == "export-gradient":
        print(json.dumps(export_gradient(args.zoo, args.name, args.out, args.data), indent=1))
        return 0
    if args.cmd == "list":
        for m in ZOO:
            print(f"{m.role:9s} {m.name:26s} {m.family:10s} {m.arch:16s} {m.size:4d} {m.prep}")
        return 0
    train_zoo(args.data, args.out, args.only, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
