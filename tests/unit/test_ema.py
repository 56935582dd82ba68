"""The mean teacher's exponential moving average."""
import pytest
import torch

from nnunet.utilities.ema import ema_copy, ema_update
from tests.helpers import tiny_unet


@pytest.mark.parametrize("dim", [2, 3])
def test_the_update_follows_its_formula_and_the_teacher_takes_no_gradient(dim):
    student = tiny_unet(dim)
    teacher = ema_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    ema_update(teacher, student, decay=0.9)
    for t, old, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * old + 0.1 * s, atol=1e-6)
    ema_update(teacher, student, decay=0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
