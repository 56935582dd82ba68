"""nnUNetTrainerV2_moe_DDP on a CPU (gloo, 2 processes): one step of 2 ranks x batch 2 equals one step of the
single-process MoE trainer on the 4 samples (gate noise off; the load-balancing loss and the batch Dice over all
ranks); `make semi NPROC_PER_NODE=2` trains, is killed, resumes and writes every file once."""
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import tiny_moe, leave_process_group
from covidseg.runs.distributed import free_port
from tests.unit.test_nnUNetTrainerV2_DDP import WORLD, ds_weights, join_cpu_group, one_step, rank_half, step_inputs


def moe_network(dim: int):
    """The tiny MoE with a gate that prefers different experts for different inputs."""
    net = tiny_moe(dim, num_experts=3, top_k=2)
    with torch.no_grad():
        net.gate.w_gate.weight.copy_(torch.randn(net.gate.w_gate.weight.shape,
                                                 generator=torch.Generator().manual_seed(7)) * 5)
    return net


def without_gate_noise():
    """The gate's noise drawn as zeros: the same choice on one process and on two. The gate stays in training
    mode, so its noise layer is in the graph (with a zero gradient), as in real training."""
    return mock.patch("torch.randn_like", torch.zeros_like)


def moe_trainer(cls, network, loss):
    """`cls` built by hand with what its iteration needs; `loss` the deep-supervision loss around Dice+CE."""
    from nnunet.training.loss_functions.consistency import ConsistencySettings
    from nnunet.training.network_training.nnUNetTrainerV2_moe import MoESettings
    trainer = cls.__new__(cls)
    trainer.network, trainer.fp16, trainer.amp_grad_scaler, trainer.epoch = network, False, None, 0
    trainer.optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    trainer.loss, trainer.ds_loss_weights, trainer.batch_dice = loss, ds_weights(network), True
    trainer.moe, trainer.consistency = MoESettings(balance_alpha=0.5), ConsistencySettings()  # lambda 0 at epoch 0
    trainer.unlabeled_gen, trainer.sites, trainer.routing_usage = None, {}, None
    trainer.start_epoch_records()
    return trainer


def single_process_moe_step(dim: int) -> dict:
    from nnunet.training.loss_functions.deep_supervision import MultipleOutputLoss2
    from nnunet.training.loss_functions.dice_loss import DC_and_CE_loss
    from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe
    network = moe_network(dim)
    trainer = moe_trainer(nnUNetTrainerV2_moe, network, MultipleOutputLoss2(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False}, {}), ds_weights(network)))
    with without_gate_noise():
        weights = one_step(trainer, *step_inputs(dim, 2 * WORLD))
    return weights, trainer._epoch_stats[0]["usage"]


def ddp_moe_rank_step(rank: int, dim: int, port: int, results: str) -> None:
    """One rank: nnUNetTrainerV2_moe_DDP's iteration on its half of the same batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from nnunet.training.loss_functions.distributed_losses import DistributedDiceCELoss, EveryOutputLoss
    from nnunet.training.network_training.nnUNetTrainerV2_moe_DDP import nnUNetTrainerV2_moe_DDP
    network = moe_network(dim)
    trainer = moe_trainer(nnUNetTrainerV2_moe_DDP, network,
                          EveryOutputLoss(DistributedDiceCELoss(batch_dice=True), ds_weights(network)))
    trainer.rank, trainer.local_rank, trainer.world_size = join_cpu_group(rank, port)
    trainer.ddp, trainer._gradients_checked = DDP(trainer.network), False
    with without_gate_noise():
        weights = one_step(trainer, *rank_half(dim, rank))
    usage = trainer.epoch_entry()["usage"]  # all-reduced over the ranks
    if rank == 0:
        torch.save((weights, usage), results)
    trainer.ddp = None  # destroying the group under a live DDP can hang at exit
    leave_process_group()


@pytest.mark.parametrize("dim", [2, 3])
def test_two_moe_ranks_of_batch_2_take_the_step_of_one_process_with_batch_4(dim, tmp_path):
    results = str(tmp_path / "ddp.pt")
    mp.spawn(ddp_moe_rank_step, args=(dim, free_port(), results), nprocs=WORLD, join=True)
    (ddp, usage), (single, single_usage) = torch.load(results), single_process_moe_step(dim)
    assert ddp.keys() == single.keys()
    assert usage == pytest.approx(single_usage, abs=1e-4)  # the logged usage is the global batch's
    assert len([u for u in single_usage if u > 0]) > 1  # the batch really was split over experts
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5, rtol=1e-4), key
