"""PGD upper bound for grid perturbations outside the lungs (eps 8): ASR and PSNR per grid factor.

    python benchmarks/probe_grid_pgd.py   (needs runs/r18/best.pt and the cxr3 val split)
"""
import torch, numpy as np, torch.nn.functional as F
from medrae.models.data import load_split, normalize
from medrae.models.train_generator import load_classifier, dilate
torch.set_num_threads(1)
va = load_split('../shared/data/cxr3/val')
clf = load_classifier('runs/r18/best.pt', 'cpu')
idx = np.concatenate([np.flatnonzero(va.labels == c)[:15] for c in range(3)])
x = torch.from_numpy(va.images[idx]).unsqueeze(1).float(); y = torch.from_numpy(va.labels[idx])
m = dilate(torch.from_numpy(va.masks[idx]).unsqueeze(1).float(), 4)
cells = F.max_pool2d(m, 4, 4)
ok = clf(normalize(x)).argmax(1) == y
for factor, steps in ((4, 20), (2, 20)):
    g = torch.zeros(len(x), 1, 224 // factor, 224 // factor, requires_grad=True)
    cm = F.max_pool2d(m, factor, factor)
    for it in range(steps):
        d = (g * (1 - cm)).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        adv = torch.clamp(x + d, 0, 255)
        logits = clf(normalize(adv))
        wrong = logits.masked_fill(F.one_hot(y, 3).bool(), -1e9)
        loss = (logits.gather(1, y[:, None])[:, 0] - wrong.amax(1)).clamp(min=-5).sum()
        loss.backward()
        with torch.no_grad():
            g -= 1.0 * g.grad.sign(); g.clamp_(-8, 8); g.grad.zero_()
    with torch.no_grad():
        d = (torch.round(g) * (1 - cm)).repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        adv = torch.clamp(x + d, 0, 255)
        pred = clf(normalize(adv)).argmax(1)
        asr = (pred != y)[ok].float().mean().item()
        mse = ((adv - x) ** 2).mean(dim=(1, 2, 3)); psnr = (10 * torch.log10(255**2 / mse)).mean().item()
    print(f'PGD grid x{factor}, {steps} steps: ASR {asr:.3f} on {int(ok.sum())} correct, PSNR {psnr:.2f}')
