"""Training with optax: the jitted step, the loop with checkpoints and resume, the bundled
tasks, and data parallelism over devices and processes.

Every name here is also available at the top level (`dprnn_jax.train`, …).
"""

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

__all__ = [
    "TASKS",
    "Batch",
    "CheckpointError",
    "DistributedConfig",
    "DistributedError",
    "Metrics",
    "ResumeError",
    "RunLockedError",
    "SavedRun",
    "StepMetrics",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "batch_mesh",
    "batch_metrics",
    "bundled_text",
    "global_batch_mesh",
    "initialize_distributed",
    "load_checkpoint",
    "load_run",
    "make_eval_step",
    "make_task",
    "make_train_step",
    "replicate",
    "sample_text",
    "save_checkpoint",
    "shard_batch",
    "shard_global_batch",
    "train",
]
