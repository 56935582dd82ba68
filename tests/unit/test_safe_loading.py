"""nnunet/utilities/safe_loading.py (patch 0011): every value nnU-Net writes loads as before; anything that would run
code is refused by name before it is imported."""
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from nnunet.utilities.safe_loading import (UnsafeFileError, load_checkpoint_safely, load_pickle_safely,
                                           unsafe_zip_members)
from tests.helpers import CodePayload

# what nnU-Net's plans, properties and checkpoints hold
NNUNET_VALUES = OrderedDict(
    plans_per_stage={0: {"patch_size": np.array([28, 64, 64]), "pool_op_kernel_sizes": [[1, 2, 2], [2, 2, 2]],
                         "current_spacing": np.array([5.0, 0.74, 0.74]), "batch_size": 2}},
    all_classes=[1], use_mask_for_norm=OrderedDict([(0, False)]), dataset_properties={"modalities": {0: "CT"}},
    median=np.float64(0.5), mean=np.float32(-300.5), shape=(62, 512, 512), count=np.int64(7),
    class_locations={1: np.arange(12).reshape(4, 3)}, dtype=np.dtype("float32"), labels={1, 2},
    name="Task200", flags=(True, None, 1e-5, 2 + 1j),
)


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b) and all(assert_same(a[k], b[k]) is None for k in a)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and all(assert_same(x, y) is None for x, y in zip(a, b))
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_nnunet_values_load_as_they_were_written(tmp_path, protocol):
    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps(NNUNET_VALUES, protocol=protocol))
    assert_same(load_pickle_safely(str(path)), NNUNET_VALUES)


def test_a_pickle_written_by_numpy_1_loads(tmp_path):
    """numpy 1.x names its helpers numpy.core.multiarray (numpy 2: numpy._core); old model folders hold those."""
    data = pickle.dumps({"m": np.float64(2.5), "a": np.arange(3)}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = load_pickle_safely(str(path))
    assert loaded["m"] == 2.5 and loaded["a"].tolist() == [0, 1, 2]


class Anything:
    pass


@pytest.mark.parametrize("value, global_name", [
    (CodePayload("unused"), "posix.system"),
    (Anything(), "tests.unit.test_safe_loading.Anything"),
    (print, "builtins.print"),
    (np.random.default_rng(0), "numpy.random._pickle.__generator_ctor"),
], ids=["os.system", "a class", "a builtin function", "a numpy object"])
def test_a_pickle_naming_any_other_global_is_refused_by_name(tmp_path, value, global_name):
    path = tmp_path / "model_final_checkpoint.model.pkl"
    path.write_bytes(pickle.dumps({"init": (), "name": "nnUNetTrainerV2", "value": value}))
    with pytest.raises(UnsafeFileError) as refused:
        load_pickle_safely(str(path))
    assert refused.value.path == str(path) and f"'{global_name}'" in str(refused.value)
    assert str(refused.value).startswith(f"refused to load {path}: it asks for the global")


def test_the_payload_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "plans.pkl"
    path.write_bytes(pickle.dumps([CodePayload(marker)]))
    with pytest.raises(UnsafeFileError):
        load_pickle_safely(str(path))
    assert not marker.exists()


def test_a_checkpoint_with_numpy_values_loads(tmp_path):
    saved = {"epoch": 3, "state_dict": OrderedDict(w=torch.ones(2, 3)), "optimizer_state_dict": {"state": {},
             "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True, "params": [0]}]},
             "plot_stuff": ([np.float64(0.5)], [np.float32(0.4)], [], [np.float64(0.1)]),
             "best_stuff": (np.int64(2), np.float64(0.1), np.float64(0.1), np.float64(0.1)),
             "dtype": np.dtype("float64")}
    path = tmp_path / "model_final_checkpoint.model"
    torch.save(saved, path)
    loaded = load_checkpoint_safely(str(path))
    assert torch.equal(loaded["state_dict"]["w"], saved["state_dict"]["w"])
    assert loaded["best_stuff"] == saved["best_stuff"] and loaded["plot_stuff"] == saved["plot_stuff"]


def test_a_checkpoint_that_runs_code_is_refused_by_name(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model_final_checkpoint.model"
    torch.save({"state_dict": {}, "extra": CodePayload(marker)}, path)
    with pytest.raises(UnsafeFileError, match="it asks for the global 'posix.system'"):
        load_checkpoint_safely(str(path))
    assert not marker.exists()


def members(*entries):
    infos = []
    for name, mode in entries:
        info = zipfile.ZipInfo(name)
        info.create_system, info.external_attr = 3, mode << 16
        infos.append(info)
    return type("Archive", (), {"infolist": lambda self: infos})()


def test_unsafe_zip_members_lists_every_unsafe_member():
    archive = members(("a/plans.pkl", 0o100644), ("a/fold_0/", 0o40755), ("../x", 0o100644), ("a/../../x", 0o100644),
                      ("/etc/x", 0o100644), ("C:\\x", 0o100644), ("a\\..\\x", 0o100644), ("a/link", 0o120777),
                      ("a/dev", 0o020644), ("a/plans.pkl", 0o100644), ("windows.txt", 0))
    assert unsafe_zip_members(archive) == [
        "../x: a '..' path component", "a/../../x: a '..' path component", "/etc/x: an absolute path",
        "C:\\x: an absolute path", "a\\..\\x: a '..' path component", "a/link: a symlink",
        "a/dev: not a regular file (a device, fifo or socket)", "a/plans.pkl: in the zip twice"]
