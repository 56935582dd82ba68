"""Each workflow step names the step to run first when its prerequisite is missing."""
import pytest

from conftest import run_script, run_env


@pytest.fixture
def env(tmp_path):
    return run_env(nnUNet_raw_data_base=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "pre",
                   RESULTS_FOLDER=tmp_path / "res")


@pytest.mark.parametrize("script,args,message", [
    ("preprocess.py", ["--task", "200"], "run 'make convert DATA=<download>' first"),
    ("baseline.py", ["--task", "200"], "run 'make convert DATA=<download>' first"),
])
def test_nothing_converted(env, script, args, message):
    result = run_script(script, *args, env=env, expect_ok=False)
    assert result.returncode == 1 and message in result.stderr


def test_baseline_before_preprocess(env, tmp_path):
    (tmp_path / "raw" / "nnUNet_raw_data" / "Task200_COVID_19_20").mkdir(parents=True)
    result = run_script("baseline.py", "--task", "200", env=env, expect_ok=False)
    assert result.returncode == 1 and "run 'make preprocess' first" in result.stderr
