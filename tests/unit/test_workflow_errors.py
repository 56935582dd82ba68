"""The one error convention: every command names the step to run first when its prerequisite is missing, and a
user's mistake is one 'ERROR:' message with exit status 1, never a traceback."""
import pytest

from tests.helpers import run_command, run_env


@pytest.fixture
def env(tmp_path):
    return run_env(nnUNet_raw_data_base=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "pre",
                   RESULTS_FOLDER=tmp_path / "res")


def assert_user_error(result, message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("ERROR:") and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["preprocess", "baseline", "weights", "semi", "report"])
def test_nothing_converted(env, command):
    assert_user_error(run_command(command, "--task", "200", env=env, expect_ok=False),
                      "run 'make convert DATA=<download>' first")


def test_baseline_before_preprocess(env, tmp_path):
    (tmp_path / "raw" / "nnUNet_raw_data" / "Task200_COVID_19_20").mkdir(parents=True)
    assert_user_error(run_command("baseline", "--task", "200", env=env, expect_ok=False), "run 'make preprocess' first")


@pytest.mark.parametrize("command", ["predict", "gradcam"])
def test_inference_before_training_names_make_semi(env, tmp_path, command):
    (tmp_path / "raw" / "nnUNet_raw_data" / "Task200_COVID_19_20").mkdir(parents=True)
    result = run_command(command, "--task", "200", "--input", tmp_path / "nowhere", "--output", tmp_path / "o",
                         env=env, expect_ok=False)
    assert_user_error(result, "run 'make semi' first")  # the model is checked before the inputs


def test_convert_names_a_missing_download(env, tmp_path):
    assert_user_error(run_command("convert", tmp_path / "nowhere", "--output-base", tmp_path / "out", env=env,
                                  expect_ok=False), f"{tmp_path / 'nowhere'}: download folder not found")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["--n-train", "0"], "need at least 1 train case"),
    (["--xy", "64", "32"], "--xy 64 32: expected 0 < MIN <= MAX"),
])
def test_synthetic_refuses_bad_settings(env, tmp_path, args, message):
    assert_user_error(run_command("synthetic", tmp_path / "d", *args, env=env, expect_ok=False), message)
    assert not (tmp_path / "d").exists()
