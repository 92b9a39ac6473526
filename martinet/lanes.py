"""Moved to martinet.server.lanes (issue 24); kept so that old imports still work."""

from martinet.server.lanes import *  # noqa: F403
from martinet.server.lanes import (  # noqa: F401
    DEFAULT_QUEUE,
    ORDERS,
    RATE_LOOKBACK,
    Lane,
    Lanes,
    Queue,
    lane_settings,
    queue_columns,
    rate_of,
    rate_window,
)
