"""Log lines of the `serve_app` modules, inside a replica, go where Ray Serve's own go."""

import logging


def use_serve_log_handlers() -> None:
    """Route `serve_app.*` loggers through the `ray.serve` handlers of this replica.

    Ray Serve configures only its own logger in a replica (files under the session's
    logs/serve/, with request ids); without this, our INFO lines would be dropped.
    """
    serve_logger = logging.getLogger("ray.serve")
    ours = logging.getLogger("serve_app")
    ours.setLevel(logging.INFO)
    if serve_logger.handlers:
        ours.handlers = list(serve_logger.handlers)
        ours.propagate = False
