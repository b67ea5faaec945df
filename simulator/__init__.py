"""The fleet simulator: config, plan (rounds or virtual clock), traces, backends, store, report."""

from simulator.config import FleetConfig, FleetConfigError, load_config
from simulator.runner import SimulationError, run_simulation

__all__ = ["FleetConfig", "FleetConfigError", "SimulationError", "load_config", "run_simulation"]
