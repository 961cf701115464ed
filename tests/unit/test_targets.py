import pytest

from tinyprune import targets
from tinyprune.errors import ConfigError


def test_known_targets_load_and_validate():
    assert {"cortex-m0plus", "cortex-m4", "cortex-m7"} <= set(targets.names())
    for name in targets.names():
        t = targets.load(name)
        assert t.name == name and t.flash_bytes > 0 and t.ram_bytes > 0 and t.clock_hz > 0
    assert targets.load("cortex-m4").ram_bytes < targets.load("cortex-m7").ram_bytes


def test_unknown_target_lists_known_ones():
    with pytest.raises(ConfigError, match="known targets: .*cortex-m4"):
        targets.load("cortex-m99")


@pytest.mark.parametrize("change, message", [
    ({"flash_bytes": "1MB"}, "'flash_bytes' must be int"),
    ({"clock_hz": 0}, "must be > 0"),
    ({"fpu": 1}, "'fpu' must be bool"),
    ({"flash_bytes": True}, "'flash_bytes' must be int"),
    ({"colour": "red"}, "unknown key"),
    ({"name": "other"}, "does not match"),
])
def test_invalid_target_file_is_rejected(change, message):
    raw = targets.load("cortex-m4").to_dict() | change
    with pytest.raises(ConfigError, match=message):
        targets._validate("cortex-m4", raw)


def test_missing_key_is_rejected():
    raw = targets.load("cortex-m4").to_dict()
    del raw["ram_bytes"]
    with pytest.raises(ConfigError, match="missing key 'ram_bytes'"):
        targets._validate("cortex-m4", raw)
