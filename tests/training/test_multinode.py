"""Training past one machine: two "nodes" of one process each on 127.0.0.1, wired the way a cluster wires
them (Lightning's environment: ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``; what ``deploy/kubernetes/training`` and ``deploy/slurm/train.sbatch`` set), running the
same ``torchship train`` command, publishing exactly one package to the object store.

Each node runs in a folder of its own with its own ``default_root_dir``, as on separate machines: only
node 0 holds checkpoints, evaluates and publishes.

``deploy/slurm/train.sbatch`` sets none of those variables: Lightning reads SLURM's own in each task that
``srun`` starts. Without a SLURM cluster here, the script runs under a stand-in ``srun`` (one local process
per node, with the variables SLURM gives a task) and a stand-in ``torchship`` that builds the Trainer from
the script's options and reports where Lightning placed the task.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s3_support import S3Server
from torchship.store import load_package
from torchship.store.remote import ObjectStore

pytestmark = pytest.mark.slow

NODES = 2
TIMEOUT = 300.0
# Variables that would make Lightning pick another cluster environment (SLURM, torchelastic, Kubeflow,
# MPI, LSF) than the plain one this test drives, were the tests themselves run inside such a job.
_CLUSTER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_", "LSB_", "KUBERNETES_")
_CLUSTER_VARIABLES = {"RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "JSM_NAMESPACE_RANK"}


def free_port() -> int:
    """A port nothing listens on now (node 0's rendezvous binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_environment(rank: int, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment of node ``rank``: the test's own, without any cluster's, plus Lightning's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_CLUSTER_PREFIXES) and key not in _CLUSTER_VARIABLES
    }
    env.update(extra)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NODE_RANK=str(rank),
        WORLD_SIZE=str(NODES),
        LOCAL_RANK="0",
        PYTHONWARNINGS="ignore",
    )
    return env


def train_on_two_nodes(
    csv: Path, store: str, name: str, work: Path, env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``torchship train`` as node 0 and node 1 at once; their outcomes, node 0 first."""
    port = free_port()
    command = [
        sys.executable, "-m", "torchship", "train",
        "--data", str(csv), "--vocab_size", "200", "--max_length", "64", "--batch_size", "8",
        "--store", store, "--name", name,
        "--model.d_model", "32", "--model.n_heads", "2", "--model.n_layers", "1", "--model.d_ff", "64",
        "--optim.lr", "5e-3",
        "--trainer.num_nodes", str(NODES), "--trainer.devices", "1",
        "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", "runs",
    ]  # fmt: skip
    nodes = []
    for rank in range(NODES):
        folder = work / f"node{rank}"
        folder.mkdir(parents=True)
        nodes.append(
            subprocess.Popen(
                command,
                cwd=folder,
                env=node_environment(rank, port, env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    done = []
    try:
        for node in nodes:
            stdout, stderr = node.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(node.args, node.returncode, stdout, stderr))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate()
    return done


def test_two_nodes_publish_exactly_one_package_to_the_object_store(
    topics_csv: Path, tmp_path: Path, s3_server: S3Server, s3_url: str
) -> None:
    done = train_on_two_nodes(topics_csv, s3_url, "multinode", tmp_path, s3_server.env)

    for rank, node in enumerate(done):
        assert node.returncode == 0, f"node {rank}: {node.stderr[-3000:]}"
    assert f"GLOBAL_RANK: 1, MEMBER: 2/{NODES}" in done[1].stderr  # one run of two members, not two runs
    published = [node.stdout.count("published multinode version 1") for node in done]
    assert published == [1, 0]
    assert not (tmp_path / "node1" / "runs" / "checkpoints").exists()  # node 0's files stay on node 0

    store = ObjectStore(s3_url)
    assert store.versions("multinode") == [1]
    package_dir = tmp_path / "downloaded"
    store.download("multinode", 1, package_dir)
    package = load_package(package_dir)
    assert (package.config.name, package.config.version) == ("multinode", 1)
    trainer = package.config.training["trainer"]
    assert (trainer["num_nodes"], trainer["devices"], trainer["strategy"]) == (NODES, "1", "ddp")
    metrics = json.loads((package_dir / "metrics.json").read_text(encoding="utf-8"))
    # Evaluated once, on node 0, over the whole test split: every example counted exactly once.
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 18


SLURM_SCRIPT = Path(__file__).parents[2] / "deploy" / "slurm" / "train.sbatch"
# srun on one machine: the job's tasks as local processes, each with the variables SLURM gives a task.
FAKE_SRUN = """#!/bin/bash
pids=()
for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do
  SLURM_NTASKS=$((SLURM_JOB_NUM_NODES * SLURM_NTASKS_PER_NODE)) SLURM_PROCID=$node SLURM_LOCALID=0 \\
    SLURM_NODEID=$node "$@" > "task$node.json" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || exit 1; done
"""
# Stands for torchship: builds the Trainer the way `torchship train` would from the script's options and
# prints where Lightning placed this task (no training: test_two_nodes_... above trains for real).
TRAINER_PROBE = """
import json, sys
import lightning as L
command, options = sys.argv[1], dict(zip(sys.argv[2::2], sys.argv[3::2]))
trainer = L.Trainer(
    num_nodes=int(options["--trainer.num_nodes"]), devices=int(options["--trainer.devices"]),
    strategy=options["--trainer.strategy"], accelerator=options["--trainer.accelerator"],
    logger=False, enable_checkpointing=False, enable_progress_bar=False,
)
environment = trainer.strategy.cluster_environment
print(json.dumps({
    "command": command, "options": options, "environment": type(environment).__name__,
    "global_rank": trainer.global_rank, "node_rank": trainer.node_rank, "world_size": trainer.world_size,
    "main_address": environment.main_address, "main_port": environment.main_port,
}))
"""


def test_the_slurm_script_runs_one_task_per_node_placed_by_slurm_variables(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "probe.py").write_text(TRAINER_PROBE)
    (bin_dir / "torchship-probe").write_text(
        f'#!/bin/bash\nexec {sys.executable} {tmp_path / "probe.py"} "$@"\n'
    )
    (bin_dir / "torchship-probe").chmod(0o755)
    port = free_port()
    env = node_environment(0, port, {})
    for key in ("MASTER_ADDR", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK"):  # SLURM's variables place the tasks
        env.pop(key)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        TORCHSHIP="torchship-probe",
        STORE="s3://bucket/models",
        NAME="news",
        DATA="/shared/news.csv",
        # What sbatch sets for the batch script of `--nodes=2 --ntasks-per-node=1`.
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="torchship-train",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="127.0.0.1",
    )

    done = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "--trainer.max_epochs", "6"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    tasks = [json.loads((tmp_path / f"task{node}.json").read_text()) for node in range(NODES)]
    for node, task in enumerate(tasks):
        assert task["environment"] == "SLURMEnvironment"
        assert (task["global_rank"], task["node_rank"], task["world_size"]) == (node, node, NODES)
        assert (task["main_address"], task["main_port"]) == ("127.0.0.1", port)
        assert task["command"] == "train"
        assert task["options"] == {
            "--data": "/shared/news.csv",
            "--store": "s3://bucket/models",
            "--name": "news",
            "--trainer.num_nodes": "2",
            "--trainer.devices": "1",
            "--trainer.strategy": "ddp",
            "--trainer.accelerator": "cpu",
            "--trainer.default_root_dir": f"{tmp_path}/runs/news",
            "--trainer.max_epochs": "6",
        }
