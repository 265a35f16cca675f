"""dprnn_jax: exact RNN gradients in JAX, back-propagation through time as a dynamic
programme over the Ω gradient-distance matrix Ω(j, i) = ∂Z_j/∂Z_i."""

from . import backward as backward  # noqa: E402
from . import diagnostics as diagnostics  # noqa: E402
from . import interop as interop  # noqa: E402
from . import training as training  # noqa: E402
from ._algorithms.autodiff import Autodiff as Autodiff
from ._algorithms.bptt import BPTT as BPTT
from ._algorithms.checkpoint import Checkpointed as Checkpointed
from ._algorithms.naive import Naive as Naive
from ._algorithms.omega import Omega as Omega
from ._algorithms.parallel_scan import ParallelScan as ParallelScan
from ._algorithms.registry import METHODS as METHODS
from ._algorithms.rflo import RFLO as RFLO
from ._algorithms.rtrl import RTRL as RTRL
from ._algorithms.snap import SnAp as SnAp
from ._algorithms.uoro import UORO as UORO
from ._cells.elman import cell as cell
from ._cells.elman import scan_layer as scan_layer
from ._cells.gru import GRUParams as GRUParams
from ._cells.gru import init_gru_layer as init_gru_layer
from ._cells.kinds import init_rnn as init_rnn
from ._cells.lstm import LSTMParams as LSTMParams
from ._cells.lstm import init_lstm_layer as init_lstm_layer
from ._cells.mingru import MinGRUParams as MinGRUParams
from ._cells.mingru import init_mingru_layer as init_mingru_layer
from ._core.activations import ACTIVATIONS as ACTIVATIONS
from ._core.params import LayerParams as LayerParams
from ._core.params import ReadoutParams as ReadoutParams
from ._core.params import RNNParams as RNNParams
from ._core.params import init_layer as init_layer
from ._diagnostics.alignment import GradientAlignment as GradientAlignment
from ._diagnostics.alignment import gradient_alignment as gradient_alignment
from ._diagnostics.counts import ProductCount as ProductCount
from ._diagnostics.counts import closed_form_products as closed_form_products
from ._diagnostics.counts import count_products as count_products
from ._diagnostics.gradient_flow import error_flow_norms as error_flow_norms
from ._diagnostics.gradient_flow import gradient_flow as gradient_flow
from ._diagnostics.lyapunov import DecayBound as DecayBound
from ._diagnostics.lyapunov import LyapunovEstimate as LyapunovEstimate
from ._diagnostics.lyapunov import decay_bound as decay_bound
from ._diagnostics.lyapunov import lyapunov_exponent as lyapunov_exponent
from ._diagnostics.lyapunov import lyapunov_qr as lyapunov_qr
from ._diagnostics.omega_matrix import omega_matrix as omega_matrix
from ._diagnostics.omega_norms import OmegaNorms as OmegaNorms
from ._diagnostics.omega_norms import omega_norms as omega_norms
from ._diagnostics.plotting import color_limits as color_limits
from ._diagnostics.plotting import plot_decay as plot_decay
from ._diagnostics.plotting import plot_gradient_alignment as plot_gradient_alignment
from ._diagnostics.plotting import plot_omega_triangles as plot_omega_triangles
from ._diagnostics.plotting import plot_training_curves as plot_training_curves
from ._diagnostics.plotting import plot_triangle as plot_triangle
from ._diagnostics.tolerance import ToleranceReport as ToleranceReport
from ._diagnostics.tolerance import tolerance_report as tolerance_report
from ._model.bidirectional import BidirectionalParams as BidirectionalParams
from ._model.bidirectional import bidirectional_layer as bidirectional_layer
from ._model.bidirectional import init_bidirectional_layer as init_bidirectional_layer
from ._model.gated_layers import gru_layer as gru_layer
from ._model.gated_layers import lstm_layer as lstm_layer
from ._model.layers import rnn_layer as rnn_layer
from ._model.loss import LOSSES as LOSSES
from ._model.loss import many_to_one_loss as many_to_one_loss
from ._model.loss import per_step_losses as per_step_losses
from ._model.loss import sequence_loss as sequence_loss
from ._model.network import RNNOutput as RNNOutput
from ._model.network import rnn_apply as rnn_apply
from ._model.network import rnn_forward as rnn_forward
from ._model.online import OnlineState as OnlineState
from ._model.online import online_gradient as online_gradient
from ._model.online import online_init as online_init
from ._model.online import online_step as online_step
from ._model.rtrl_online import RTRLState as RTRLState
from ._model.rtrl_online import rtrl_gradient as rtrl_gradient
from ._model.rtrl_online import rtrl_init as rtrl_init
from ._model.rtrl_online import rtrl_step as rtrl_step
from ._model.scan_cell import scan_cell as scan_cell
from ._training.checkpoint import CheckpointError as CheckpointError
from ._training.checkpoint import load_checkpoint as load_checkpoint
from ._training.checkpoint import save_checkpoint as save_checkpoint
from ._training.config import TrainConfig as TrainConfig
from ._training.distributed import DistributedConfig as DistributedConfig
from ._training.distributed import DistributedError as DistributedError
from ._training.distributed import global_batch_mesh as global_batch_mesh
from ._training.distributed import initialize_distributed as initialize_distributed
from ._training.distributed import shard_global_batch as shard_global_batch
from ._training.interrupt import TrainingInterrupted as TrainingInterrupted
from ._training.lock import RunLockedError as RunLockedError
from ._training.loop import TrainResult as TrainResult
from ._training.loop import train as train
from ._training.resume import ResumeError as ResumeError
from ._training.resume import SavedRun as SavedRun
from ._training.resume import load_run as load_run
from ._training.sharding import batch_mesh as batch_mesh
from ._training.sharding import replicate as replicate
from ._training.sharding import shard_batch as shard_batch
from ._training.step import Metrics as Metrics
from ._training.step import StepMetrics as StepMetrics
from ._training.step import batch_metrics as batch_metrics
from ._training.step import make_eval_step as make_eval_step
from ._training.step import make_train_step as make_train_step
from ._training.tasks import TASKS as TASKS
from ._training.tasks import Batch as Batch
from ._training.tasks import Task as Task
from ._training.tasks import bundled_text as bundled_text
from ._training.tasks import make_task as make_task
from ._training.tasks import sample_text as sample_text

__version__ = "0.1.0"

__all__ = [
    "OnlineState",
    "online_gradient",
    "online_init",
    "online_step",
    "plot_gradient_alignment",
    "gradient_alignment",
    "GradientAlignment",
    "ACTIVATIONS",
    "Autodiff",
    "BPTT",
    "Checkpointed",
    "Batch",
    "BidirectionalParams",
    "CheckpointError",
    "DecayBound",
    "DistributedConfig",
    "DistributedError",
    "GRUParams",
    "LOSSES",
    "LSTMParams",
    "MinGRUParams",
    "LayerParams",
    "LyapunovEstimate",
    "METHODS",
    "Metrics",
    "Naive",
    "Omega",
    "OmegaNorms",
    "ParallelScan",
    "ProductCount",
    "RNNOutput",
    "RNNParams",
    "RFLO",
    "RTRL",
    "SnAp",
    "UORO",
    "RTRLState",
    "ReadoutParams",
    "ResumeError",
    "RunLockedError",
    "SavedRun",
    "StepMetrics",
    "TASKS",
    "Task",
    "ToleranceReport",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "batch_mesh",
    "batch_metrics",
    "bidirectional_layer",
    "bundled_text",
    "cell",
    "closed_form_products",
    "color_limits",
    "count_products",
    "decay_bound",
    "error_flow_norms",
    "global_batch_mesh",
    "gradient_flow",
    "gru_layer",
    "init_bidirectional_layer",
    "init_gru_layer",
    "init_layer",
    "init_lstm_layer",
    "init_mingru_layer",
    "init_rnn",
    "initialize_distributed",
    "load_checkpoint",
    "load_run",
    "lstm_layer",
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
    "scan_cell",
    "scan_layer",
    "sequence_loss",
    "shard_batch",
    "shard_global_batch",
    "tolerance_report",
    "train",
]
