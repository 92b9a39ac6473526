"""The handlers of the deployment examples (compose.yaml's worker): one task."""

import martinet


@martinet.task("example.add")
def add(task, a, b):
    return a + b
