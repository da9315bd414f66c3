"""Training of the segmenter and the target classifiers (generator: models/train_generator.py).

    python -m medrae.models.train segmenter  --data ../shared/data/cxr3 --out runs/seg
    python -m medrae.models.train classifier --data ../shared/data/cxr3 --out runs/r18 --arch resnet18

``--data`` holds ``train/`` and ``val/`` dataset directories (and ``test/``, evaluated at the end).
Every epoch writes ``last.pt`` (model, optimiser, scheduler, epoch, RNG states) and appends to
``metrics.csv``/``metrics.json``; rerunning the same command resumes; ``best.pt`` keeps the best
validation epoch.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import create
from .data import Split, load_split, normalize


class Segmenter(nn.Module):
    """A segmentation net run at ``internal`` resolution, logits returned at the input size."""

    def __init__(self, net: nn.Module, internal: int):
        super().__init__()
        self.net = net
        self.internal = internal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = F.interpolate(x, size=(self.internal, self.internal), mode="bilinear", align_corners=False)
        y = self.net(y)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


class Classifier(nn.Module):
    """A classifier run at ``internal`` resolution (input resized inside, so the graph takes 224x224)."""

    def __init__(self, net: nn.Module, internal: int):
        super().__init__()
        self.net = net
        self.internal = internal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(shrink(x, self.internal))


def shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size`` x ``size``: exact 2x2 (or k x k) averaging when the input is a whole multiple
    (antialiased and exportable to ONNX opset 17), bilinear otherwise."""
    h, w = x.shape[-2:]
    if h == w == size:
        return x
    if h == w and h % size == 0:
        return F.avg_pool2d(x, h // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------


def augment(x: torch.Tensor, m: torch.Tensor | None, gen: torch.Generator, strength: float = 1.0):
    """Random affine (±7°, ±6 % shift, 0.9-1.1 scale), horizontal flip for masks only, and
    brightness/contrast/gamma jitter. ``x`` in [0, 1], (N, 1, H, W); ``m`` float or None."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    ang = u(-7, 7) * strength * np.pi / 180
    sc = 1 + u(-0.1, 0.1) * strength
    tx, ty = u(-0.06, 0.06) * strength, u(-0.06, 0.06) * strength
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if m is not None:
        m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        flip = torch.rand(n, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        m[flip] = m[flip].flip(-1)
    gamma = torch.exp(u(-0.2, 0.2) * strength).view(n, 1, 1, 1)
    x = x.clamp(1e-4, 1) ** gamma
    x = (x - 0.5) * (1 + u(-0.15, 0.15) * strength).view(n, 1, 1, 1) + 0.5 + u(-0.05, 0.05).view(n, 1, 1, 1) * strength
    return x.clamp(0, 1), m


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def seg_metrics(logits: torch.Tensor, masks: torch.Tensor) -> dict:
    """Dice similarity coefficient (mean over images) and pixel accuracy, masks at 0.5."""
    pred = logits > 0
    t = masks > 0.5
    inter = (pred & t).sum(dim=(1, 2, 3)).float()
    dsc = (2 * inter / (pred.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))).clamp(min=1)).mean().item()
    return {"dsc": dsc, "pa": (pred == t).float().mean().item()}


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch: int = 32, device: str = "cpu") -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalize(torch.from_numpy(images[i : i + batch]).unsqueeze(1)).to(device)
        out.append(model(x).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resume(ckpt: Path, model: nn.Module, opt, sched, gen: torch.Generator) -> tuple[int, float, list]:
    """Load ``ckpt`` (written by :func:`checkpoint`) into the model, optimiser, scheduler and RNGs;
    returns ``(first epoch to run, best validation score, history)``, ``(0, -1.0, [])`` if absent."""
    if not ckpt.exists():
        return 0, -1.0, []
    state = torch.load(ckpt, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"] + 1, state["best"], state["history"]


def checkpoint(ckpt: Path, model: nn.Module, opt, sched, gen: torch.Generator, epoch: int, best: float, history: list) -> None:
    """Everything :func:`resume` needs to continue after ``epoch`` exactly as an uninterrupted run."""
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best, "history": history}, ckpt)


def evaluate(task: str, model: nn.Module, split: Split, device: str) -> dict:
    out = predict(model, split.images, device=device)
    if task == "segmenter":
        return seg_metrics(out, torch.from_numpy(split.masks).unsqueeze(1).float())
    return {"acc": (out.argmax(1).numpy() == split.labels).mean().item()}


def segmenter_loss(logits: torch.Tensor, masks: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """The paper's BCE (eq. 6); ``pos_weight > 1`` makes a missed lung pixel that much dearer than a
    false one (``--pos-weight``: measured, not adopted; README "The lungs' promise")."""
    weight = None if pos_weight == 1 else torch.tensor(float(pos_weight), device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, masks, pos_weight=weight)


def pgd_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """PGD examples of normalised inputs ``x`` (eps in pixel levels, random start), for adversarial
    training; the model is put in eval mode while attacking so batch-norm statistics stay clean."""
    was = model.training
    model.eval()
    scale = 1 / (255 * 0.25)  # one pixel level in normalised units
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    e, step = eps * scale, 2.5 * eps * scale / steps
    adv = (x + torch.empty_like(x).uniform_(-e, e)).clamp(lo, hi)
    for _ in range(steps):
        adv.requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)[0]
        adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x - e), x + e).clamp(lo, hi)
    model.train(was)
    return adv.detach()


def prune_and_finetune(model: nn.Module, out: Path, tr, va, args: argparse.Namespace, gen: torch.Generator) -> dict:
    """Global magnitude pruning of every conv and linear weight (``args.prune`` of them set to
    zero), then ``args.prune_epochs`` of fine-tuning with the zeros held; best.pt is replaced by
    the pruned model. Returns the sparsity and validation accuracy before and after."""
    from torch.nn.utils import prune

    state = torch.load(out / "best.pt", weights_only=False)
    model.load_state_dict(state["model"])
    before = evaluate("classifier", model, va, args.device)["acc"]
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=args.prune)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr / 10, weight_decay=args.wd)
    best, best_state = -1.0, None
    for epoch in range(args.prune_epochs):
        model.train()
        perm = torch.randperm(len(tr.images), generator=gen)
        for i in range(0, len(perm), args.batch):
            idx = perm[i : i + args.batch].numpy()
            x, _ = augment(torch.from_numpy(tr.images[idx]).unsqueeze(1).float() / 255, None, gen)
            loss = F.cross_entropy(model(((x - 0.5) / 0.25).to(args.device)), torch.from_numpy(tr.labels[idx]).to(args.device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = evaluate("classifier", model, va, args.device)["acc"]
        print(json.dumps({"prune_epoch": epoch + 1, "val_acc": acc}), flush=True)
        if acc > best:
            best = acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    for m, name in params:
        prune.remove(m, name)  # make the zeros permanent: a plain state dict again
    total = sum(m.weight.numel() for m, _ in params)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    torch.save({"model": model.state_dict(), "arch": args.arch, "size": args.size, "task": "classifier", "epoch": state["epoch"], "pruned": args.prune}, out / "best.pt")
    return {"amount": args.prune, "sparsity": zeros / total, "val_acc_before": before, "val_acc_after": best}


def build(task: str, arch: str, internal: int) -> nn.Module:
    net = create(arch)
    return Segmenter(net, internal) if task == "segmenter" else Classifier(net, internal)


def train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = seed_everything(args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    data = Path(args.data)
    tr, va = load_split(data / "train"), load_split(data / "val")
    if args.task == "segmenter" and (tr.masks is None or va.masks is None):
        raise SystemExit(f"{data}: the segmenter needs <class>/masks for every image")
    model = build(args.task, args.arch, args.size).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    steps = args.epochs * ((len(tr.images) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    ckpt = out / "last.pt"
    start, best, history = resume(ckpt, model, opt, sched, gen)
    if start:
        print(f"resuming {out} at epoch {start}")
    key = "dsc" if args.task == "segmenter" else "acc"
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        for epoch in range(start, args.epochs):
            model.train()
            t0 = time.time()
            perm = torch.randperm(len(tr.images), generator=gen)
            task_bar = bar.add_task(f"epoch {epoch + 1}/{args.epochs}", total=len(perm))
            total = 0.0
            for i in range(0, len(perm), args.batch):
                idx = perm[i : i + args.batch].numpy()
                x = torch.from_numpy(tr.images[idx]).unsqueeze(1).float() / 255
                m = torch.from_numpy(tr.masks[idx]).unsqueeze(1).float() if args.task == "segmenter" else None
                x, m = augment(x, m, gen)
                x = ((x - 0.5) / 0.25).to(args.device)
                if args.adv_train:  # Madry et al.: half of each batch replaced by its PGD example
                    half_n = len(idx) // 2
                    x = torch.cat([x[:half_n], pgd_examples(model, x[half_n:], torch.from_numpy(tr.labels[idx[half_n:]]).to(args.device), args.adv_train, args.adv_steps)])
                y = model(x)
                if args.task == "segmenter":
                    loss = segmenter_loss(y, m.to(args.device), args.pos_weight)
                else:
                    loss = F.cross_entropy(y, torch.from_numpy(tr.labels[idx]).to(args.device), label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                bar.advance(task_bar, len(idx))
            bar.remove_task(task_bar)
            metrics = {"epoch": epoch + 1, "loss": total / len(perm), **{f"val_{k}": v for k, v in evaluate(args.task, model, va, args.device).items()}}
            metrics["seconds"] = round(time.time() - t0, 1)
            history.append(metrics)
            print(json.dumps(metrics), flush=True)
            if metrics[f"val_{key}"] > best:
                best = metrics[f"val_{key}"]
                torch.save({"model": model.state_dict(), "arch": args.arch, "size": args.size, "task": args.task, "epoch": epoch + 1}, out / "best.pt")
            checkpoint(ckpt, model, opt, sched, gen, epoch, best, history)
            with open(out / "metrics.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(history[0]))
                w.writeheader()
                w.writerows(history)
            (out / "metrics.json").write_text(json.dumps(history, indent=1))
    result = {"best_val": best, "command": "python -m medrae.models.train " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    if args.prune:
        result["pruning"] = prune_and_finetune(model, out, tr, va, args, gen)
    test_dir = data / "test"
    if test_dir.is_dir():
        state = torch.load(out / "best.pt", weights_only=False)
        model.load_state_dict(state["model"])
        result["test"] = evaluate(args.task, model, load_split(test_dir, tr.classes), args.device)
        result["best_epoch"] = state["epoch"]
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=["segmenter", "classifier"])
    p.add_argument("--data", required=True, help="folder with train/ val/ (test/) dataset directories")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default=None, help="registered architecture (default: unet_small / resnet18)")
    p.add_argument("--size", type=int, default=112, help="internal resolution")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--prune", type=float, default=0.0, help="classifier: after training, zero this fraction of weights by global magnitude, then fine-tune")
    p.add_argument("--prune-epochs", type=int, default=3)
    p.add_argument("--adv-train", type=float, default=0.0, help="classifier: PGD adversarial training at this eps (pixel levels); half of each batch")
    p.add_argument("--adv-steps", type=int, default=3)
    p.add_argument("--pos-weight", type=float, default=1.0, help="segmenter: weight of the lung pixels in the BCE (1: the paper's plain BCE)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.arch is None:
        args.arch = "unet_small" if args.task == "segmenter" else "resnet18"
    train(args)


if __name__ == "__main__":
    main()
