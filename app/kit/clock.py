"""Time in one place, as Unix seconds (the contract's timestamps)."""

import time


def now() -> float:
    """Current Unix time in seconds, with sub-second precision (used for ordering)."""
    return time.time()
