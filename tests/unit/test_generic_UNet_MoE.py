"""Generic_UNet_MoE: shapes, gating, batched routing, inference output."""
import pytest
import torch

from nnunet.network_architecture.generic_UNet_MoE import MoEOutput, Routing
from tests.helpers import SHAPES, batch, tiny_moe, tiny_unet

DIMS = [2, 3]


def randomize_gate(net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.gate.w_gate.weight.copy_(torch.randn(net.gate.w_gate.weight.shape, generator=generator) * 5)
    return net


@pytest.mark.parametrize("dim", DIMS)
def test_training_forward_shapes(dim):
    net = tiny_moe(dim, num_experts=3, top_k=2)
    out = net(batch(dim))
    assert isinstance(out, MoEOutput)
    assert out.combined[0].shape == (4, 2) + SHAPES[dim]
    assert len(out.combined) == 3  # one output per decoder level, full resolution first
    assert len(out.slots) == 2 and all(len(s) == 3 for s in out.slots)
    assert out.gate.indices.shape == (4, 2) and out.gate.weights.shape == (4, 2) and out.gate.probs.shape == (4, 3)
    assert torch.allclose(out.gate.weights.sum(1), torch.ones(4))


@pytest.mark.parametrize("dim", DIMS)
def test_inference_returns_one_full_resolution_tensor(dim):
    net = tiny_moe(dim).eval()
    net.do_ds = False
    with torch.no_grad():
        out = net(batch(dim))
    assert isinstance(out, torch.Tensor) and out.shape == (4, 2) + SHAPES[dim]


@pytest.mark.parametrize("dim", DIMS)
def test_a_given_decision_routes_the_batch_like_the_gate_did(dim):
    """The strong view of an unlabelled batch goes to the experts its weak view chose, with its weights."""
    from nnunet.network_architecture.generic_UNet_MoE import GateDecision
    net = tiny_moe(dim, num_experts=3, top_k=2).eval()
    indices = torch.tensor([[0, 1], [2, 0], [1, 2], [2, 1]])
    weights = torch.tensor([[0.7, 0.3]] * 4)
    x = batch(dim)
    with torch.no_grad():
        routed = net(x, decision=GateDecision(indices, weights, torch.full((4, 3), 1 / 3)))
        assert torch.equal(routed.gate.indices, indices)
        for b in range(4):
            references = [net.decode(int(e), *net.encode(x[b:b + 1]))[0] for e in indices[b]]
            for j, reference in enumerate(references):
                assert torch.allclose(routed.slots[j][0][b:b + 1], reference, atol=1e-4)
            assert torch.allclose(routed.combined[0][b:b + 1], 0.7 * references[0] + 0.3 * references[1], atol=1e-4)


def test_shared_parameters_are_the_encoder_and_the_shared_decoder_blocks():
    net = tiny_moe(3, num_experts=3, top_k=2)
    shared = {id(p) for p in net.shared_parameters()}
    names = [n for n, p in net.named_parameters() if id(p) in shared]
    assert names and all(n.startswith(("conv_blocks_context.", "conv_blocks_localization.")) for n in names)
    assert len(shared) + sum(1 for n, _ in net.named_parameters() if n.startswith(("experts.", "gate."))) == \
        len(list(net.parameters()))


@pytest.mark.parametrize("dim", DIMS)
def test_top_k_picks_the_largest_logits_and_softmaxes_them(dim):
    net = randomize_gate(tiny_moe(dim, num_experts=4, top_k=2)).eval()
    x = batch(dim)
    bottleneck, _ = net.encode(x)
    logits = net.gate.w_gate(net.gate.standardize(net.gate_input(bottleneck)))
    decision = net.decide(bottleneck, 2)
    expected = logits.topk(2, dim=1)
    assert torch.equal(decision.indices, expected.indices)
    assert torch.allclose(decision.weights, torch.softmax(expected.values, 1))
    assert torch.allclose(decision.probs, torch.softmax(logits, 1))


def test_gate_noise_only_in_training():
    net = randomize_gate(tiny_moe(3, num_experts=3, top_k=1))
    bottleneck, _ = net.encode(batch(3, n=8))
    net.eval()
    assert torch.equal(net.decide(bottleneck, 1).probs, net.decide(bottleneck, 1).probs)
    net.train()
    assert not torch.equal(net.decide(bottleneck, 1).probs, net.decide(bottleneck, 1).probs)


def route_samples_to(net, x, top_logits):
    """Set the gate's weights so that sample b gets (roughly) the logits top_logits[b]."""
    with torch.no_grad():
        bottleneck, _ = net.encode(x)
        features = net.gate.standardize(net.gate_input(bottleneck))  # (the net is in eval mode: no update)
        net.gate.w_gate.weight.copy_((torch.linalg.pinv(features) @ top_logits).T)


@pytest.mark.parametrize("dim", DIMS)
def test_batched_routing_equals_a_per_sample_reference(dim):
    net = tiny_moe(dim, num_experts=3, top_k=2).eval()
    x = batch(dim, n=6)
    route_samples_to(net, x, torch.tensor([[3., 2, 0], [0, 3, 2], [2, 0, 3], [3, 0, 2], [0, 2, 3], [2, 3, 0]]))
    with torch.no_grad():
        out = net(x)
        assert len(torch.unique(out.gate.indices[:, 0])) == 3  # the batch really is split among experts
        for b in range(x.shape[0]):
            bottleneck, skips = net.encode(x[b:b + 1])
            reference = 0
            for slot in range(2):
                expert = int(out.gate.indices[b, slot])
                expert_out = net.decode(expert, bottleneck, skips)
                assert torch.allclose(out.slots[slot][0][b], expert_out[0][0], atol=1e-4)
                reference = reference + out.gate.weights[b, slot] * expert_out[0][0]
            assert torch.allclose(out.combined[0][b], reference, atol=1e-4)


def test_inference_k_is_a_setting():
    net = randomize_gate(tiny_moe(3, num_experts=3, top_k=2, inference_top_k=1)).eval()
    x = batch(3)
    with torch.no_grad():
        net.do_ds = True
        chosen = net(x).gate.indices[:, 0]
        net.do_ds = False
        out = net(x)
        for b in range(x.shape[0]):
            bottleneck, skips = net.encode(x[b:b + 1])
            net.do_ds = False
            alone = net.decode(int(chosen[b]), bottleneck, skips)[0][0]
            assert torch.allclose(out[b], alone, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(num_experts=2, top_k=3), dict(num_experts=3, top_k=0),
                                    dict(num_experts=3, top_k=2, inference_top_k=4)])
def test_invalid_k_is_refused(kwargs):
    with pytest.raises(ValueError, match="top_k"):
        tiny_moe(2, **kwargs)


@pytest.mark.parametrize("dim", DIMS)
def test_state_dict_names_follow_generic_unet(dim):
    """Every expert, with the shared layers, is a Generic_UNet state dict: same names (behind experts.E.), same shapes;
    only the gate is new."""
    unet = {k: v.shape for k, v in tiny_unet(dim).state_dict().items()}
    moe = {k: v.shape for k, v in tiny_moe(dim, num_experts=2).state_dict().items()}
    expert_layers = {k for k in unet if k.startswith(("tu.", "seg_outputs."))}
    assert expert_layers and not any(k.startswith(("tu.", "seg_outputs.")) for k in moe)
    shared = {k: s for k, s in moe.items() if not k.startswith(("experts.", "gate."))}
    assert shared == {k: s for k, s in unet.items() if k not in expert_layers}
    for expert in range(2):
        prefix = f"experts.{expert}."
        assert {k[len(prefix):]: s for k, s in moe.items() if k.startswith(prefix)} == \
            {k: s for k, s in unet.items() if k in expert_layers}
    assert sorted(k for k in moe if k.startswith("gate.")) == [
        "gate.standardize.count", "gate.standardize.mean", "gate.standardize.mean_square", "gate.w_gate.weight",
        "gate.w_noise.weight"]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("do_ds", [True, False], ids=["training-output", "inference-output"])
def test_every_layer_runs_once_per_forward_pass(dim, do_ds):
    """Grad-CAM hooks keep one activation per layer: the shared decoder blocks must run once, on all pairs."""
    net = randomize_gate(tiny_moe(dim, num_experts=3, top_k=2)).eval()
    net.do_ds = do_ds
    calls = {}
    for name, module in net.named_modules():
        if name.startswith(("conv_blocks_context.", "conv_blocks_localization.")) and name.count(".") == 1:
            module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    x = batch(dim, n=4)
    with torch.no_grad():
        net(x)
    assert len(calls) == len(net.conv_blocks_context) + len(net.conv_blocks_localization)
    assert set(calls.values()) == {1}


@pytest.mark.parametrize("dim", DIMS)
def test_last_routing_sums_pair_activations_per_sample(dim):
    net = randomize_gate(tiny_moe(dim, num_experts=3, top_k=2)).eval()
    activations = {}
    last_block = net.conv_blocks_localization[-1]
    last_block.register_forward_hook(lambda _m, _i, out: activations.__setitem__("pairs", out))
    x = batch(dim, n=4)
    with torch.no_grad():
        net(x)
    routing = net.last_routing
    pairs = activations["pairs"]
    assert pairs.shape[0] == 4 * 2  # one decoder sample per (sample, chosen expert)
    by_sample = routing.by_sample(pairs)
    assert by_sample.shape == (4, 2) + pairs.shape[1:]
    references = torch.zeros_like(by_sample)
    with torch.no_grad():
        for b in range(4):
            for slot in range(2):
                bottleneck, skips = net.encode(x[b:b + 1])
                net.do_ds = False
                expert = int(net.decide(bottleneck, 2).indices[0, slot])
                reference = {}
                handle = last_block.register_forward_hook(lambda _m, _i, out: reference.__setitem__("a", out))
                net.decode(expert, bottleneck, skips)
                handle.remove()
                references[b, slot] = reference["a"][0]
    assert torch.allclose(by_sample, references, atol=1e-4)
    # what Grad-CAM does with a decoder layer's per-pair maps: one map per sample, the sum over its chosen experts
    from nnunet.inference.attention_maps import per_sample_maps
    layer = f"conv_blocks_localization.{len(net.conv_blocks_localization) - 1}"
    summed = per_sample_maps(net, layer, pairs)
    assert summed.shape == (4,) + pairs.shape[1:]
    assert torch.allclose(summed, references.sum(1), atol=1e-4)
    assert not torch.allclose(summed, references[:, 0], atol=1e-4)  # both experts' activations count


@pytest.mark.parametrize("indices", [[[2, 0], [0, 1], [1, 2]], [[1], [1], [1]], [[0, 2]], [[2], [0]]],
                         ids=["k2", "k1-one-expert", "k2-one-sample", "k1-two-experts"])
def test_routing_puts_pairs_in_sample_order_and_maps_them_back(indices):
    indices = torch.tensor(indices)
    routing = Routing.of(indices)
    assert torch.equal(routing.experts, indices.flatten())
    per_sample = torch.arange(indices.shape[0], dtype=torch.float32).view(-1, 1, 1) + torch.zeros(1, 2, 3)
    pairs = routing.gather(per_sample)
    assert pairs.shape == (indices.numel(), 2, 3)
    assert torch.equal(pairs[:, 0, 0].long(), torch.arange(indices.shape[0]).repeat_interleave(indices.shape[1]))
    # by_sample puts each pair at [its sample, its slot]: the expert found there is the gate's choice
    assert torch.equal(routing.by_sample(routing.experts), indices)
    assert torch.equal(routing.by_sample(pairs)[:, 0], per_sample)


# ------------------------------------------------------------------ routing without host synchronisation

def module_decode(net, expert: int, bottleneck, skips):
    """Reference: one expert's decoder for a batch, calling its own modules (as Generic_UNet's forward would)."""
    x, outputs = bottleneck, []
    for u in range(len(net.conv_blocks_localization)):
        x = net.conv_blocks_localization[u](torch.cat((net.experts[expert].tu[u](x), skips[-(u + 1)]), dim=1))
        outputs.append(net.final_nonlin(net.experts[expert].seg_outputs[u](x)))
    return outputs[::-1]  # full resolution first


def distinct_experts(net, seed=1):
    """Experts with different weights, so that a wrong routing shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for expert in net.experts:
            for p in expert.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("mode", ["inference-k1", "inference-k2", "training-k2"])
def test_routed_outputs_equal_each_experts_own_modules(dim, mode):
    net = distinct_experts(tiny_moe(dim, num_experts=3, top_k=2, inference_top_k=int(mode[-1]))).eval()
    net.do_ds = mode.startswith("training")
    x = batch(dim, n=4)
    route_samples_to(net, x, torch.tensor([[3., 2, 0], [0, 3, 2], [2, 0, 3], [3, 0, 2]]))
    with torch.no_grad():
        bottleneck, skips = net.encode(x)
        decision = net.decide(bottleneck, int(mode[-1]))
        assert len(torch.unique(decision.indices[:, 0])) == 3  # the batch really is split among the experts
        out = net(x)
        combined = out.combined if net.do_ds else (out,)
        for b in range(4):
            expected = 0
            for j, expert in enumerate(decision.indices[b].tolist()):
                reference = module_decode(net, expert, bottleneck[b:b + 1], [s[b:b + 1] for s in skips])
                if net.do_ds:
                    for level, level_out in enumerate(out.slots[j]):
                        assert torch.allclose(level_out[b], reference[level][0], atol=1e-5)
                expected = expected + decision.weights[b, j] * reference[0][0]
            assert torch.allclose(combined[0][b], expected, atol=1e-5)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("mode", ["inference-k1", "inference-k2", "training-k2"])
def test_the_forward_pass_needs_no_host_synchronisation(dim, mode):
    """torch's meta device has no data: anything that reads a value on the host (.tolist(), .item(), a
    data-dependent shape) raises there. The whole forward pass runs on it."""
    with torch.device("meta"):
        net = tiny_moe(dim, num_experts=3, top_k=2, inference_top_k=int(mode[-1]))
    training = mode.startswith("training")
    net.train(training)
    net.do_ds = training
    x = torch.empty((2, 1) + SHAPES[dim], device="meta")
    with torch.no_grad() if not training else torch.enable_grad():
        out = net(x)
    full = out.combined[0] if training else out
    assert full.device.type == "meta" and full.shape == (2, 2) + SHAPES[dim]
    if training:
        assert out.gate.indices.shape == (2, 2) and len(out.slots) == 2
        out.combined[0].sum().backward()  # and so does the backward pass


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", ["conv", "conv-bias", "transposed", "transposed-bias", "upsample"])
def test_routed_layer_applies_each_pairs_expert_layer(dim, kind):
    from nnunet.network_architecture.generic_UNet_MoE import routed_layer
    conv = {2: (torch.nn.Conv2d, torch.nn.ConvTranspose2d), 3: (torch.nn.Conv3d, torch.nn.ConvTranspose3d)}[dim]
    torch.manual_seed(0)
    if kind == "upsample":
        layers = [torch.nn.Upsample(scale_factor=2)] * 3
    elif kind.startswith("transposed"):
        layers = [conv[1](4, 3, 2, 2, bias=kind.endswith("bias")) for _ in range(3)]
    else:
        layers = [conv[0](4, 3, 3, 1, 1, bias=kind.endswith("bias")) for _ in range(3)]
    x = torch.randn((5, 4) + (6,) * dim)
    experts = torch.tensor([2, 0, 0, 1, 2])
    with torch.no_grad():
        routed = routed_layer(layers, x, experts)
        for p, e in enumerate(experts.tolist()):
            assert torch.allclose(routed[p], layers[e](x[p:p + 1])[0], atol=1e-5)


def test_the_meta_device_does_refuse_a_host_read():
    """What the test above relies on."""
    with pytest.raises(Exception):
        torch.zeros(3, device="meta").tolist()


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("k", [1, 2])
def test_the_moe_does_the_work_of_the_encoder_and_k_decoders(dim, k):
    """The FLOP floor bench/moe_benchmark.py prints is what the routed MoE costs: no per-expert overhead."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(function):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            function()
        return counter.get_total_flops()

    with torch.device("meta"):
        unet, moe = tiny_unet(dim).eval(), tiny_moe(dim, num_experts=3, top_k=2, inference_top_k=k).eval()
        x = torch.empty((1, 1) + SHAPES[dim])
    unet.do_ds = moe.do_ds = False
    total, encoder = flops(lambda: unet(x)), flops(lambda: moe.encode(x))
    floor = encoder + k * (total - encoder)
    # at most the floor; a little less, as Generic_UNet computes its coarser heads even when it returns only one
    assert 0.99 * floor <= flops(lambda: moe(x)) <= floor
