"""Start-state samplers: the sample / update_priorities protocol and the uniform sampler."""

import numpy as np
import pytest
import torch

from dws_gym.imagination import (
    StartStateSampler,
    UniformStartSampler,
    as_start_sampler,
    check_priorities,
    check_start_batch,
)

K = 3


def clips(s: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (s, K, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, (s, K - 1))


def test_uniform_sample_shapes_and_ids_index_the_windows():
    frames, actions = clips()
    sampler = UniformStartSampler(frames, actions)
    assert isinstance(sampler, StartStateSampler) and len(sampler) == 5
    f, a, ids = sampler.sample(7, np.random.default_rng(0))
    assert f.shape == (7, K, 8, 8, 3) and f.dtype == np.uint8
    assert a.shape == (7, K - 1) and a.dtype == np.int64
    assert ids.shape == (7,) and ids.dtype == np.int64
    np.testing.assert_array_equal(f, frames[ids])
    np.testing.assert_array_equal(a, actions[ids])
    empty = sampler.sample(0, np.random.default_rng(0))
    assert empty[0].shape == (0, K, 8, 8, 3) and empty[2].shape == (0,)


def test_uniform_draws_only_from_the_rng_and_cover_every_window():
    sampler = UniformStartSampler(*clips())
    a = sampler.sample(400, np.random.default_rng(3))[2]
    b = sampler.sample(400, np.random.default_rng(3))[2]
    np.testing.assert_array_equal(a, b)
    counts = np.bincount(a, minlength=5)
    assert counts.min() > 50  # ~80 each under uniform sampling
    assert not np.array_equal(a, sampler.sample(400, np.random.default_rng(4))[2])


def test_from_simulator_like_and_torch_inputs():
    frames, actions = clips()
    sampler = UniformStartSampler(torch.from_numpy(frames), torch.from_numpy(actions))
    np.testing.assert_array_equal(sampler.frames, frames)

    class Sim:  # only the two attributes from_simulator reads
        start_frames = torch.from_numpy(frames)
        start_actions = torch.from_numpy(actions)

    assert len(UniformStartSampler.from_simulator(Sim())) == 5
    assert len(as_start_sampler(None, Sim())) == 5


def test_bad_windows_and_calls_say_what_is_wrong():
    frames, actions = clips()
    with pytest.raises(ValueError, match="uint8"):
        UniformStartSampler(frames.astype(np.float32), actions)
    with pytest.raises(ValueError, match=r"\(S, K - 1\)"):
        UniformStartSampler(frames, actions[:, :1])
    with pytest.raises(ValueError, match="no window"):
        UniformStartSampler(frames[:0], actions[:0])
    with pytest.raises(ValueError, match="integer"):
        UniformStartSampler(frames, actions.astype(np.float32) + 0.5)
    sampler = UniformStartSampler(frames, actions)
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        sampler.sample(2, 0)
    with pytest.raises(ValueError, match="non-negative"):
        sampler.sample(-1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        sampler.update_priorities(np.array([0, 5]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        sampler.update_priorities(np.array([0, 1]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="equal length"):
        sampler.update_priorities(np.array([0, 1]), np.array([1.0]))
    sampler.update_priorities(np.array([0, 4]), np.array([0.5, 2.0]))  # valid: accepted, ignored
    with pytest.raises(ValueError, match="start_states must be"):
        as_start_sampler("not a sampler", None)
    with pytest.raises(ValueError, match="needs a simulator"):
        as_start_sampler(None, None)


def test_as_start_sampler_passes_protocol_objects_through_and_wraps_arrays():
    class Mine:
        def sample(self, n, rng):
            raise NotImplementedError

        def update_priorities(self, ids, values):
            pass

    mine = Mine()
    assert as_start_sampler(mine) is mine
    assert isinstance(as_start_sampler(clips()), UniformStartSampler)


def test_check_start_batch_and_priorities():
    frames, actions = clips()
    ids = np.arange(5)
    f, a, i = check_start_batch((frames, actions, ids), 5, K, (8, 8, 3))
    assert i.dtype == np.int64
    with pytest.raises(ValueError, match="frames of shape"):
        check_start_batch((frames[:4], actions, ids), 5, K, (8, 8, 3))
    with pytest.raises(ValueError, match="actions of shape"):
        check_start_batch((frames, actions[:, :1], ids), 5, K, (8, 8, 3))
    with pytest.raises(ValueError, match="ids"):
        check_start_batch((frames, actions, ids[:3]), 5, K, (8, 8, 3))
    with pytest.raises(ValueError, match=r"\(frames, actions, ids\)"):
        check_start_batch((frames, actions), 5, K, (8, 8, 3))
    i, v = check_priorities([1, 2], [0.5, 1], 3)
    assert i.tolist() == [1, 2] and v.dtype == np.float64
