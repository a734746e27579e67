"""Peer servers for the serving benchmarks: LitServe and TorchServe on the same package as torchship.

    from peers import benchmark_texts, litserve_server, make_benchmark_package, torchserve_server

Run from ``benchmarks/`` on ``sys.path`` (``python benchmarks/<script>.py`` puts it there). Needs the
``bench`` extra for the peers themselves: ``pip install 'torchship[bench]'``, plus Java 11+ for
TorchServe and ``wrk`` for the load (optional).
"""

from peers.package import BENCHMARK_MODEL_NAME, benchmark_texts, make_benchmark_package
from peers.processes import ServerProcess, StartError, free_port
from peers.servers import Endpoint, litserve_server, torchship_server
from peers.torchserve import build_archive, torchserve_server

__all__ = [
    "BENCHMARK_MODEL_NAME",
    "Endpoint",
    "ServerProcess",
    "StartError",
    "benchmark_texts",
    "build_archive",
    "free_port",
    "litserve_server",
    "make_benchmark_package",
    "torchserve_server",
    "torchship_server",
]
