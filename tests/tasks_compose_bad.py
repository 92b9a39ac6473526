"""A module whose composition names a task nobody registered: the worker must refuse to start."""

import martinet


@martinet.task("first_step")
def first_step(task):
    return {"x": 1}


martinet.compose("broken", ["first_step", "missing_step"])
