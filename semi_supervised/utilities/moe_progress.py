"""The mixture of experts' training curves: one plot, drawn by the trainer each epoch and by `make report`."""
from typing import List

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np

DIAGNOSTICS = {"expert_lesion_dice": "Dice between the chosen experts' lesions",
               "disagreement": "expert disagreement (all unlabelled voxels)",
               "confident_fraction_lesion": "confident pseudo-labels (of predicted lesion)",
               "consistency_grad_share": "consistency / supervised gradient (shared weights)"}
GATE = {"gate_entropy": ("k--", "gate entropy, noise-free"), "gate_entropy_noisy": ("k:", "gate entropy with noise")}


def series(log: List[dict], key: str) -> np.ndarray:
    """One value per epoch, NaN where the entry has none (older logs, warm-up epochs): a gap in the line."""
    return np.array([np.nan if e.get(key) is None else e[key] for e in log], dtype=float)


def plot_moe_progress(log: List[dict], path: str) -> None:
    """Losses and lambda; the unlabelled term's diagnostics; expert usage and the gate's entropies; the gate's
    signal-to-noise ratio and the mutual information between its routing and the scanner site; per epoch.

    `log` holds one entry per epoch as nnUNetTrainerV2_moe writes it to moe_log.json.
    """
    epochs = [e["epoch"] for e in log]
    fig, (ax_loss, ax_signal, ax_usage, ax_route) = plt.subplots(4, 1, figsize=(9, 14), sharex=True)
    ax_loss.plot(epochs, series(log, "supervised"), label="supervised (DC+CE)")
    ax_loss.plot(epochs, series(log, "consistency"), label="consistency")
    ax_loss.plot(epochs, series(log, "balance"), label="load balance", alpha=0.6)
    ax_lambda = ax_loss.twinx()
    ax_lambda.plot(epochs, series(log, "lambda"), "k--", label="lambda")
    ax_lambda.set_ylabel("lambda")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper left")
    ax_lambda.legend(loc="upper right")

    for key, label in DIAGNOSTICS.items():  # log scale: the fractions span 1e-4 (disagreement) to 1 (confidence)
        ax_signal.plot(epochs, np.clip(series(log, key), 1e-5, None), marker=".", label=label)
    ax_signal.axhline(0.05, color="grey", lw=0.8, ls=":", label="gradient share 0.05")
    ax_signal.set_yscale("log")
    ax_signal.set_ylabel("unlabelled term (log scale)")
    ax_signal.legend(loc="best", fontsize="small")

    usage = np.array([e["usage"] for e in log])
    for expert in range(usage.shape[1]):
        ax_usage.plot(epochs, usage[:, expert], label=f"expert {expert}")
    ax_usage.axhline(1.0 / usage.shape[1], color="grey", lw=0.8, ls=":")
    ax_usage.set_ylabel("fraction of routing")
    ax_usage.set_ylim(0, 1)
    ax_entropy = ax_usage.twinx()
    for key, (style, label) in GATE.items():
        ax_entropy.plot(epochs, series(log, key), style, label=label)
    ax_entropy.axhline(np.log(usage.shape[1]), color="grey", lw=0.6)
    ax_entropy.set_ylim(0, np.log(usage.shape[1]) * 1.05)
    ax_entropy.set_ylabel("gate entropy (nats; grey: log E)")
    ax_usage.legend(loc="upper left")
    ax_entropy.legend(loc="lower right", fontsize="small")

    ax_route.plot(epochs, series(log, "gate_signal_to_noise"), marker=".", label="gate signal / noise")
    ax_route.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax_route.set_ylabel("noise-free score std / noise std")
    ax_route.set_xlabel("epoch")
    ax_mi = ax_route.twinx()
    ax_mi.plot(epochs, series(log, "route_site_mi"), "r.-", label="route-site mutual information")
    ax_mi.set_ylabel("bits")
    ax_route.legend(loc="upper left")
    ax_mi.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def after_rampup(log: List[dict]) -> List[dict]:
    """The epochs at full consistency weight (lambda at its maximum, above 0)."""
    top = max((e["lambda"] or 0.0 for e in log), default=0.0)
    return [e for e in log if top > 0 and (e["lambda"] or 0.0) >= top * (1 - 1e-6)]


def diagnostics_after_rampup(log: List[dict]) -> dict:
    """Mean, min and max of each diagnostic over the epochs after the ramp-up (NaN where none was measured)."""
    epochs = after_rampup(log)
    summary = {"epochs": [e["epoch"] for e in epochs]}
    for key in tuple(DIAGNOSTICS) + tuple(GATE) + ("confident_fraction", "consistency_grad_cosine",
                                                  "gate_signal_to_noise", "route_site_mi"):
        values = series(epochs, key)
        values = values[np.isfinite(values)]
        summary[key] = (float(values.mean()), float(values.min()), float(values.max())) if values.size else None
    return summary
