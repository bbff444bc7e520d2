"""The restart policy as pure functions: the first failure restarts at once, later ones wait a full-jitter
exponential delay from base_delay capped at max_delay, max_attempts failures in a row give up, and a run of
stable_after seconds forgives the past. The jitter is drawn from a seed, so a replay draws the same delays."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import cast

from clawsvc.config import ReconnectConfig


def restart_delay(attempts: int, config: ReconnectConfig, seed: int) -> tuple[float | None, int]:
    """(delay before the next start, next seed) after failure number `attempts`; delay None means give up."""
    if config.max_attempts and attempts > config.max_attempts:
        return None, seed
    if attempts == 1:
        return 0.0, seed
    import tenacity  # not at start: a first restart needs none of it

    cap = tenacity.wait_exponential(multiplier=config.base_delay, max=config.max_delay)
    # wait_exponential reads only attempt_number; a real RetryCallState would read the clock
    high = float(cap(cast(tenacity.RetryCallState, SimpleNamespace(attempt_number=attempts - 1))))
    draw = random.Random(seed)
    return draw.uniform(0.0, high), draw.getrandbits(63)


def forgiven(attempts: int, ran: float, config: ReconnectConfig) -> bool:
    """True when a run of `ran` seconds resets a non-zero attempt counter."""
    return attempts > 0 and ran >= config.stable_after
