"""nnUNetTrainerV2_meanteacher_DDP on a CPU (gloo, 2 processes): one supervised step of 2 ranks x batch 2 equals one
step of the single-process mean teacher on the 4 samples, and its teacher follows the same student; with the
consistency term on, both ranks' students go through DistributedDataParallel and stay equal, and so do their
teachers."""
import pytest
import torch
import torch.multiprocessing as mp

from covidseg.runs.distributed import free_port
from tests.helpers import batch, tiny_unet, leave_process_group
from tests.unit.test_nnUNetTrainerV2_DDP import WORLD, ds_weights, join_cpu_group, one_step, rank_half, step_inputs

EMA_DECAY = 0.9


def mean_teacher(cls, network, loss, consistency_on: bool):
    """`cls` built by hand with what its iteration needs; the consistency term's weight 0 or 1 at epoch 0."""
    from nnunet.training.loss_functions.consistency import ConsistencySettings
    trainer = cls.__new__(cls)
    trainer.network, trainer.fp16, trainer.amp_grad_scaler, trainer.epoch = network, False, None, 0
    trainer.optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    trainer.loss, trainer.ds_loss_weights, trainer.batch_dice = loss, ds_weights(network), True
    trainer.consistency = ConsistencySettings(warmup_epochs=0, rampup_epochs=0, lambda_max=1.0, threshold=0.5) \
        if consistency_on else ConsistencySettings()  # the default: weight 0 while warming up
    trainer.ema_decay, trainer.teacher, trainer._epoch_stats = EMA_DECAY, None, []
    trainer.unlabeled_gen = None
    trainer.ensure_teacher()  # as run_training does: the teacher starts as the student
    return trainer


def weights_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def single_process_step(dim: int):
    from nnunet.training.loss_functions.deep_supervision import MultipleOutputLoss2
    from nnunet.training.loss_functions.dice_loss import DC_and_CE_loss
    from nnunet.training.network_training.nnUNetTrainerV2_meanteacher import nnUNetTrainerV2_meanteacher
    network = tiny_unet(dim)
    trainer = mean_teacher(nnUNetTrainerV2_meanteacher, network, MultipleOutputLoss2(
        DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False}, {}), ds_weights(network)), False)
    student = one_step(trainer, *step_inputs(dim, 2 * WORLD))
    return student, weights_of(trainer.teacher)


def ddp_rank_step(rank: int, dim: int, port: int, results: str, consistency_on: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from nnunet.training.loss_functions.distributed_losses import DistributedDiceCELoss, EveryOutputLoss
    from nnunet.training.network_training.nnUNetTrainerV2_meanteacher_DDP import nnUNetTrainerV2_meanteacher_DDP
    network = tiny_unet(dim)
    trainer = mean_teacher(nnUNetTrainerV2_meanteacher_DDP, network,
                           EveryOutputLoss(DistributedDiceCELoss(batch_dice=True), ds_weights(network)), consistency_on)
    trainer.rank, trainer.local_rank, trainer.world_size = join_cpu_group(rank, port)
    trainer.ddp, trainer._gradients_checked = DDP(trainer.network), False
    unlabeled = batch(dim, n=2, seed=10 + rank)  # each rank its own unlabelled batch and strong view
    trainer.unlabeled_gen = iter([{"data": unlabeled.numpy()}])
    torch.manual_seed(rank)
    student = one_step(trainer, *rank_half(dim, rank))
    consistency = trainer._epoch_stats[0]["consistency"]
    torch.save((student, weights_of(trainer.teacher), consistency), results.format(rank=rank))
    trainer.ddp = None  # destroying the group under a live DDP can hang at exit
    leave_process_group()


def assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:  # float32 sums in another order: equal to 1e-5
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.parametrize("dim", [2, 3])
def test_two_mean_teacher_ranks_of_batch_2_take_the_step_of_one_process_with_batch_4(dim, tmp_path):
    results = str(tmp_path / "rank{rank}.pt")
    mp.spawn(ddp_rank_step, args=(dim, free_port(), results, False), nprocs=WORLD, join=True)
    (student, teacher, consistency), (single_student, single_teacher) = torch.load(results.format(rank=0)), \
        single_process_step(dim)
    assert consistency is None  # warming up: no unlabelled term
    start = tiny_unet(dim).state_dict()
    assert [k for k in single_student if not torch.equal(single_student[k], start[k])]  # the step moved the student
    assert_close(student, single_student)
    assert_close(teacher, single_teacher)
    for key, value in start.items():  # the teacher moved a tenth of the way to the student (EMA 0.9)
        if value.is_floating_point() and "running" not in key and "num_batches" not in key:
            assert torch.allclose(teacher[key], EMA_DECAY * value + (1 - EMA_DECAY) * student[key], atol=1e-6)


def test_with_the_consistency_term_both_ranks_keep_one_student_and_one_teacher(tmp_path):
    results = str(tmp_path / "rank{rank}.pt")
    mp.spawn(ddp_rank_step, args=(3, free_port(), results, True), nprocs=WORLD, join=True)
    (student0, teacher0, consistency0), (student1, teacher1, consistency1) = (
        torch.load(results.format(rank=r)) for r in range(WORLD))
    assert consistency0 is not None and consistency1 is not None and consistency0 != consistency1  # own batches
    for key in student0:  # DDP averaged the gradients of both ranks' supervised and consistency terms
        assert torch.equal(student0[key], student1[key]), key
        assert torch.equal(teacher0[key], teacher1[key]), key
    supervised_only = str(tmp_path / "supervised{rank}.pt")
    mp.spawn(ddp_rank_step, args=(3, free_port(), supervised_only, False), nprocs=WORLD, join=True)
    without = torch.load(supervised_only.format(rank=0))[0]
    assert any(not torch.equal(student0[k], without[k]) for k in student0)  # the term did change the step
