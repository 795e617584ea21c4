"""Worker processes come from a fork server, yet see the main process's current environment and directory."""

import os
from concurrent.futures import ProcessPoolExecutor

from learnforget.study import workers


def _where() -> tuple[str | None, str]:
    return os.environ.get("LEARNFORGET_WORKER_PROBE"), os.getcwd()


def test_workers_see_the_environment_and_directory_of_the_moment(tmp_path, monkeypatch):
    ctx = workers.context()
    assert ctx.get_start_method() == "forkserver"  # Linux: workers start without importing anything again
    with ProcessPoolExecutor(
        1, mp_context=ctx, initializer=workers.initialize, initargs=workers.initializer_args()
    ) as pool:
        before = pool.submit(_where).result()
    # The fork server keeps running with the environment it started with; a later pool must not see that.
    monkeypatch.setenv("LEARNFORGET_WORKER_PROBE", "set after the server started")
    monkeypatch.chdir(tmp_path)
    with ProcessPoolExecutor(
        1, mp_context=ctx, initializer=workers.initialize, initargs=workers.initializer_args()
    ) as pool:
        after = pool.submit(_where).result()
    assert before[0] is None
    assert after == ("set after the server started", str(tmp_path))
