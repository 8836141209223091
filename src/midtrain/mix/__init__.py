"""Mixtures: a mix spec (sources, ratios, caps) and the exact, resumable sampler over token stores."""

from midtrain.mix.sampler import MixtureSampler, allocate
from midtrain.mix.spec import RATIO_TOL, MixComponent, check_ratios, parse_mix, validate_mix

__all__ = [
    "RATIO_TOL",
    "MixComponent",
    "MixtureSampler",
    "allocate",
    "check_ratios",
    "parse_mix",
    "validate_mix",
]
