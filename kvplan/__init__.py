"""kvplan: what a context length costs in memory, compute and money, for every kind of attention.

The estimate path (this package minus kvplan.models and kvplan.profilers) never imports torch.
"""

from .api import estimate, estimator_warnings, estimators
from .estimator import Deployment, Estimator
from .plan import plan
from .presets import PRESETS, get_preset, load_model
from .units import InputError

__all__ = ["estimate", "estimators", "estimator_warnings", "plan", "Deployment", "Estimator", "PRESETS",
           "get_preset", "load_model", "InputError"]
__version__ = "0.1.0"
