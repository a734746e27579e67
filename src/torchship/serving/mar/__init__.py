"""TorchServe archives (``.mar``) and their handlers, served as they are, without Java.

``archive`` unpacks an archive safely and reads its manifest and ``model-config.yaml`` (server side);
``handler`` runs its TorchServe handler in a worker process behind the worker contract, through TorchServe's
own ``ts`` package (the ``torchserve`` extra); ``properties`` reads TorchServe's ``config.properties``.
"""
