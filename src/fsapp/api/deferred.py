"""Work a request may leave until its response has been sent.

A WSGI server wrapper that offers it (fsapp.serve.wsgi.AfterResponse) puts a
task list in the request's environ under AFTER_RESPONSE and runs the tasks
once the body is written; without one (tests, another server) the work runs
at once. Bookkeeping such as metrics and feature logging then never adds to
the latency a client sees."""
from __future__ import annotations

AFTER_RESPONSE = "fstore.after_response"


def after_response(env: dict, fn, *args) -> None:
    """Run `fn(*args)` after the response when the server offers it, else now."""
    tasks = env.get(AFTER_RESPONSE)
    if tasks is None:
        fn(*args)
    else:
        tasks.append((fn, args))
