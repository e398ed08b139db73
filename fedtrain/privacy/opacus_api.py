"""The Opacus names fedtrain uses, imported in one place and only when DP is in use.

Importing this module imports Opacus (about a second on a small CPU), after :mod:`fedtrain.privacy._quiet_opacus`
has undone Opacus' import-time logging side effect.
"""

# isort: off
from fedtrain.privacy import _quiet_opacus  # noqa: F401  (first: undoes an Opacus import side effect)
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    compute_safe_domain_size,
    discretize,
)
from opacus.accountants.analysis.rdp import get_privacy_spent as rdp_privacy_spent
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
# isort: on

__all__ = [
    "BatchMemoryManager",
    "DPOptimizer",
    "Domain",
    "ModuleValidator",
    "PRVAccountant",
    "PoissonSubsampledGaussianPRV",
    "PrivacyEngine",
    "RDPAccountant",
    "TruncatedPrivacyRandomVariable",
    "compose_heterogeneous",
    "compute_safe_domain_size",
    "discretize",
    "rdp_privacy_spent",
]
