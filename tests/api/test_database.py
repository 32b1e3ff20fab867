"""The database layer across `fork`: a child process never talks over its parent's connections."""

from __future__ import annotations

import os

from sqlalchemy import text

from app.kit.db import engine_for, session_scope


def backend_pid(url: str) -> int:
    """The Postgres server process behind the connection the pool hands out."""
    with session_scope(url) as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def in_forked_child(url: str) -> int:
    """Fork; the child reports the backend its own pool hands it, then exits."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.write(write_end, str(backend_pid(url)).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 64)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and answer, "the child could not query"
    return int(answer)


def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents_open(
    pg_url: str,
) -> None:
    # Given a parent whose pool holds an open connection (as the worker's reconciler leaves one)
    engine = engine_for(pg_url)
    engine.dispose()  # earlier tests may have left several: the parent's pool holds exactly one
    parent = backend_pid(pg_url)
    assert engine.pool.checkedin() == 1

    # When a forked child queries through the same engine, twice (a process per job)
    first_child = in_forked_child(pg_url)
    second_child = in_forked_child(pg_url)

    # Then each child had a server session of its own, and the parent's session survived them
    assert parent not in (first_child, second_child)
    assert first_child != second_child
    assert backend_pid(pg_url) == parent
