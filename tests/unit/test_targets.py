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
    ({"decompression_ram_bytes": -1}, "'decompression_ram_bytes' must be an integer >= 0"),
])
def test_invalid_target_file_is_rejected(change, message):
    raw = targets.load("cortex-m4").to_dict() | change
    with pytest.raises(ConfigError, match=message):
        targets._validate("cortex-m4", raw)


def test_the_separate_decompression_region_is_optional():
    raw = targets.load("cortex-m4").to_dict()
    del raw["decompression_ram_bytes"]
    assert targets._validate("cortex-m4", raw).decompression_ram_bytes == 0  # none: decoded weights in the arena
    assert targets._validate("cortex-m4", raw | {"decompression_ram_bytes": 131072}).decompression_ram_bytes == 131072


def test_missing_key_is_rejected():
    raw = targets.load("cortex-m4").to_dict()
    del raw["ram_bytes"]
    with pytest.raises(ConfigError, match="missing key 'ram_bytes'"):
        targets._validate("cortex-m4", raw)


def test_target_files_sit_at_the_repo_root_and_ship_in_the_wheel(tmp_path):
    # The design card puts targets/ beside tinyprune/; a built wheel must still carry every file.
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    files = {p.name for p in (repo / "targets").iterdir() if p.suffix == ".toml"} | {"SCHEMA.md"}
    assert {f"{n}.toml" for n in targets.names()} <= files and (repo / "targets" / "SCHEMA.md").exists()
    assert not (repo / "tinyprune" / "targets").exists()
    src = tmp_path / "src"  # setuptools builds in the source tree: build a copy, not the checkout
    for name in ("pyproject.toml", "setup.py", "README.md", "tinyprune", "targets"):
        if (repo / name).is_dir():
            shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(repo / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("tinyprune-*.whl"))
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("tinyprune/target_files/")}
    assert files <= shipped
