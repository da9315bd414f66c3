"""The options of a protect run, as one typed object that travels to worker processes and Ray actors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .protect import DEFAULT_GRADIENT, MODELS_DIR
from .qc import DEFAULT_POLICY
from .refine import TransferSettings


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
    pattern: Optional[int] = None  # transfer pattern id (kernels.patterns); None: the shipped default, 0: none

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        object.__setattr__(self, "models", Path(self.models))
        object.__setattr__(self, "gradients", tuple(self.gradients) or (DEFAULT_GRADIENT,))

    def protector(self):
        """The :class:`toolkit.protect.Protector` (ONNX Runtime sessions) these settings describe."""
        from .protect import Protector

        transfer = TransferSettings(eps=self.transfer_eps, texture=0.0) if self.transfer_eps else None
        return Protector(self.models, self.device, self.eps, self.roi_margin, refine_steps=self.refine_steps, robust=self.robust,
                         gradient=list(self.gradients), margin=self.margin, roi_threshold=self.roi_threshold,
                         roi_convex=self.roi_convex, transfer_steps=self.transfer_steps, transfer_settings=transfer,
                         on_uncertain_roi=self.on_uncertain_roi, pattern=self.pattern)
