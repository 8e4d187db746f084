"""The ``plan`` stage: hours and dollars for a recipe before renting. ``catalog`` holds every GPU and instance fact
once; ``throughput`` and ``host_fit`` read measured rows (bench/results/) before any published figure; ``estimate``
prices one recipe on one GPU setup, ``targets`` every schedule on every instance; ``command`` is the CLI."""
