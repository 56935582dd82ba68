"""Scaling of DDP training: iterations per second of Generic_UNet and Generic_UNet_MoE on 1, 2, ... processes.

Each process is one rank of a torch.distributed group (nccl, one GPU per rank, when CUDA is there; gloo on the CPU
otherwise) and trains on its own random batch of the plan's patch (batch 2 per rank, deep supervision, SGD,
mixed precision on a GPU), the network wrapped in DistributedDataParallel as nnUNetTrainerV2_DDP and
nnUNetTrainerV2_moe_DDP do. Printed per process count: the median seconds per iteration, iterations per second,
samples per second (all ranks) and the speed-up against one process. On a CPU the processes share the cores, so
the numbers show the cost of the gradient all-reduce, not a speed-up.

    python bench/ddp_scaling.py [--cpu-sized] [--processes 1 2 4] [--networks baseline moe] [--repeats 10]
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarking import backward_and_step, benchmark_plan, build, deep_supervision_loss, synchronize
from covidseg.runs.distributed import free_port


def rank_main(rank: int, world: int, port: int, job: dict, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(rank)
    net = build(job["network"], job["pooling"], job["kernels"], 3, 2, 2).to(device).train()
    net.do_ds = True
    model = DDP(net, device_ids=[rank] if cuda else None)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    x = torch.randn((2, 1, *job["patch"]), device=device)
    y = torch.randint(0, 2, (2, *job["patch"]), device=device)

    def step():
        optimizer.zero_grad()
        with torch.autocast(device.type, enabled=cuda):
            loss = deep_supervision_loss(model(x), y)
        backward_and_step(loss, optimizer, scaler)

    for _ in range(job["warmup"]):
        step()
    times = []
    for _ in range(job["repeats"]):
        synchronize(device)
        dist.barrier()
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    if rank == 0:
        results.put(sorted(times)[len(times) // 2])
    dist.destroy_process_group()


def measure(world: int, job: dict) -> float:
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(rank_main, args=(world, free_port(), job, results), nprocs=world, join=True,
                       start_method="spawn")
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-sized", action="store_true", help="patch 16x128x128 and five poolings")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="process counts (default: 1 and every GPU count up to the GPUs there are; CPU: 1 2)")
    parser.add_argument("--networks", nargs="+", default=["baseline", "moe"], choices=["baseline", "moe"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    patch, pooling, kernels = benchmark_plan(args.cpu_sized)
    gpus = torch.cuda.device_count()
    processes = args.processes or ([n for n in (1, 2, 4, 8) if n <= gpus] if gpus else [1, 2])
    if gpus and max(processes) > gpus:
        parser.error(f"{max(processes)} processes but {gpus} GPU(s)")
    print(f"{'nccl, ' + torch.cuda.get_device_name() if gpus else 'gloo, CPU'}; patch {list(patch)}, batch 2 per "
          f"process, median of {args.repeats}")
    for network in args.networks:
        job = dict(network=network, patch=patch, pooling=pooling, kernels=kernels, repeats=args.repeats,
                   warmup=args.warmup)
        single = None
        for world in processes:
            seconds = measure(world, job)
            if single is None:
                single = seconds  # the first (smallest) process count is the reference
            speedup = (world / seconds) / (processes[0] / single)
            print(f"  {network:<8} {world} process(es): {seconds:7.3f} s/iteration, {1 / seconds:6.2f} it/s, "
                  f"{2 * world / seconds:6.2f} samples/s, speed-up {speedup:4.2f}x", flush=True)


if __name__ == "__main__":
    main()
