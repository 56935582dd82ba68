"""The mixture of experts' training curves: one plot, drawn by the trainer each epoch and by `make report`."""
from typing import List

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_moe_progress(log: List[dict], path: str) -> None:
    """Supervised, consistency and load-balancing losses, lambda, and expert usage per epoch.

    `log` holds one entry per epoch as nnUNetTrainerV2_moe writes it to moe_log.json.
    """
    epochs = [e["epoch"] for e in log]
    fig, (ax_loss, ax_usage) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    ax_loss.plot(epochs, [e["supervised"] for e in log], label="supervised (DC+CE)")
    ax_loss.plot(epochs, [e["consistency"] for e in log], label="consistency")
    ax_loss.plot(epochs, [e["balance"] for e in log], label="load balance", alpha=0.6)
    ax_lambda = ax_loss.twinx()
    ax_lambda.plot(epochs, [e["lambda"] for e in log], "k--", label="lambda")
    ax_lambda.set_ylabel("lambda")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper left")
    ax_lambda.legend(loc="upper right")
    usage = np.array([e["usage"] for e in log])
    for expert in range(usage.shape[1]):
        ax_usage.plot(epochs, usage[:, expert], label=f"expert {expert}")
    ax_usage.axhline(1.0 / usage.shape[1], color="grey", lw=0.8, ls=":")
    ax_usage.set_ylabel("fraction of routing")
    ax_usage.set_xlabel("epoch")
    ax_usage.set_ylim(0, 1)
    ax_usage.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
