"""The paper's toy models (section 4): planted superposed features and a Gaussian control, through random
networks, fitted with sweeps of ReLU-L1 SAEs. Entry points: `load_toy_config` and `run_toy`."""

from randsae.toy.config import ToyConfig, load_toy_config
from randsae.toy.results import ToyResult, ToyRow
from randsae.toy.run import run_toy

__all__ = ["ToyConfig", "ToyResult", "ToyRow", "load_toy_config", "run_toy"]
