"""Every sequence's own random stream (aimc_ssm.analog.draws): the hash and normals against their plain
twins, the distribution against torch's, and keys that depend on a sequence alone."""
import pytest
import torch
from scipy import stats

from aimc_ssm.analog.draws import (
    SequenceDraws,
    TorchDraws,
    as_int32_tensor,
    hash32,
    hash32_,
    hash32_ref,
    normal_ref,
    sequence_keys,
    unsigned,
)


def test_hash_matches_its_plain_twin():
    patterns = torch.cat([torch.randint(0, 2**32, (2000,), dtype=torch.int64), torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1])])
    hashed = unsigned(hash32(as_int32_tensor(patterns)))
    assert hashed.tolist() == [hash32_ref(v) for v in patterns.tolist()]


def test_in_place_hash_matches_the_hash():
    patterns = as_int32_tensor(torch.randint(0, 2**32, (3, 700), dtype=torch.int64))
    assert torch.equal(hash32_(patterns.clone(), torch.empty_like(patterns)), hash32(patterns))


@pytest.mark.parametrize("shape", [(16, 40, 65), (3, 12, 7), (3, 1, 7), (2, 5, 8), (1, 1, 1)])
def test_one_pass_normals_match_the_plain_vectorized_normals_bit_for_bit(shape):
    """normal_ (radius and angle slabs hashed in place, products written into place) == normal_plain_."""
    draws = SequenceDraws(as_int32_tensor(torch.randint(0, 2**32, (shape[1],), dtype=torch.int64)))
    for step in (0, 9):  # its buffers are reused by the second read
        fast = draws.normal_(torch.empty(shape), step, 1, "output_noise", 1).clone()
        assert torch.equal(fast, draws.normal_plain_(torch.empty(shape), step, 1, "output_noise", 1))


def test_a_step_held_in_a_tensor_draws_as_its_integer():
    """Prepared tables (a step counter on the device, for captured steps) give the host counter's draws."""
    draws = SequenceDraws(torch.tensor([3, -7, 2**30], dtype=torch.int32))
    draws.prepare(12)
    for step, attempt, purpose in ((0, 0, "output_noise"), (11, 2, "input_noise"), (5, 1, "adc_rounding")):
        held = torch.tensor(step)
        assert torch.equal(draws.normal_(torch.empty(2, 3, 5), held, attempt, purpose, 1).clone(),
                           draws.normal_(torch.empty(2, 3, 5), step, attempt, purpose, 1))
        assert torch.equal(draws.uniform_(torch.empty(2, 3, 4), held, attempt, purpose, 0),
                           draws.uniform_(torch.empty(2, 3, 4), step, attempt, purpose, 0))


def test_normals_match_their_plain_twin():
    keys = torch.tensor([3, 2**31 + 5, 77], dtype=torch.int64)
    out = SequenceDraws(as_int32_tensor(keys)).normal_(torch.empty(2, 3, 5), 4, 1, "output_noise", 1)
    for h in range(2):
        for b, key in enumerate(keys.tolist()):
            for c in range(5):
                assert out[h, b, c].item() == pytest.approx(normal_ref(key, h, c, 5, 4, 1, "output_noise", 1), rel=1e-5, abs=1e-6)


def test_draws_are_distributed_as_torch_draws():
    draws = SequenceDraws(torch.arange(4000, dtype=torch.int32) * 7919)
    normals = draws.normal_(torch.empty(16, 4000, 65), 3, 0, "output_noise", 0).flatten()
    assert abs(normals.mean().item()) < 0.005 and abs(normals.std().item() - 1) < 0.005
    assert stats.kstest(normals[:200_000].double().numpy(), "norm").statistic < 0.005
    uniforms = draws.uniform_(torch.empty(16, 4000, 8), 3, 0, "dac_rounding", 0).flatten()
    assert uniforms.min() >= -0.5 and uniforms.max() < 0.5 and abs(uniforms.mean().item()) < 0.005
    assert stats.kstest(uniforms[:200_000].double().numpy() + 0.5, "uniform").statistic < 0.005
    # neighbouring columns, sequences and steps are uncorrelated
    grid = draws.normal_(torch.empty(1, 4000, 2), 0, 0, "output_noise", 0)[0]
    later = draws.normal_(torch.empty(1, 4000, 2), 1, 0, "output_noise", 0)[0]
    for a, b in ((grid[:, 0], grid[:, 1]), (grid[:-1, 0], grid[1:, 0]), (grid[:, 0], later[:, 0])):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.05


def test_every_read_draws_afresh():
    draws = SequenceDraws(torch.tensor([11], dtype=torch.int32))
    reads = [draws.normal_(torch.empty(1, 1, 4), *counter) for counter in [
        (0, 0, "output_noise", 0), (1, 0, "output_noise", 0), (0, 1, "output_noise", 0), (0, 0, "input_noise", 0), (0, 0, "output_noise", 1),
    ]]
    assert len({tuple(r.flatten().tolist()) for r in reads}) == len(reads)
    assert torch.equal(draws.normal_(torch.empty(1, 1, 4), 0, 0, "output_noise", 0), reads[0])  # a counter is its draw


def test_keys_depend_on_the_sequence_alone():
    torch.manual_seed(0)
    u = torch.randn(6, 30, 3)
    keys = sequence_keys(u, seed=5)
    assert len(set(keys.tolist())) == 6  # different sequences, different streams
    assert torch.equal(sequence_keys(u[2:3], seed=5), keys[2:3])  # alone
    assert torch.equal(sequence_keys(u[[4, 2, 0]], seed=5), keys[[4, 2, 0]])  # in another batch, another order
    assert not torch.equal(sequence_keys(u, seed=6), keys)  # another seed, other draws
    nudged = u.clone()
    nudged[2, 17, 1] = torch.nextafter(nudged[2, 17, 1], torch.tensor(9.0))
    assert sequence_keys(nudged, seed=5)[2] != keys[2]


def test_torch_draws_are_torch_stream():
    torch.manual_seed(3)
    expected = torch.empty(2, 3, 4).normal_()
    torch.manual_seed(3)
    assert torch.equal(TorchDraws().normal_(torch.empty(2, 3, 4), 0, 0, "output_noise", 0), expected)
