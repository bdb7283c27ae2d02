"""Choosing the order of compression methods cheaply: registered predictors, their decisions and cost,
and the scoring of predictors against measured orders (hit rate, noise, regret, cost)."""

from .measurements import Cost, Measurements, exhaustive_cost, retained
from .predictors import PREDICTORS, Decision, Predictor, absorbed_fraction, check_choice, decide, register_predictor

__all__ = ["PREDICTORS", "Cost", "Decision", "Measurements", "Predictor", "absorbed_fraction", "check_choice",
           "decide", "exhaustive_cost", "register_predictor", "retained"]
