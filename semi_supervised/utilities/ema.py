"""Exponential moving average of a network's weights (the mean teacher, Tarvainen & Valpola 2017)."""
from copy import deepcopy

import torch
from torch import nn


def ema_copy(network: nn.Module) -> nn.Module:
    """A copy of `network` that takes no gradient: the teacher starts as the student."""
    teacher = deepcopy(network)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, for every parameter; buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
