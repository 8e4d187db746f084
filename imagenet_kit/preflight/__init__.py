"""The ``preflight`` stage: the long run's settings tried on the host just rented, before the run (``command``), with
what it measures in ``measure``. It sits on top of the stack: it trains (engine), times steps (bench) and prices the
run (plan)."""
