"""Time in one place, as Unix seconds (the contract's timestamps).

`now()` is this process's clock; `db_now()` is the database's, as a SQL expression. Leases
(claims, heartbeats and the reconciler's staleness checks) use the database's, so that a worker
whose clock is off compares its heartbeats on the same clock as the reconciler that judges them.
"""

import time
from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


def now() -> float:
    """Current Unix time in seconds, with sub-second precision (used for ordering)."""
    return time.time()


class db_now(FunctionElement[float]):  # lower case: it reads as the SQL function it stands for
    """The database server's current Unix time in seconds, as a SQL expression."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # julianday('now') has millisecond precision; 2440587.5 is the Unix epoch's Julian day.
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now)
def _db_now_default(element: db_now, compiler: Any, **kw: Any) -> str:
    return "EXTRACT(EPOCH FROM CURRENT_TIMESTAMP)"
