"""Gradient algorithms as values, and the protocol they implement.

Pass one as `method=` anywhere (`rnn_layer`, `rnn_apply`, `sequence_loss`,
`make_train_step`, `TrainConfig`, …):

    >>> import dprnn_jax as dj
    >>> algorithm = dj.Omega(truncation=32)
    >>> algorithm == dj.backward.resolve_method("omega", truncation=32)
    True

Every name here except the protocol classes is also available at the top level.
"""

from ._algorithms.autodiff import Autodiff as Autodiff
from ._algorithms.base import GradientAlgorithm as GradientAlgorithm
from ._algorithms.bptt import BPTT as BPTT
from ._algorithms.checkpoint import Checkpointed as Checkpointed
from ._algorithms.checkpoint import checkpoint_plan as checkpoint_plan
from ._algorithms.naive import Naive as Naive
from ._algorithms.omega import Omega as Omega
from ._algorithms.parallel_scan import ParallelScan as ParallelScan
from ._algorithms.registry import ALGORITHMS as ALGORITHMS
from ._algorithms.registry import METHODS as METHODS
from ._algorithms.registry import algorithm_from_dict as algorithm_from_dict
from ._algorithms.registry import resolve_method as resolve_method
from ._algorithms.rflo import RFLO as RFLO
from ._algorithms.rtrl import RTRL as RTRL
from ._algorithms.snap import SnAp as SnAp
from ._algorithms.uoro import UORO as UORO
from ._core.error_flow import ErrorFlow as ErrorFlow
from ._core.jacobian import DiagonalJacobian as DiagonalJacobian
from ._core.jacobian import ElmanJacobian as ElmanJacobian
from ._core.jacobian import StepJacobian as StepJacobian
from ._model.online import OnlineState as OnlineState
from ._model.online import online_gradient as online_gradient
from ._model.online import online_init as online_init
from ._model.online import online_step as online_step
from ._model.rtrl_online import RTRLState as RTRLState
from ._model.rtrl_online import rtrl_gradient as rtrl_gradient
from ._model.rtrl_online import rtrl_init as rtrl_init
from ._model.rtrl_online import rtrl_step as rtrl_step

__all__ = [
    "OnlineState",
    "online_gradient",
    "online_init",
    "online_step",
    "ALGORITHMS",
    "BPTT",
    "Checkpointed",
    "METHODS",
    "RFLO",
    "RTRL",
    "SnAp",
    "UORO",
    "Autodiff",
    "DiagonalJacobian",
    "ElmanJacobian",
    "ErrorFlow",
    "GradientAlgorithm",
    "Naive",
    "Omega",
    "ParallelScan",
    "RTRLState",
    "StepJacobian",
    "algorithm_from_dict",
    "checkpoint_plan",
    "resolve_method",
    "rtrl_gradient",
    "rtrl_init",
    "rtrl_step",
]
