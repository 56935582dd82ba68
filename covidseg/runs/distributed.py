"""Launching nnUNet_train on several processes (GPUs, nodes) with PyTorch's torchrun.

`make baseline|control|semi NPROC_PER_NODE=N` runs
    python -m torch.distributed.run --nproc_per_node=N --nnodes=M --node_rank=R --master_addr=A --master_port=P \\
        nnUNet_train <the same arguments>
and nnUNet_train trains the trainer's DDP variant (<trainer>_DDP, patch 0008) into the trainer's own folder, so
resuming, validation and prediction do not depend on the number of processes. NPROC_PER_NODE=1 and NNODES=1 (the
defaults) run nnUNet_train itself, as before. On one node a free port is chosen when MASTER_PORT is empty, so that
two jobs on one machine do not collide; several nodes must agree on MASTER_ADDR and MASTER_PORT.
"""
import argparse
import socket
import sys
from dataclasses import dataclass
from typing import List, Optional

from covidseg.core.errors import WorkflowError
from covidseg.core.workspace import executable


def free_port() -> int:
    """A TCP port nothing listens on now (the operating system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: Optional[int] = None

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node * self.nnodes > 1

    def command(self, arguments: List[str]) -> List[str]:
        """nnUNet_train with `arguments`, through torchrun when there is more than one process."""
        if not self.distributed:
            return ["nnUNet_train"] + arguments
        port = self.master_port if self.master_port is not None else free_port()
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.nproc_per_node}",
                f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", f"--master_addr={self.master_addr}",
                f"--master_port={port}", executable("nnUNet_train")] + arguments


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=int, default=1, help="training processes on this node (GPUs)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes taking part")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0 .. nnodes-1")
    parser.add_argument("--master-addr", default="127.0.0.1", help="address of the node with rank 0")
    parser.add_argument("--master-port", type=int, default=None, help="its port (one node: a free one if not given)")


def launch_from_arguments(args: argparse.Namespace) -> Launch:
    launch = Launch(args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port)
    if launch.nproc_per_node < 1 or launch.nnodes < 1:
        raise WorkflowError(f"NPROC_PER_NODE ({launch.nproc_per_node}) and NNODES ({launch.nnodes}) must be at least 1")
    if not 0 <= launch.node_rank < launch.nnodes:
        raise WorkflowError(f"NODE_RANK {launch.node_rank} is not one of the {launch.nnodes} nodes (0 .. "
                            f"{launch.nnodes - 1})")
    if launch.nnodes > 1 and (launch.master_port is None or launch.master_addr in ("127.0.0.1", "localhost")):
        raise WorkflowError(f"NNODES={launch.nnodes}: every node needs the address and port of node 0: set "
                            f"MASTER_ADDR (not {launch.master_addr}) and MASTER_PORT, the same on every node")
    return launch
