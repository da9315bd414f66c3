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
    ident: int  # recorded in each file's public header (medrae info); never reused
    eps: int  # the refinement's bound outside the ROI (1/255 units)
    pattern_eps: int  # the transfer pattern's amplitude
    pattern: Optional[int] = None  # transfer pattern id (None: the shipped default)
    pattern_block: int = 0  # cells per independently keyed square of the pattern (0: one placement)
    pattern_spare_flat: float = 0.0  # fraction of the flattest free cells the pattern leaves out
    pattern_gain: int = 1  # the pattern's levels multiplied by this, then clipped to pattern_eps
    summary: str = ""


# Chosen on cxr3/val (docs/STRENGTH.md has the candidates, their figures and the command that made them).
STRENGTHS: dict[str, Strength] = {
    "standard": Strength("standard", 1, eps=16, pattern_eps=8, pattern=2, pattern_block=8, pattern_spare_flat=0.5,
                         summary="PSNR ~35 dB, SSIM ~0.90: the image as read; the white box fooled as often as the reference paper's"),
    "strong": Strength("strong", 2, eps=16, pattern_eps=16, pattern=2, pattern_block=8, pattern_gain=3,
                       summary="the reference paper's image quality (PSNR ~30 dB, SSIM ~0.82): more unseen models fooled"),
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
    pattern_spare_flat: Optional[float] = None  # the flattest free cells the pattern leaves out (None: the level's)
    pattern_gain: Optional[int] = None  # the pattern's levels multiplied by this before the clip (None: the level's)

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
        # the level's pattern goes with its refinement; with the generator alone or the transfer stage
        # (which lays its own dense head) there is none, as before the levels
        refined = self.refine_steps != 0 and not (self.transfer_steps or self.transfer_eps)
        pattern = self.pattern if self.pattern is not None else level.pattern if refined else None
        pattern_eps = self.pattern_eps if self.pattern_eps is not None else min(level.pattern_eps, eps)
        prot = Protector(self.models, self.device, eps, self.roi_margin, refine_steps=self.refine_steps, robust=self.robust,
                         gradient=list(self.gradients), margin=self.margin, roi_threshold=self.roi_threshold,
                         roi_convex=self.roi_convex, transfer_steps=self.transfer_steps, transfer_settings=transfer,
                         on_uncertain_roi=self.on_uncertain_roi, pattern=pattern, pattern_eps=pattern_eps,
                         keyed_pattern=self.keyed_pattern,
                         pattern_block=self.pattern_block if self.pattern_block is not None else level.pattern_block,
                         pattern_spare_flat=self.pattern_spare_flat if self.pattern_spare_flat is not None else level.pattern_spare_flat,
                         pattern_gain=self.pattern_gain if self.pattern_gain is not None else level.pattern_gain)
        prot.strength, prot.strength_id = self.level, self.strength_id
        return prot

    @property
    def strength_id(self) -> int:
        """The level's id for the payload's header; 0 where an expert option changed the level."""
        return 0 if self.level.endswith("(custom)") else strength(self.strength).ident

    @property
    def level(self) -> str:
        """The strength as the report names it: the level, or ``custom`` where an expert option changed it."""
        changed = (any(v is not None for v in (self.eps, self.pattern_eps, self.pattern, self.pattern_block, self.pattern_spare_flat, self.pattern_gain))
                   or not self.keyed_pattern or self.transfer_steps or self.transfer_eps)
        return f"{self.strength} (custom)" if changed else self.strength
