"""The options of a protect run, as one typed object that travels to worker processes and Ray actors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .protect import DEFAULT_GRADIENT, MODELS_DIR
from .qc import DEFAULT_POLICY
from .refine import TransferSettings


@dataclass(frozen=True)
class Strength:
    """One documented operating point of ``medrae protect --strength`` (docs/STRENGTH.md): the
    bound outside the ROI, the transfer pattern and its amplitude, the refinement. The lungs'
    promise is the same at every level (no ROI pixel moves by more than one level)."""

    name: str
    eps: int  # the refinement's bound outside the ROI (1/255 units)
    pattern_eps: int  # the transfer pattern's amplitude
    pattern: Optional[int] = None  # transfer pattern id (None: the shipped default)
    pattern_block: int = 0  # cells per independently keyed square of the pattern (0: one placement)
    summary: str = ""


# Chosen on cxr3/val (docs/STRENGTH.md has the sweep and the command that made it).
STRENGTHS: dict[str, Strength] = {
    "standard": Strength("standard", eps=8, pattern_eps=8, pattern_block=8, summary="PSNR ~34.5 dB: the image as read, white box fooled, a little transfer"),
    "strong": Strength("strong", eps=16, pattern_eps=16, pattern_block=8, summary="the reference paper's image quality (PSNR ~29.5 dB): more unseen models fooled"),
}
DEFAULT_STRENGTH = "standard"


def strength(name: str) -> Strength:
    """The level called ``name`` (:data:`STRENGTHS`)."""
    try:
        return STRENGTHS[name]
    except KeyError:
        raise ValueError(f"unknown strength {name!r}; choose one of {', '.join(STRENGTHS)}") from None


@dataclass(frozen=True)
class ProtectSettings:
    """Everything but the files and the key that decides a protected file's bytes, plus how the
    batch runs (``batch_size``, ``with_ssim``). Two runs with equal settings and key protect a file
    to the same pixels (the encryption nonce aside), on one machine or on a cluster.

    ``max_roi_change``: the largest change the hiding may make inside the ROI, in levels (1: the
    default, 0: never, None: no bound, ``--rdh-in-roi``). ``gradients``: the white-box model files.
    The other fields are those of :class:`toolkit.protect.Protector` and the CLI's options.
    """

    eps: Optional[int] = None
    models: Path = MODELS_DIR
    device: str = "auto"
    batch_size: int = 16
    method: Optional[str] = None
    codec: Optional[str] = None
    with_ssim: bool = False
    max_rdh_change: int = 0
    max_roi_change: Optional[int] = 1
    refine_steps: Optional[int] = None
    robust: bool = False
    gradients: tuple[str, ...] = field(default_factory=lambda: (DEFAULT_GRADIENT,))
    margin: Optional[float] = None
    roi_margin: Optional[int] = None
    roi_threshold: Optional[float] = None
    roi_convex: bool = False
    transfer_steps: Optional[int] = None
    transfer_eps: Optional[int] = None
    on_uncertain_roi: str = DEFAULT_POLICY
    pattern: Optional[int] = None  # transfer pattern id (kernels.patterns); None: the level's, 0: none
    strength: str = DEFAULT_STRENGTH  # the operating point (STRENGTHS); eps / pattern_eps / pattern given here override it
    pattern_eps: Optional[int] = None  # the transfer pattern's amplitude; None: the level's
    keyed_pattern: bool = True  # the pattern's placement drawn from the key (False: the public placement)
    pattern_block: Optional[int] = None  # cells per independently keyed square (None: the level's; 0: one placement)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        strength(self.strength)  # a bad name fails here, before any work
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "gradients", tuple(self.gradients) or (DEFAULT_GRADIENT,))

    def protector(self):
        """The :class:`toolkit.protect.Protector` (ONNX Runtime sessions) these settings describe."""
        from .protect import Protector

        transfer = TransferSettings(eps=self.transfer_eps, texture=0.0) if self.transfer_eps else None
        level = strength(self.strength)
        eps = self.eps if self.eps is not None else level.eps
        pattern = self.pattern if self.pattern is not None else level.pattern
        pattern_eps = self.pattern_eps if self.pattern_eps is not None else min(level.pattern_eps, eps)
        prot = Protector(self.models, self.device, eps, self.roi_margin, refine_steps=self.refine_steps, robust=self.robust,
                         gradient=list(self.gradients), margin=self.margin, roi_threshold=self.roi_threshold,
                         roi_convex=self.roi_convex, transfer_steps=self.transfer_steps, transfer_settings=transfer,
                         on_uncertain_roi=self.on_uncertain_roi, pattern=pattern, pattern_eps=pattern_eps,
                         keyed_pattern=self.keyed_pattern,
                         pattern_block=self.pattern_block if self.pattern_block is not None else level.pattern_block)
        prot.strength = self.level
        return prot

    @property
    def level(self) -> str:
        """The strength as the report names it: the level, or ``custom`` where an expert option changed it."""
        changed = self.eps is not None or self.pattern_eps is not None or self.transfer_steps or self.transfer_eps
        return f"{self.strength} (custom)" if changed else self.strength
