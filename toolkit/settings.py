"""The options of a protect run, as one typed object that travels to worker processes and Ray actors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .protect import DEFAULT_GRADIENT, DEFAULT_SURROGATES, MODELS_DIR, PATTERN_BLOCK
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
    # the transfer stage instead of the pattern (dense sign steps against the surrogates; 0: none):
    # it is made for each image from the image itself, so nothing public can be subtracted
    transfer_steps: int = 0
    transfer_eps: int = 0  # its bound outside the ROI (the refinement may go on to eps)
    transfer_white_box: bool = False  # the white box joins the surrogates in it
    transfer_keyed_start: float = 0.0  # with a key, cells start at a random fraction of the bound drawn from it
    # share of its steps through a key-drawn resize/shift pipeline (toolkit/diversity.py), and how many
    # are drawn per image (0: a new one each step); measured, not used by a level (docs/STRENGTH.md)
    transfer_diversity: float = 0.0
    transfer_pipelines: int = 0
    give_up: bool = True  # the refinement stops early on images out of reach (False: every step for every image)
    summary: str = ""


# Chosen on cxr3/val (docs/STRENGTH.md has the candidates, their figures and the command that made them).
STRENGTHS: dict[str, Strength] = {
    # standard (val): the pattern at ±6 on all but the flattest 70 % of its free cells: 36.77 dB / 0.920 /
    # white box 90.2 % / held-out 3.8 % (floor 1.2), against ±8 on half of them (medrae 0.4.0):
    # 35.52 / 0.902 / 90.2 % / 3.7 % (1.2)
    "standard": Strength("standard", 1, eps=16, pattern_eps=6, pattern=2, pattern_block=PATTERN_BLOCK, pattern_spare_flat=0.7,
                         summary="PSNR ~36 dB, SSIM ~0.92: the image as read; the white box fooled about as often as the reference paper's (~89 %)"),
    # strong (val, 270 X-rays, with the zoo's held-out targets): the transfer stage at bound 14 with the
    # white box among its models: 30.50 dB / 0.828 / white box 90.6 % / held-out median 19.4 % (noise
    # floor 7.5 %); bound 12: 31.23 / 0.843 / 91.4 / 15.5 (5.0); 16 fell below the paper's PSNR. A
    # keyed start (transfer_keyed_start) resists the replay attack better but fools fewer (docs/STRENGTH.md).
    # The refinement never gives up on an image: white box 90.2 -> 93.3 % (val, the same run), 30.54 -> 30.37 dB
    "strong": Strength("strong", 3, eps=16, pattern_eps=16, pattern=0, transfer_steps=10, transfer_eps=14, transfer_white_box=True,
                       give_up=False,
                       summary="the reference paper's image quality (PSNR ~30 dB, SSIM ~0.83): more unseen models fooled; slower"),
}
# levels no longer offered, by the id files made with them carry (medrae info still names them)
RETIRED_LEVELS: dict[int, str] = {2: "strong (medrae 0.3: the pattern x3)"}
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
    give_up: Optional[bool] = None  # the refinement stops early on images out of reach (None: the level's)
    surrogates: tuple[str, ...] = ()  # the transfer stage's gradient files (empty: the level's, else DEFAULT_SURROGATES)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        strength(self.strength)  # a bad name fails here, before any work
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "gradients", tuple(self.gradients) or (DEFAULT_GRADIENT,))
        object.__setattr__(self, "surrogates", tuple(self.surrogates))

    def protector(self):
        """The :class:`toolkit.protect.Protector` (ONNX Runtime sessions) these settings describe."""
        from .protect import Protector

        level = strength(self.strength)
        eps = self.eps if self.eps is not None else level.eps
        steps, transfer, surrogates = self._transfer()
        # the level's pattern goes with its refinement; with the generator alone or the transfer stage
        # (which lays its own dense head) there is none, as before the levels
        refined = self.refine_steps != 0 and not (steps or transfer or surrogates)  # transfer_head, from the values above
        pattern = self.pattern if self.pattern is not None else level.pattern if refined else None
        pattern_eps = self.pattern_eps if self.pattern_eps is not None else min(level.pattern_eps, eps)
        prot = Protector(self.models, self.device, eps, self.roi_margin, refine_steps=self.refine_steps, robust=self.robust,
                         gradient=list(self.gradients), margin=self.margin, roi_threshold=self.roi_threshold,
                         roi_convex=self.roi_convex, transfer_steps=steps, transfer_settings=transfer, surrogates=surrogates,
                         on_uncertain_roi=self.on_uncertain_roi, pattern=pattern, pattern_eps=pattern_eps,
                         keyed_pattern=self.keyed_pattern,
                         pattern_block=self.pattern_block if self.pattern_block is not None else level.pattern_block,
                         pattern_spare_flat=self.pattern_spare_flat if self.pattern_spare_flat is not None else level.pattern_spare_flat,
                         pattern_gain=self.pattern_gain if self.pattern_gain is not None else level.pattern_gain,
                         give_up=level.give_up if self.give_up is None else self.give_up)
        prot.strength, prot.strength_id = self.level, self.strength_id
        return prot

    def _transfer(self) -> tuple[Optional[int], Optional[TransferSettings], Optional[list[str]]]:
        """The transfer stage's steps, settings and gradient files for the Protector (None: its
        defaults). A level with a stage has it with the refinement, the expert options changing its
        steps or bound (``transfer_steps=0``: none); otherwise the expert options alone make one."""
        level = strength(self.strength)
        if self.refine_steps != 0 and level.transfer_steps and self.transfer_steps != 0:
            ts = TransferSettings(steps=self.transfer_steps or level.transfer_steps, eps=self.transfer_eps or level.transfer_eps,
                                  texture=0.0, keyed_start=level.transfer_keyed_start,
                                  diversity=level.transfer_diversity, pipelines=level.transfer_pipelines)
            white_box = [g for g in self.gradients if g not in self.surrogates] if level.transfer_white_box else []
            return ts.steps, ts, list(self.surrogates or DEFAULT_SURROGATES) + white_box
        if level.transfer_steps and self.transfer_steps == 0:
            return None, None, None
        transfer = TransferSettings(eps=self.transfer_eps, texture=0.0) if self.transfer_eps else None
        return self.transfer_steps, transfer, list(self.surrogates) or None

    @property
    def transfer_head(self) -> bool:
        """Whether the refinement starts from the transfer stage's dense head."""
        steps, transfer, surrogates = self._transfer()
        return bool(steps or transfer or surrogates)

    @property
    def strength_id(self) -> int:
        """The level's id for the payload's header; 0 where an expert option changed the level."""
        return 0 if self.level.endswith("(custom)") else strength(self.strength).ident

    @property
    def level(self) -> str:
        """The strength as the report names it: the level, or ``custom`` where an expert option changed it."""
        changed = (any(v is not None for v in (self.eps, self.pattern_eps, self.pattern, self.pattern_block, self.pattern_spare_flat, self.pattern_gain))
                   or not self.keyed_pattern or self.give_up is not None or self.transfer_steps is not None or self.transfer_eps
                   or self.surrogates or self.refine_steps is not None or self.margin is not None or self.robust)
        return f"{self.strength} (custom)" if changed else self.strength
