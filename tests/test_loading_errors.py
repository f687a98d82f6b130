"""Damaged or mistyped files on disk fail at load time with a message that names the file, the field and the fix."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dws_gym.data import TrajectoryStore
from dws_gym.simulator import CONFIG_NAME, REWARD_NAME, START_STATES_NAME, WORLD_MODEL_DIR, Simulator
from tiny_sim import make_tiny_sim


@pytest.fixture(scope="module")
def saved_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny simulator folder, written once; tests damage copies of it."""
    return make_tiny_sim(perturb=False).save_pretrained(tmp_path_factory.mktemp("sim") / "simulator")


@pytest.fixture
def sim_folder(saved_sim: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_sim, tmp_path / "simulator"))


def edit_config(folder: Path, **changes: object) -> Path:
    """Rewrite fields of the folder's simulator_config.json (a value of ``...`` deletes the field)."""
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return path


# ---------------------------------------------------------------------------- damaged weights files


@pytest.mark.parametrize("name", [f"{WORLD_MODEL_DIR}/flow_model.safetensors", REWARD_NAME, START_STATES_NAME])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_weights_file_is_named(sim_folder: Path, name: str, damage: str) -> None:
    path = sim_folder / name
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    state = "is empty" if damage == "empty" else "is truncated"
    with pytest.raises(ValueError, match=re.escape(str(path)) + rf".* {state}.*re-download or re-save the simulator"):
        Simulator.from_pretrained(sim_folder)


# ---------------------------------------------------------------------------- simulator_config.json fields


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context_frames": "4"},
         r"field 'context_frames' must be an integer >= 1, got '4' \(str\); fix the file or re-save the simulator"),
        ({"context_frames": [4]}, r"field 'context_frames' must be an integer >= 1, got \[4\] \(list\)"),
        ({"sampling_steps": 0}, "field 'sampling_steps' must be an integer >= 1, got 0"),
        ({"env_id": ...}, r"required field\(s\) \['env_id'\] are missing"),
        ({"env_id": ""}, "field 'env_id' must be a non-empty string"),
        ({"action_meanings": "NOOP"}, "field 'action_meanings' must be a non-empty list of action names"),
        ({"action_meanings": ["NOOP", "FIRE", "RIGHT", "LEFT", "DOWN"]},
         "field 'action_meanings' names 5 actions but the world model has 4"),
    ],
)
def test_bad_config_field_is_named(sim_folder: Path, changes: dict, message: str) -> None:
    path = edit_config(sim_folder, **changes)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + message):
        Simulator.from_pretrained(sim_folder)


def test_good_folder_still_loads(sim_folder: Path) -> None:
    sim = Simulator.from_pretrained(sim_folder)
    assert sim.num_actions == 4 and sim.context_frames == 3


# ---------------------------------------------------------------------------- trajectory store marker


def small_store(root: Path) -> Path:
    store = TrajectoryStore(root, create=True)
    T = 3
    store.add_episode(np.zeros((T + 1, 4, 4, 3), np.uint8), np.zeros(T, np.int64), np.zeros(T), np.zeros(T, bool),
                      np.arange(T) == T - 1, env_id="Test-v0")
    return root / "store.json"


@pytest.mark.parametrize("create", [False, True])
def test_corrupt_store_marker_is_named(tmp_path: Path, create: bool) -> None:
    marker = small_store(tmp_path / "s")
    marker.write_text('{"format": "dws-trajectory-st')
    with pytest.raises(ValueError, match=re.escape(str(marker)) + " is not valid JSON.*replace the file's content"):
        TrajectoryStore(tmp_path / "s", create=create)


@pytest.mark.parametrize(
    ("version", "fix"), [(2, "upgrade dws-gym"), (0, "Restore the file"), ("1", "Restore the file")]
)
def test_unknown_store_schema_is_named(tmp_path: Path, version: object, fix: str) -> None:
    marker = small_store(tmp_path / "s")
    marker.write_text(json.dumps({"format": "dws-trajectory-store", "schema_version": version}))
    with pytest.raises(ValueError, match=re.escape(f"{marker} has schema_version {version!r}") + f".*{fix}"):
        TrajectoryStore(tmp_path / "s")


def test_store_marker_of_another_format_is_named(tmp_path: Path) -> None:
    marker = small_store(tmp_path / "s")
    marker.write_text(json.dumps({"format": "something-else", "schema_version": 1}))
    with pytest.raises(ValueError, match=re.escape(str(marker)) + " does not describe a trajectory store"):
        TrajectoryStore(tmp_path / "s")


def test_positive_int_checks_share_one_rule_and_wording():
    import numpy as np

    from dws_gym.checks import check_positive_int, is_positive_int

    assert is_positive_int(3) and is_positive_int(np.int64(2))
    for bad in (0, -1, True, 2.0, "4", [4], None):
        assert not is_positive_int(bad)
        with pytest.raises(ValueError, match=r"^horizon must be a positive int, got "):
            check_positive_int("horizon", bad)
    assert check_positive_int("horizon", np.int32(5)) == 5 and type(check_positive_int("h", np.int32(5))) is int
