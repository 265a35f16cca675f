"""dprnn_jax: exact RNN gradients in JAX, back-propagation through time as a dynamic
programme over the Ω gradient-distance matrix Ω(j, i) = ∂Z_j/∂Z_i."""

from ._activations import ACTIVATIONS as ACTIVATIONS
from ._adaptive import ToleranceReport as ToleranceReport
from ._adaptive import tolerance_report as tolerance_report
from ._bidirectional import BidirectionalParams as BidirectionalParams
from ._bidirectional import bidirectional_layer as bidirectional_layer
from ._bidirectional import init_bidirectional_layer as init_bidirectional_layer
from ._cell import cell as cell
from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import save_checkpoint as save_checkpoint
from ._counts import ProductCount as ProductCount
from ._counts import closed_form_products as closed_form_products
from ._counts import count_products as count_products
from ._forward import scan_layer as scan_layer
from ._gradient_flow import error_flow_norms as error_flow_norms
from ._gradient_flow import gradient_flow as gradient_flow
from ._layer import METHODS as METHODS
from ._layer import rnn_layer as rnn_layer
from ._loss import LOSSES as LOSSES
from ._loss import many_to_one_loss as many_to_one_loss
from ._loss import per_step_losses as per_step_losses
from ._loss import sequence_loss as sequence_loss
from ._lyapunov import DecayBound as DecayBound
from ._lyapunov import LyapunovEstimate as LyapunovEstimate
from ._lyapunov import decay_bound as decay_bound
from ._lyapunov import lyapunov_exponent as lyapunov_exponent
from ._lyapunov import lyapunov_qr as lyapunov_qr
from ._network import RNNOutput as RNNOutput
from ._network import rnn_apply as rnn_apply
from ._network import rnn_forward as rnn_forward
from ._omega import omega_matrix as omega_matrix
from ._omega_norms import OmegaNorms as OmegaNorms
from ._omega_norms import omega_norms as omega_norms
from ._params import LayerParams as LayerParams
from ._params import ReadoutParams as ReadoutParams
from ._params import RNNParams as RNNParams
from ._params import init_layer as init_layer
from ._params import init_rnn as init_rnn
from ._plotting import plot_decay as plot_decay
from ._plotting import plot_omega_triangles as plot_omega_triangles
from ._plotting import plot_training_curves as plot_training_curves
from ._plotting import plot_triangle as plot_triangle
from ._rtrl_online import RTRLState as RTRLState
from ._rtrl_online import rtrl_gradient as rtrl_gradient
from ._rtrl_online import rtrl_init as rtrl_init
from ._rtrl_online import rtrl_step as rtrl_step
from ._sharding import batch_mesh as batch_mesh
from ._sharding import replicate as replicate
from ._sharding import shard_batch as shard_batch
from ._tasks import TASKS as TASKS
from ._tasks import Batch as Batch
from ._tasks import Task as Task
from ._tasks import make_task as make_task
from ._tasks import sample_text as sample_text
from ._train_loop import TrainConfig as TrainConfig
from ._train_loop import TrainResult as TrainResult
from ._train_loop import train as train
from ._training import Metrics as Metrics
from ._training import StepMetrics as StepMetrics
from ._training import batch_metrics as batch_metrics
from ._training import make_eval_step as make_eval_step
from ._training import make_train_step as make_train_step

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Batch",
    "BidirectionalParams",
    "CheckpointError",
    "DecayBound",
    "LOSSES",
    "LayerParams",
    "LyapunovEstimate",
    "METHODS",
    "Metrics",
    "OmegaNorms",
    "ProductCount",
    "RNNOutput",
    "RNNParams",
    "RTRLState",
    "ReadoutParams",
    "StepMetrics",
    "TASKS",
    "Task",
    "ToleranceReport",
    "TrainConfig",
    "TrainResult",
    "batch_mesh",
    "batch_metrics",
    "bidirectional_layer",
    "cell",
    "closed_form_products",
    "count_products",
    "decay_bound",
    "error_flow_norms",
    "gradient_flow",
    "init_bidirectional_layer",
    "init_layer",
    "init_rnn",
    "load_checkpoint",
    "lyapunov_exponent",
    "lyapunov_qr",
    "make_eval_step",
    "make_task",
    "make_train_step",
    "many_to_one_loss",
    "omega_matrix",
    "omega_norms",
    "per_step_losses",
    "plot_decay",
    "plot_omega_triangles",
    "plot_training_curves",
    "plot_triangle",
    "replicate",
    "rnn_apply",
    "rnn_forward",
    "rnn_layer",
    "rtrl_gradient",
    "rtrl_init",
    "rtrl_step",
    "sample_text",
    "save_checkpoint",
    "scan_layer",
    "sequence_loss",
    "shard_batch",
    "tolerance_report",
    "train",
]
