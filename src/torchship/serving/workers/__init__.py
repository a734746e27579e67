"""The worker side: each served version runs its handler in worker processes.

``pool`` keeps a version's workers at their target count; ``process`` is the server's handle on one
worker process; ``child`` is the main loop inside it; ``batch`` runs one batch through a handler's
``preprocess``/``inference``/``postprocess``; ``channel`` frames messages over the pipe between them.
Only ``child`` and ``batch`` run in the child, and neither imports the server side."""
