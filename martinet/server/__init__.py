"""The server (`martinet serve`): a core of decisions without sockets (core.py and the
modules beside it), client requests as a table of functions (ops.py), and the loop that
owns the ZeroMQ sockets (loop.py). See DESIGN.md, "One writer, one loop"."""
