"""The server side's state: what is registered (``registry``), each served version with its queue and
batching (``versions``, ``batcher``), where models come from (``sources``, ``package_files``), what
survives a restart (``snapshot``) and the Prometheus metrics (``metrics``). Nothing here speaks HTTP or
runs a model: protocols drive it through ``torchship.serving.server.Server``, and it hands batches to
``torchship.serving.workers``."""
