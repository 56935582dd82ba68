"""nnUNetTrainerV2_moe_site: the mixture of experts with an oracle router, the go/no-go test of the method.

Every training case, labelled or unlabelled, goes to the expert of its scanner site (split.json's `sites`, from the
download's sites.csv): the sites in sorted order get experts 0, 1, ... (modulo E), one expert per case (top_k 1).
So each expert trains on one site's scans, with the MoE's losses otherwise unchanged. If even these experts do not
beat the mean teacher, a learned gate will not either.

The gate cannot be told a new scan's site at inference, so it learns to imitate the oracle: its loss is the
cross-entropy between its noise-free scores and the site's expert, in place of the load-balancing loss and with its
weight (MOE_BALANCE_ALPHA: at weight 1 the gate's logits grew by tens per step under nnU-Net's SGD and its
cross-entropy ended at 7.5); it reads detached features, so it trains the gate alone. `route_site_mi` in
moe_log.json shows how well it does; at inference (test set, predict) the gate routes.

Its own class, so its models have their own folder: `make semi ROUTING=site`, `make experiment METHODS=moe_site`.
"""
import dataclasses
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from nnunet.network_architecture.generic_UNet_MoE import GateDecision
from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe


def site_experts(sites: Dict[str, str], num_experts: int) -> Dict[str, int]:
    """Case id -> expert: the sites in sorted order get experts 0, 1, ... (modulo num_experts)."""
    order = {site: i % num_experts for i, site in enumerate(sorted(set(sites.values())))}
    return {case: order[site] for case, site in sites.items()}


class nnUNetTrainerV2_moe_site(nnUNetTrainerV2_moe):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moe = dataclasses.replace(self.moe, top_k=1)  # one expert per case: its site's
        self.expert_of: Dict[str, int] = {}

    def initialize(self, training=True, force_load_plans=False):
        super().initialize(training, force_load_plans)
        if training:
            if not self.sites:
                raise RuntimeError(f"{type(self).__name__} routes each case to its site's expert, but the task's "
                                   f"split.json records no sites: convert a download that has a site table "
                                   f"(sites.csv, e.g. make synthetic SITES=3 or make experiment PRESET=multisite)")
            self.expert_of = site_experts(self.sites, self.moe.num_experts)

    def route(self, keys: Optional[Sequence[str]]) -> None:
        network = getattr(self.network, "module", self.network)
        if keys is None or not network.training:  # validation routes by the gate, as inference does
            network.forced_expert = None
            return
        missing = [k for k in keys if k not in self.expert_of]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: no site recorded for case(s) {', '.join(missing)} "
                               f"(split.json's sites)")
        network.forced_expert = torch.tensor([self.expert_of[k] for k in keys])

    def balance_loss(self, routers: Sequence[GateDecision], update: bool = True) -> torch.Tensor:
        """The gate's imitation of the oracle: cross-entropy of its noise-free scores against the site's expert
        (the routed expert of each sample), over the step's labelled and unlabelled samples."""
        scores = torch.cat([r.clean_logits for r in routers]).float()
        return F.cross_entropy(scores, torch.cat([r.indices[:, 0] for r in routers]))
