"""The strong view: intensity perturbations keep voxel correspondence, CutMix mixes images and labels alike,
bottleneck dropout only inside its block, settings from PERTURBATION."""
import pytest
import torch

from tests.helpers import SHAPES, batch, tiny_unet

INTENSITY_ONLY = dict(probability=1.0, noise_std=0.0, cutmix=0.0)


def settings(**overrides):
    from nnunet.training.data_augmentation.strong_perturbations import PerturbationSettings
    return PerturbationSettings(**overrides)


@pytest.mark.parametrize("dim", [2, 3])
def test_strong_view_changes_intensities_but_no_voxel_moves(dim):
    from nnunet.training.data_augmentation.strong_perturbations import strong_view
    torch.manual_seed(0)
    weak = torch.zeros((2, 1) + SHAPES[dim])
    marker = tuple(s // 2 + 1 for s in SHAPES[dim])
    weak[(slice(None), 0) + marker] = 10.0
    strong, mix = strong_view(weak, settings(**INTENSITY_ONLY))
    assert strong.shape == weak.shape and mix.sources == (None, None)
    assert not torch.allclose(strong, weak)
    for sample in strong[:, 0]:
        assert torch.equal(torch.tensor(divmod_index(sample.argmax().item(), sample.shape)), torch.tensor(marker))


def divmod_index(flat: int, shape) -> tuple:
    index = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        index.append(rest)
    return tuple(reversed(index))


@pytest.mark.parametrize("dim", [2, 3])
def test_noise_alone_perturbs_every_sample(dim):
    from nnunet.training.data_augmentation.strong_perturbations import perturb_intensities
    torch.manual_seed(0)
    x = batch(dim, n=3)
    noisy = perturb_intensities(x, settings(probability=1.0, noise_std=0.5, blur_sigma=0, brightness=0, contrast=0,
                                            gamma=0, lowres=1))
    assert all(not torch.allclose(a, b) for a, b in zip(noisy, x))
    assert (noisy - x).std() < 0.5


@pytest.mark.parametrize("dim", [2, 3])
def test_cutmix_mixes_images_and_pseudo_labels_identically(dim):
    from nnunet.training.data_augmentation.strong_perturbations import CutMix
    torch.manual_seed(0)
    n = 3
    images = torch.arange(n, dtype=torch.float32).view(n, 1, *[1] * dim).expand((n, 1) + SHAPES[dim]).clone()
    labels = images[:, 0].long() + 5
    mix = CutMix.draw(n, SHAPES[dim], probability=1.0)
    assert mix.sources == (1, 2, 0)
    mixed_images, mixed_labels = mix.apply(images), mix.apply(labels)
    assert torch.equal(mixed_images[:, 0].long() + 5, mixed_labels)
    for i, (source, box) in enumerate(zip(mix.sources, mix.boxes)):
        inside = torch.zeros(SHAPES[dim], dtype=torch.bool)
        inside[box] = True
        assert (mixed_images[i, 0][inside] == source).all() and (mixed_images[i, 0][~inside] == i).all()
        assert 0 < inside.float().mean() < 1


def test_cutmix_leaves_a_single_sample_alone():
    from nnunet.training.data_augmentation.strong_perturbations import CutMix
    x = batch(3, n=1)
    assert torch.equal(CutMix.draw(1, SHAPES[3], probability=1.0).apply(x), x)


@pytest.mark.parametrize("dim", [2, 3])
def test_feature_dropout_perturbs_skips_and_bottleneck_only_inside_its_block(dim):
    from nnunet.training.data_augmentation.strong_perturbations import feature_dropout
    network = tiny_unet(dim)
    network.do_ds = False
    x = batch(dim, n=2)
    def stage_outputs(run):
        seen = {}
        handles = [stage.register_forward_hook(lambda m, i, out, d=d: seen.__setitem__(d, out))
                   for d, stage in enumerate(network.conv_blocks_context)]  # after any dropout hook: sees its result
        output = run()
        for handle in handles:
            handle.remove()
        return output, seen

    with torch.no_grad():
        reference, clean = stage_outputs(lambda: network(x))
        torch.manual_seed(0)
        with feature_dropout(network, 0.5):
            perturbed, dropped = stage_outputs(lambda: network(x))
        after = network(x)
    assert not torch.allclose(perturbed, reference)
    assert torch.equal(after, reference)
    # every encoder stage's output (the skips, then the bottleneck) has whole channels zeroed
    for d in clean:
        zeroed = (dropped[d].flatten(2).abs().sum(2) == 0) & (clean[d].flatten(2).abs().sum(2) > 0)
        assert zeroed.any(), f"stage {d} was not perturbed"


def perturb_intensities(x, perturbation):
    from nnunet.training.data_augmentation.strong_perturbations import perturb_intensities as perturb
    return perturb(x, perturbation)


def segmentation_of(network, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(network(x), 1)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name,strength", [("noise_std", 0.5), ("blur_sigma", 1.5), ("gamma", 0.5),
                                           ("lowres", 3.0)])
def test_each_intensity_perturbation_changes_the_networks_output(dim, name, strength):
    """A strong view must perturb what the network cannot normalise away (its first InstanceNorm undoes a
    per-sample affine change of the intensities)."""
    off = dict(noise_std=0, blur_sigma=0, brightness=0, contrast=0, gamma=0, lowres=1, cutmix=0)
    network = tiny_unet(dim)
    network.do_ds = False
    x = batch(dim, n=2)
    torch.manual_seed(0)
    strong = perturb_intensities(x, settings(probability=1.0, **{**off, name: strength}))
    change = (segmentation_of(network, strong) - segmentation_of(network, x)).abs().mean()
    assert change > 1e-3, f"{name} left the output unchanged ({change:.2e})"


@pytest.mark.parametrize("dim", [2, 3])
def test_brightness_is_undone_by_the_first_instance_norm_so_it_is_off_by_default(dim):
    network = tiny_unet(dim)
    network.do_ds = False
    x = batch(dim, n=2)
    assert settings().brightness == 0 and settings().contrast == 0
    change = (segmentation_of(network, x * 1.3) - segmentation_of(network, x)).abs().max()
    assert change < 1e-4


def test_settings_from_the_environment(monkeypatch):
    from nnunet.training.data_augmentation.strong_perturbations import PerturbationSettings
    monkeypatch.setenv("PERTURBATION", "noise_std=0.2, cutmix=0")
    parsed = PerturbationSettings.from_environment()
    assert parsed.noise_std == 0.2 and parsed.cutmix == 0 and parsed.blur_sigma == PerturbationSettings().blur_sigma
    for bad, message in (("noise=1", "not name=value"), ("cutmix=x", "not a number"), ("cutmix=2", "probability"),
                         ("gamma=-1", ">= 0")):
        with pytest.raises(ValueError, match=message):
            PerturbationSettings.from_string(bad)
