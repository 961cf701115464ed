"""The flash-for-RAM trade of a LUT model (issue 30): a rule on the deployed costs, not a new cost."""

from types import SimpleNamespace

import pytest

from tinyprune.deepcompress.deploy import flash_for_ram
from tinyprune.errors import ConfigError

KIB = 1024
BIG_FLASH = SimpleNamespace(name="m4", flash_bytes=1024 * KIB, ram_bytes=256 * KIB)


def costs(flash_kib, ram_kib):
    return SimpleNamespace(flash_bytes=flash_kib * KIB, ram_bytes=ram_kib * KIB)


def test_auto_keeps_the_plain_model_where_flash_is_plentiful_and_ram_tighter():
    # the demo's case: 12 KiB of flash saved on a part with ~950 KiB free, for 20 KiB of arena
    take, why = flash_for_ram("auto", BIG_FLASH, costs(76, 40), costs(64, 60))
    assert not take
    assert "12,288 B less firmware flash for 20,480 B more RAM" in why and "--prefer flash" in why


@pytest.mark.parametrize("target, plain, reason", [
    (SimpleNamespace(name="t", flash_bytes=128 * KIB, ram_bytes=256 * KIB), costs(76, 40), "less than half"),
    (BIG_FLASH, costs(300, 40), "flash is the tighter resource"),
])
def test_auto_takes_the_flash_where_it_is_scarce(target, plain, reason):
    take, why = flash_for_ram("auto", target, plain, costs(plain.flash_bytes // KIB - 12, 60))
    assert take and why.startswith("traded 12,288 B less firmware flash") and reason in why


def test_prefer_overrides_the_rule_both_ways():
    assert flash_for_ram("flash", BIG_FLASH, costs(76, 40), costs(64, 60))[0]
    small = SimpleNamespace(name="t", flash_bytes=100 * KIB, ram_bytes=256 * KIB)
    assert not flash_for_ram("ram", small, costs(76, 40), costs(64, 60))[0]


def test_no_trade_when_the_lut_model_needs_no_more_ram():
    # decoded weights in the target's separate region: flash saved, nothing traded, nothing to name
    assert flash_for_ram("ram", BIG_FLASH, costs(76, 40), costs(64, 40)) == (True, "")


def test_unknown_preference_is_a_config_error():
    with pytest.raises(ConfigError, match="--prefer"):
        flash_for_ram("speed", BIG_FLASH, costs(76, 40), costs(64, 60))
