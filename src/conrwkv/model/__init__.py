"""The RWKV-7 / RWKV-6 / RWKV-5.2 (Con-RWKV) language model and its recurrent state."""

from ..config import ModelConfig
from .graph_step import RNNStepper, initial_state
from .rwkv import RWKV
from .state import LayerState, RWKVState
from .stepper_cache import StepperCache

__all__ = ["LayerState", "ModelConfig", "RNNStepper", "RWKV", "RWKVState", "StepperCache",
           "initial_state"]
