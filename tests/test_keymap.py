"""The shared key helpers of the converters (converters.keymap)."""
import numpy as np
import pytest

from converters.keymap import ConversionError, is_state_dict, strip_module_prefix, strip_prefix


def test_module_prefix_is_removed_only_when_every_key_has_it():
    a, b = np.zeros(2, np.float32), np.ones(3, np.float32)
    assert list(strip_module_prefix({"module.x.weight": a, "module.y": b})) == ["x.weight", "y"]
    assert strip_module_prefix({"module.x.weight": a})["x.weight"] is a
    plain = {"x.weight": a, "module_y": b}  # no dot: not the DataParallel prefix
    assert strip_module_prefix(plain) == plain
    with pytest.raises(ConversionError, match=r"^f\.pth: some keys carry the 'module\.' prefix.*\[x\]"):
        strip_module_prefix({"module.y": b, "x": a}, source="f.pth")


def test_strip_prefix_and_state_dict_check():
    sd = {"decoder.a": 1, "decoder.b": 2, "encoder.c": 3}
    assert strip_prefix(sd, "decoder.") == {"a": 1, "b": 2}
    assert strip_prefix(sd, "mapper.", required=False) == {}
    with pytest.raises(ConversionError, match="no key starts with 'mapper.'"):
        strip_prefix(sd, "mapper.")
    assert is_state_dict({"w": np.zeros(1)}) and not is_state_dict({}) and not is_state_dict({"w": 1.0})
