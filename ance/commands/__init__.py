"""One module per `ance` subcommand.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Heavy imports (torch, faiss, zmq) happen inside ``run``
so that ``ance --help`` stays fast. ``ance.cli`` lists the modules in
``COMMANDS``.
"""
