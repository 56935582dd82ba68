"""Speed and memory of Generic_UNet_MoE against nnU-Net's Generic_UNet on the same plan.

Measures, each in a fresh process (so that peak memory is the model's own):
  - a training step (forward + backward + SGD step, batch 2, deep supervision; the MoE's loss covers the
    gate-weighted combination and every chosen expert, as in nnUNetTrainerV2_moe) of the baseline and of
    the MoE at training k=2;
  - the MoE's full semi-supervised training step: the labelled batch plus an unlabelled batch of 2 with its
    consistency term, CONSISTENCY=weak_strong (weak view without gradient, strong view with) and cps, exactly as
    nnUNetTrainerV2_moe computes it (moe_unlabeled_term);
  - inference (one patch, no gradient, do_ds=False, as in nnU-Net's sliding window) of the baseline and
    of the MoE at inference k=1 and k=2;
and prints each ratio beside this architecture's FLOP floor and the targets (inference at k=1 <= 1.02x the
baseline; training at k=2 <= 1.05x its floor), the semi-supervised step against the labelled-only MoE step, and
peak memory against 24 GB (a common lab GPU).

The FLOP floor: the MoE runs the encoder once and k decoders (the shared decoder blocks on k pairs per sample, each
pair's expert layers), so it cannot cost less than (encoder + k x decoder) / (encoder + decoder) of Generic_UNet.
Both parts are counted with torch.utils.flop_counter on the meta device (no data, no time), as is the MoE's own
forward pass, which checks that the routed MoE does exactly that much work.

The default plan is COVID-19-20's 3d_fullres one (patch 28x256x256, six poolings
[[1,2,2],[1,2,2],[2,2,2],[2,2,2],[1,2,2],[1,2,2]], 32 base features). On a CPU use --cpu-sized (patch
16x128x128, the same pooling less the last level) unless you have time to spare.

    python bench/moe_benchmark.py [--cpu-sized] [--repeats 10] [--compile] [--json bench/results/moe.json]

--compile: torch.compile both networks (the timed steps start after the warm-up, which compiles).
"""
import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from benchmarking import backward_and_step, benchmark_plan, build, deep_supervision_loss, synchronize

TARGETS_VS_FLOOR = {"train_k2": 1.05, "inference_k1": 1.02}  # measured ratio / FLOP floor
PEAK_MEMORY_TARGET_MB = 24 * 1024


def encoder_forward(net, x):
    """Generic_UNet's encoder alone (what Generic_UNet_MoE.encode runs)."""
    for d in range(len(net.conv_blocks_context) - 1):
        x = net.conv_blocks_context[d](x)
        if not net.convolutional_pooling:
            x = net.td[d](x)
    return net.conv_blocks_context[-1](x)


def counted_flops(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        function()
    return counter.get_total_flops()


def flop_floor(patch, pooling, kernels, experts: int) -> dict:
    """Forward FLOPs (one patch, no deep supervision) of Generic_UNet, its encoder and decoder, and of the MoE at
    inference k=1 and k=2; the floors (encoder + k x decoder) / total. All on the meta device."""
    with torch.device("meta"):
        baseline = build("baseline", pooling, kernels, experts, 1, 1).eval()
        moes = {k: build("moe", pooling, kernels, experts, 2, k).eval() for k in (1, 2)}
        x = torch.empty((1, 1, *patch))
    for net in (baseline, *moes.values()):
        net.do_ds = False
    total = counted_flops(lambda: baseline(x))
    encoder = counted_flops(lambda: encoder_forward(baseline, x))
    decoder = total - encoder
    result = {"baseline_flops": total, "encoder_flops": encoder, "decoder_flops": decoder}
    for k, moe in moes.items():
        result[f"floor_k{k}"] = (encoder + k * decoder) / total
        result[f"moe_k{k}_counted"] = counted_flops(lambda: moe(x)) / total
    return result


def measure(job: dict) -> dict:
    """Runs in a child process: build, warm up, time; returns milliseconds and peak memory (MB)."""
    torch.manual_seed(0)
    device = torch.device(job["device"])
    net = build(job["kind"], job["pooling"], job["kernels"], job["experts"], job["top_k"], job["inference_top_k"])
    net = net.to(device)
    if job.get("compile"):
        net = torch.compile(net)
    amp = device.type == "cuda"
    if job["mode"] == "train":
        net.train()
        net.do_ds = True
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        x = torch.randn((2, 1, *job["patch"]), device=device)
        y = torch.randint(0, 2, (2, *job["patch"]), device=device)
        scaler = torch.amp.GradScaler("cuda") if amp else None

        unlabeled = torch.randn((2, 1, *job["patch"]), device=device) if job.get("unlabeled") else None
        if unlabeled is not None:
            from nnunet.training.loss_functions.consistency import ConsistencySettings
            from nnunet.training.network_training.nnUNetTrainerV2_moe import moe_unlabeled_term
            settings = ConsistencySettings(kind=job["unlabeled"])

        def step():
            optimizer.zero_grad()
            with torch.autocast(device.type, enabled=amp):
                loss = deep_supervision_loss(net(x), y)
                if unlabeled is not None:
                    loss = loss + settings.lambda_max * moe_unlabeled_term(net, unlabeled, settings).consistency
            backward_and_step(loss, optimizer, scaler)
    else:
        net.eval()
        net.do_ds = False
        x = torch.randn((1, 1, *job["patch"]), device=device)

        def step():
            with torch.no_grad(), torch.autocast(device.type, enabled=amp):
                net(x)
    for _ in range(job["warmup"]):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": 1000 * times[len(times) // 2], "peak_mb": peak}


def measure_inference_paired(job: dict) -> dict:
    """Runs in a child process: the baseline and the MoE at inference k=1 and k=2 on the same patch, their steps
    interleaved (baseline, k=1, k=2, baseline, ...), so that a CPU's drifting speed (frequency, other processes)
    hits all three alike. Returns the median of each and the median of the per-round ratios."""
    torch.manual_seed(0)
    device = torch.device(job["device"])
    amp = device.type == "cuda"
    nets = {"baseline": build("baseline", job["pooling"], job["kernels"], job["experts"], 1, 1),
            "k=1": build("moe", job["pooling"], job["kernels"], job["experts"], 2, 1),
            "k=2": build("moe", job["pooling"], job["kernels"], job["experts"], 2, 2)}
    x = torch.randn((1, 1, *job["patch"]), device=device)
    for name, net in nets.items():
        net = net.to(device).eval()
        net.do_ds = False
        nets[name] = torch.compile(net) if job.get("compile") else net

    def timed(net) -> float:
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, enabled=amp):
            net(x)
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(job["warmup"]):
        for net in nets.values():
            timed(net)
    rounds = [{name: timed(net) for name, net in nets.items()} for _ in range(job["repeats"])]
    def median(values):
        return sorted(values)[len(values) // 2]
    return {"ms": {name: 1000 * median([r[name] for r in rounds]) for name in nets},
            "ratio": {name: median([r[name] / r["baseline"] for r in rounds]) for name in ("k=1", "k=2")}}


def run_isolated(job: dict, function=measure) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, (job,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-sized", action="store_true", help="patch 16x128x128 and five poolings")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--paired-inference", action="store_true",
                        help="only inference: baseline, MoE k=1 and k=2 interleaved in one process (for a noisy CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--only", nargs="+", default=None, metavar="RUN",
                        help="measure only these runs (e.g. 'moe semi weak_strong'); ratios need their pairs")
    args = parser.parse_args()

    patch, pooling, kernels = benchmark_plan(args.cpu_sized)
    base = dict(device=args.device, patch=patch, pooling=pooling, kernels=kernels, experts=args.experts,
                repeats=args.repeats, warmup=args.warmup, compile=args.compile)
    runs = {
        "baseline train": dict(base, kind="baseline", mode="train", top_k=1, inference_top_k=1),
        "moe train k=2": dict(base, kind="moe", mode="train", top_k=2, inference_top_k=2),
        "moe semi weak_strong": dict(base, kind="moe", mode="train", top_k=2, inference_top_k=2,
                                     unlabeled="weak_strong"),
        "moe semi cps": dict(base, kind="moe", mode="train", top_k=2, inference_top_k=2, unlabeled="cps"),
        "baseline inference": dict(base, kind="baseline", mode="inference", top_k=1, inference_top_k=1),
        "moe inference k=1": dict(base, kind="moe", mode="inference", top_k=2, inference_top_k=1),
        "moe inference k=2": dict(base, kind="moe", mode="inference", top_k=2, inference_top_k=2),
    }
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), "
          f"patch {list(patch)}, {len(pooling)} poolings, {args.experts} experts, median of {args.repeats}"
          + (", torch.compile" if args.compile else ""))
    floor = flop_floor(patch, pooling, kernels, args.experts)
    print(f"FLOPs per patch (forward): Generic_UNet {floor['baseline_flops'] / 1e9:.1f} G = encoder "
          f"{floor['encoder_flops'] / 1e9:.1f} G + decoder {floor['decoder_flops'] / 1e9:.1f} G "
          f"({100 * floor['decoder_flops'] / floor['baseline_flops']:.0f}%); MoE floor k=1 {floor['floor_k1']:.2f}x, "
          f"k=2 {floor['floor_k2']:.2f}x; the MoE counted: k=1 {floor['moe_k1_counted']:.2f}x, "
          f"k=2 {floor['moe_k2_counted']:.2f}x")
    if args.only:
        unknown = [name for name in args.only if name not in runs]
        if unknown:
            parser.error(f"unknown run(s) {unknown}; known: {list(runs)}")
        runs = {name: runs[name] for name in args.only}
    if args.paired_inference:
        paired = run_isolated(dict(base, mode="inference"), measure_inference_paired)
        print("inference, interleaved: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in paired["ms"].items()))
        for name, ratio in paired["ratio"].items():
            k = int(name[-1])
            print(f"  MoE {name} / baseline {ratio:.3f}x   FLOP floor {floor[f'floor_k{k}']:.2f}x, measured / floor "
                  f"{ratio / floor[f'floor_k{k}']:.3f}" + (f" (target <= {TARGETS_VS_FLOOR['inference_k1']:.2f}: "
                  f"{'met' if ratio <= TARGETS_VS_FLOOR['inference_k1'] else 'MISSED'})" if k == 1 else ""))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"settings": base, "paired_inference": paired, "flops": floor}, indent=2))
        return
    results = {}
    for name, job in runs.items():
        results[name] = run_isolated(job)
        print(f"  {name:<20} {results[name]['ms']:9.1f} ms   peak {results[name]['peak_mb']:8.0f} MB", flush=True)
    pairs = {"train_k2": ("moe train k=2", "baseline train"),
             "inference_k1": ("moe inference k=1", "baseline inference"),
             "inference_k2": ("moe inference k=2", "baseline inference"),
             "semi_weak_strong_vs_labelled_only": ("moe semi weak_strong", "moe train k=2"),
             "semi_cps_vs_labelled_only": ("moe semi cps", "moe train k=2"),
             "semi_weak_strong_vs_baseline": ("moe semi weak_strong", "baseline train")}
    ratios = {name: results[a]["ms"] / results[b]["ms"] for name, (a, b) in pairs.items()
              if a in results and b in results}
    if "moe train k=2" in results and "baseline train" in results:
        ratios["train_peak_memory_k2"] = results["moe train k=2"]["peak_mb"] / results["baseline train"]["peak_mb"]
    floors = {"train_k2": floor["floor_k2"], "inference_k1": floor["floor_k1"], "inference_k2": floor["floor_k2"]}
    print("ratios:")
    for name, value in ratios.items():
        line = f"  {name:<34} {value:5.2f}x"
        if name in floors:
            line += f"   FLOP floor {floors[name]:.2f}x, measured / floor {value / floors[name]:.2f}"
            target = TARGETS_VS_FLOOR.get(name)
            if target is not None:
                line += f" (target <= {target:.2f}: {'met' if value / floors[name] <= target else 'MISSED'})"
        print(line)
    if "moe semi weak_strong" in results:
        peak = results["moe semi weak_strong"]["peak_mb"]
        where = "GPU memory allocated" if args.device == "cuda" else "process RSS (CPU, fp32)"
        print(f"peak memory of the semi-supervised step (weak_strong): {peak:.0f} MB {where}"
              + (f"  (target <= {PEAK_MEMORY_TARGET_MB} MB: {'met' if peak <= PEAK_MEMORY_TARGET_MB else 'MISSED'})"
                 if args.device == "cuda" else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": {k: v for k, v in base.items()}, "results": results,
                                         "ratios": ratios, "flops": floor}, indent=2))


if __name__ == "__main__":
    main()
