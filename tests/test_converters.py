"""The shared converter machinery: safe reading of torch files, the key table, storage."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from converters import keymap, torch_io
from leat_jax import checkpoints
from leat_jax.models.base import Functional
from tests.toys import ToyEncoder

TOY = Functional(lambda rngs: ToyEncoder(1.0, rngs=rngs))


def toy_torch_module():
    return torch.nn.ModuleDict({"conv1": torch.nn.Conv2d(3, 8, 3, 2, 1), "conv2": torch.nn.Conv2d(8, 16, 3, 2, 1)})


class Payload:
    """Unpickling this runs ``os.system``: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_reads_state_dicts_and_whole_pickled_modules_in_both_formats(tmp_path, zipfile):
    module = toy_torch_module()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": module, "state_dict": module.state_dict(),
                "optimizer": torch.optim.SGD(module.parameters(), 0.1).state_dict()},
               path, _use_new_zipfile_serialization=zipfile)
    ckpt = torch_io.load(path)
    want = {k: v.numpy() for k, v in module.state_dict().items()}
    for sd in (ckpt["state_dict"], torch_io.module_state_dict(ckpt["model"])):
        assert list(sd) == list(want)
        for k in want:
            np.testing.assert_array_equal(sd[k], want[k])
    assert torch_io.stub_class_name(ckpt["model"]) == "torch.nn.modules.container.ModuleDict"


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(marker)}, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="system"):
        torch_io.load(path)
    assert not marker.exists()


def test_plain_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    with pytest.raises(torch_io.CheckpointReadError):
        torch_io.load(path)
    assert not marker.exists()


def test_unknown_classes_become_inert_stand_ins(tmp_path):
    # A pickled object of a class that does not exist at load time (as
    # Lightning's hyper-parameter objects or SimSwap's ArcFace classes).
    import sys
    import types

    mod = types.ModuleType("vanishing_module")

    class Config:
        def __init__(self):
            self.lr = 0.1

        def __setstate__(self, state):  # would run on load if the class were real
            raise RuntimeError("executed")

    Config.__module__ = "vanishing_module"
    Config.__qualname__ = "Config"
    mod.Config = Config
    sys.modules["vanishing_module"] = mod
    try:
        torch.save({"hparams": Config(), "w": torch.ones(2)}, tmp_path / "c.ckpt")
    finally:
        del sys.modules["vanishing_module"]
    ckpt = torch_io.load(tmp_path / "c.ckpt")
    assert torch_io.stub_class_name(ckpt["hparams"]) == "vanishing_module.Config"
    assert ckpt["hparams"].lr == 0.1
    np.testing.assert_array_equal(ckpt["w"], np.ones(2, np.float32))


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"not a checkpoint at all", "not a readable"),
                                           (None, "no such file")])
def test_unreadable_files_get_one_line_errors(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(torch_io.CheckpointReadError, match=match) as e:
        torch_io.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(toy_torch_module().state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(torch_io.CheckpointReadError, match="not a readable"):
        torch_io.load(path)


def _toy_state_dict():
    return {k: v.numpy() for k, v in toy_torch_module().state_dict().items()}


def test_key_table_maps_by_position_and_matches_torch():
    module = toy_torch_module()
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    params = keymap.convert_state_dict(sd, TOY.template)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = module["conv2"](torch.tanh(module["conv1"](torch.from_numpy(x)))).numpy()
    ours = TOY.apply(params, x.transpose(0, 2, 3, 1))["features"]
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), ref, atol=1e-5)


def test_missing_unexpected_and_misshapen_keys_are_named():
    sd = _toy_state_dict()
    missing = {k: v for k, v in sd.items() if k != "conv2.bias"}
    with pytest.raises(keymap.ConversionError, match=r"missing parameters \[conv2.bias\]"):
        keymap.convert_state_dict(missing, TOY.template, source="f.pth")
    with pytest.raises(keymap.ConversionError, match=r"unexpected keys \[conv3.weight\]"):
        keymap.convert_state_dict({**sd, "conv3.weight": np.zeros((1, 1, 1, 1))}, TOY.template)
    bad = {**sd, "conv1.weight": np.zeros((8, 3, 5, 5), np.float32)}
    with pytest.raises(keymap.ConversionError, match=r"shape mismatch \[conv1.weight \(8, 3, 5, 5\)"):
        keymap.convert_state_dict(bad, TOY.template)


def test_rules_and_ignore_patterns():
    sd = {("enc." + k): v for k, v in _toy_state_dict().items()}
    sd["enc.unused.weight"] = np.zeros(3, np.float32)
    rules = [keymap.Rule(r"enc\.(.*)", r"\1")]
    params = keymap.convert_state_dict(sd, TOY.template, rules=rules, ignore=[r"enc\.unused\..*"])
    np.testing.assert_array_equal(params["conv1"]["bias"], sd["enc.conv1.bias"])
    np.testing.assert_array_equal(params["conv1"]["kernel"], sd["enc.conv1.weight"].transpose(2, 3, 1, 0))


def test_converted_parameters_round_trip_through_orbax(tmp_path):
    params = TOY.init(3)
    checkpoints.save_params(tmp_path / "ck", params, {"model": "toy"})
    back, meta = checkpoints.load_params(tmp_path / "ck")
    assert meta == {"model": "toy"}
    checkpoints.check_against_template(back, TOY.template, "ck")
    for a, b in zip(checkpoints.flatten(params).values(), checkpoints.flatten(back).values()):
        np.testing.assert_array_equal(a, b)


def test_loading_a_directory_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not a converted checkpoint"):
        checkpoints.load_params(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(checkpoints.CheckpointError, match="params: cannot read the parameters, the checkpoint is "
                       "damaged or incomplete .*; run `leat-jax convert` again$"):
        checkpoints.load_params(tmp_path)
