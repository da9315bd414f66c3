"""medrae bitstream stage: reversible data hiding, perturbation codecs and the payload container."""
from .errors import CapacityError, KeyMismatchError, MedraeError, NotProtectedError, PayloadError
from .rdh import RDH_METHODS, capacity, embed, extract
