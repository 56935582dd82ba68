"""Grad-CAM attention maps (make gradcam) on the tiny trained models."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import binary_dilation

from covidseg.core.challenge import LESION_LABEL, case_id
from tests.helpers import FOLD, MOE_TRAINER, PLANS


def lesion_cases(workflow, n=1):
    """Labelled training cases that have lesions: (CT, mask) pairs from the download."""
    train = workflow.root / "download" / "Train"
    cases = [p for p in sorted(train.glob("*_seg.nii.gz")) if sitk.GetArrayFromImage(sitk.ReadImage(str(p))).any()]
    return [(p.with_name(p.name.replace("_seg", "_ct")), p) for p in cases[:n]]


def geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


DEFAULT_LAYER_RUNS = [("fullres", "gcam", None), ("moe", "gcam", None)]
# Grad-CAM++ keeps positive gradients only: at the default layer, which the lesion head reads linearly, its map
# is empty when the head's lesion weights are all negative (as on some small models), so it runs at a set layer
ENCODER_LAYER_RUN = ("moe", "gcampp", "conv_blocks_context.1")


@pytest.fixture(scope="module", params=DEFAULT_LAYER_RUNS + [ENCODER_LAYER_RUN],
                ids=["fullres-gcam", "moe-gcam", "moe-gcampp-encoder"])
def gradcam_run(request, moe_workflow, tmp_path_factory):
    """`python -m covidseg.gradcam` on two lesion cases."""
    model, backend, layer = request.param
    inputs = tmp_path_factory.mktemp("gradcam_in")
    cases = lesion_cases(moe_workflow, n=2)
    for ct, _ in cases:
        (inputs / ct.name).symlink_to(ct)
    out = tmp_path_factory.mktemp("gradcam_out")
    result = moe_workflow.command("gradcam", "--input", str(inputs), "--output", str(out), "--model", model,
                                 "--backend", backend, "--disable-tta", *(["--layer", layer] if layer else []),
                                 *moe_workflow.workflow_args())
    return out, cases, result.stdout, layer


def test_maps_have_the_input_geometry_and_values_in_0_1(gradcam_run):
    out, cases, stdout, layer = gradcam_run
    for ct, _ in cases:
        case = case_id(ct)
        attention = sitk.ReadImage(str(out / f"{case}_attention.nii.gz"))
        assert geometry(attention) == geometry(sitk.ReadImage(str(ct)))
        assert geometry(sitk.ReadImage(str(out / f"{case}_segmentation.nii.gz"))) == geometry(attention)
        values = sitk.GetArrayFromImage(attention)
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
        assert values.std() > 0
        assert (out / f"{case}_overlay.png").stat().st_size > 10000
        assert f"{case}: max attention" in stdout and "inside the predicted lesion" in stdout
    # the default: the last decoder block (the fixture's plans pool 3 times)
    assert f"at layer {layer or 'conv_blocks_localization.2'}" in stdout


@pytest.mark.parametrize("gradcam_run", DEFAULT_LAYER_RUNS, indirect=True, ids=["fullres-gcam", "moe-gcam"])
def test_attention_is_higher_inside_lesions_than_far_from_them(gradcam_run):
    """The map relates to the lesions, for both networks, with the default layer and backend."""
    out, cases, _, _ = gradcam_run
    for ct, seg in cases:
        case = case_id(ct)
        attention = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}_attention.nii.gz")))
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) > 0
        far = ~binary_dilation(lesion, iterations=6)
        assert attention[lesion].mean() > attention[far].mean()


def test_gradcam_leaves_normal_prediction_untouched(moe_workflow):
    from nnunet.inference.attention_maps import default_layer, load_trainer, predict_attention, predict_softmax
    trainer = load_trainer(str(moe_workflow.model("3d_fullres", MOE_TRAINER).parent), FOLD)
    ct, _ = lesion_cases(moe_workflow)[0]
    data, _, _ = trainer.preprocess_patient([str(ct)])
    def hooks():  # the MoE's own (its gate's stem statistics) are there before and after
        return {(name, len(m._forward_hooks), len(m._backward_hooks)) for name, m in trainer.network.named_modules()}

    hooks_before = hooks()
    before = predict_softmax(trainer, data, do_mirroring=False)
    for backend in ("gcam", "gcampp"):
        for layer in (default_layer(trainer.network), "conv_blocks_context.1"):
            attention = predict_attention(trainer, data, layer, backend, LESION_LABEL, do_mirroring=False)
            assert attention.shape == (1,) + before.shape[1:]  # one map per case, also from the MoE's pairs
            assert np.isfinite(attention).all()
    after = predict_softmax(trainer, data, do_mirroring=False)
    assert np.array_equal(before, after)
    assert hooks() == hooks_before  # Grad-CAM removed every hook it added


def test_unknown_layer_lists_the_valid_names(moe_workflow, tmp_path):
    ct, _ = lesion_cases(moe_workflow)[0]
    result = moe_workflow.command("gradcam", "--input", str(ct), "--output", str(tmp_path), "--layer", "nope",
                                 *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1
    assert "unknown or unusable Grad-CAM layer 'nope'; valid layers: conv_blocks_context.0" in result.stderr
    assert "conv_blocks_localization.2" in result.stderr  # the default (the fixture's plans pool 3 times)
    assert "experts." not in result.stderr  # run on their own group of (sample, expert) pairs only


def test_gradcam_errors_name_the_problem(moe_workflow, tmp_path):
    ct, _ = lesion_cases(moe_workflow)[0]
    result = moe_workflow.command("gradcam", "--input", str(ct), "--output", str(tmp_path), "--fold", "0",
                                 "--task", "200", "--plans", PLANS, expect_ok=False)
    assert result.returncode == 1 and "run 'make semi' first" in result.stderr
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(ct))[:, :, 0], str(flat))
    result = moe_workflow.command("gradcam", "--input", str(flat), "--output", str(tmp_path / "o"),
                                 *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "not a 3D" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = moe_workflow.command("gradcam", "--input", str(ct), "--output", str(blocker / "sub"),
                                 *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "not writable" in result.stderr


def test_gradcam_checks_every_input_before_mapping_any(moe_workflow, tmp_path):
    from tests.workflow.test_semi_supervised_workflow import broken_inputs
    inputs = broken_inputs(moe_workflow, tmp_path / "in")
    result = moe_workflow.command("gradcam", "--input", str(inputs), "--output", str(tmp_path / "out"),
                                 "--disable-tta", *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "2 problem(s)" in result.stderr and "Traceback" not in result.stderr
    assert "cut.nii.gz" in result.stderr and "nan.nii.gz" in result.stderr and "good.nii.gz" not in result.stderr
    assert not (tmp_path / "out").exists()
