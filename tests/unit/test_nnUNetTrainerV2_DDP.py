"""nnU-Net's DDP trainer on a CPU (gloo, 2 processes; patch 0008): the same step as one process on the whole
batch, and the batch split. tests/workflow/test_distributed.py runs it under torchrun through `make baseline`."""
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from covidseg.runs.distributed import free_port
from nnunet.utilities.distributed import split_batch
from tests.helpers import tiny_unet, leave_process_group

WORLD = 2


def step_inputs(dim: int, batch: int):
    """A batch and its deep-supervision targets (one per output level, nearest-downsampled as nnU-Net does)."""
    generator = torch.Generator().manual_seed(3)
    shape = (8, 32, 32) if dim == 3 else (32, 32)
    data = torch.randn((batch, 1) + shape, generator=generator)
    seg = (torch.rand((batch, 1) + shape, generator=generator) > 0.7).float()
    with torch.no_grad():
        outputs = tiny_unet(dim)(data)
    targets = [torch.nn.functional.interpolate(seg, size=o.shape[2:], mode="nearest") for o in outputs]
    return data, targets


def ds_weights(net) -> np.ndarray:
    levels = len(net.conv_blocks_localization)
    weights = np.array([1 / (2 ** i) for i in range(levels)])
    weights[-1] = 0  # nnUNetTrainerV2: the lowest output is not used
    return weights / weights.sum()


def one_step(trainer, data, targets) -> dict:
    """One nnU-Net training iteration of `trainer` on this batch; returns the network's new weights."""
    trainer.run_iteration(iter([{"data": data.numpy(), "target": [t.numpy() for t in targets]}]), do_backprop=True)
    network = getattr(trainer.network, "module", trainer.network)
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def single_process_step(dim: int) -> dict:
    """nnUNetTrainerV2's own iteration (MultipleOutputLoss2 of Dice+CE, batch Dice) on the whole batch."""
    from nnunet.training.loss_functions.deep_supervision import MultipleOutputLoss2
    from nnunet.training.loss_functions.dice_loss import DC_and_CE_loss
    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
    trainer = nnUNetTrainerV2.__new__(nnUNetTrainerV2)
    trainer.network, trainer.fp16, trainer.amp_grad_scaler = tiny_unet(dim), False, None
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    trainer.loss = MultipleOutputLoss2(DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False}, {}),
                                       ds_weights(trainer.network))
    return one_step(trainer, *step_inputs(dim, 2 * WORLD))


def join_cpu_group(rank: int, port: int):
    """In a spawned test process: join the 2-process gloo group as torchrun would set it up; (rank, local, world)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), CUDA_VISIBLE_DEVICES="")
    from nnunet.utilities.distributed import init_distributed
    return init_distributed()


def rank_half(dim: int, rank: int):
    """This rank's half of the batch of step_inputs(dim, 2 * WORLD), with its targets."""
    data, targets = step_inputs(dim, 2 * WORLD)
    half = slice(2 * rank, 2 * rank + 2)
    return data[half], [t[half] for t in targets]


def ddp_rank_step(rank: int, dim: int, port: int, results: str) -> None:
    """One rank: nnUNetTrainerV2_DDP's iteration (DDP, batch Dice all-gathered) on its half of the same batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from nnunet.training.loss_functions.crossentropy import RobustCrossEntropyLoss
    from nnunet.training.network_training.nnUNetTrainerV2_DDP import nnUNetTrainerV2_DDP
    trainer = nnUNetTrainerV2_DDP.__new__(nnUNetTrainerV2_DDP)
    trainer.rank, trainer.local_rank, trainer.world_size = join_cpu_group(rank, port)
    net = tiny_unet(dim)
    trainer.ds_loss_weights, trainer.batch_dice, trainer.ce_loss = ds_weights(net), True, RobustCrossEntropyLoss()
    trainer.network, trainer.fp16 = DDP(net), False
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    weights = one_step(trainer, *rank_half(dim, rank))
    if rank == 0:
        torch.save(weights, results)
    trainer.network = None  # destroying the group under a live DDP can hang at exit
    leave_process_group()


@pytest.mark.parametrize("dim", [2, 3])
def test_two_ranks_of_batch_2_take_the_step_of_one_process_with_batch_4(dim, tmp_path):
    results = str(tmp_path / "ddp.pt")
    mp.spawn(ddp_rank_step, args=(dim, free_port(), results), nprocs=WORLD, join=True)
    ddp, single = torch.load(results), single_process_step(dim)
    assert ddp.keys() == single.keys()
    moved = [k for k in single if not torch.equal(single[k], tiny_unet(dim).state_dict()[k])]
    assert moved  # the step did change the weights
    for key in single:  # float32 sums in another order: equal to 1e-5
        assert torch.allclose(ddp[key], single[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("batch,world,expected", [(2, 2, [1, 1]), (5, 4, [2, 1, 1, 1]), (7, 3, [3, 2, 2]),
                                                  (4, 4, [1, 1, 1, 1])])
def test_the_batch_is_split_as_evenly_as_possible(batch, world, expected):
    assert split_batch(batch, world) == expected


def test_a_batch_smaller_than_the_world_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="cannot split a batch of 2 over 3 processes.*at most 2 processes"):
        split_batch(2, 3)
