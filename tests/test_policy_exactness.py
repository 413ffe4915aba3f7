"""Exactness on CPU with tiny random models: draft-tree verification equals greedy decoding; SkipDecode's KV
invariant holds for non-increasing budgets and is caught for increasing ones."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cmtwin.executor.skipdecode import KVInvariantError, SkipDecodeRunner, invariant_violations  # noqa: E402
from cmtwin.executor.speculative import TinyLM, greedy_decode, tree_greedy_decode  # noqa: E402
from cmtwin.policy.speculation import sparse_tree  # noqa: E402


@pytest.mark.parametrize("seed,noise,size", [(0, 0.0, 8), (1, 0.05, 8), (2, 0.3, 12), (3, 1.0, 4), (4, 0.1, 1)])
def test_tree_verification_equals_plain_greedy(seed, noise, size):
    model = TinyLM(vocab=48, dim=24, layers=2, seed=seed)
    drafter = model.perturbed(noise, seed + 100)
    shape = [p for p, _ in sparse_tree(size, (0.6, 0.45, 0.35), 3, 0.35)]
    prompt = [seed % 7 + 1, 5, 9, 2]
    ref, plain_passes = greedy_decode(model, prompt, 40)
    out, passes = tree_greedy_decode(model, drafter, prompt, 40, shape)
    assert out == ref
    assert passes <= plain_passes
    if noise == 0.0:  # a perfect drafter: every step accepts the full depth + the bonus token
        assert passes == -(-40 // 4)


def test_tree_verification_with_a_useless_drafter_is_still_exact():
    model = TinyLM(vocab=48, dim=24, layers=2, seed=9)
    other = TinyLM(vocab=48, dim=24, layers=2, seed=10)  # unrelated weights
    shape = [p for p, _ in sparse_tree(6, (0.6, 0.45, 0.35), 3, 0.35)]
    assert tree_greedy_decode(model, other, [3, 1, 4], 25, shape)[0] == greedy_decode(model, [3, 1, 4], 25)[0]


def test_skipdecode_nonincreasing_budgets_keep_the_kv_invariant():
    L = 6
    tokens = [3, 7, 1, 9, 4, 4, 2, 8, 5, 6]
    for budgets in ([6] * 10, [6, 6, 5, 5, 4, 4, 3, 2, 2, 1], [6, 3, 3, 3, 3, 2, 2, 2, 1, 1]):
        assert invariant_violations(budgets, L) == []
        runner = SkipDecodeRunner(layers=L, seed=1)
        out = runner.run(tokens, budgets)  # raises KVInvariantError on a missing entry
        assert out.shape == (10, runner.dim)
        # every (layer, position) a token ran has KV; skipped lower layers have none
        for t, b in enumerate(budgets):
            assert all((t in runner.kv[layer]) == (layer >= L - b) for layer in range(L))


def test_skipdecode_full_budget_equals_the_full_forward():
    runner = SkipDecodeRunner(layers=4, seed=2)
    tokens = [1, 2, 3, 4, 5, 6]
    cached = runner.run(tokens, [4] * 6)
    torch.testing.assert_close(cached, runner.full_forward(tokens), rtol=1e-10, atol=1e-10)


def test_skipdecode_increasing_budget_is_detected():
    L = 6
    budgets = [6, 4, 4, 5, 3]  # position 3 runs layer 1, which positions 1 and 2 skipped
    assert invariant_violations(budgets, L) == [(3, 1, [1, 2])]
    with pytest.raises(KVInvariantError, match=r"position 3 runs layer 1 but positions \[1, 2\]"):
        SkipDecodeRunner(layers=L, seed=3).run([1, 2, 3, 4, 5], budgets)


def test_twin_skipdecode_budget_satisfies_the_executor_invariant():
    from cmtwin.policy.registry import registry

    pol = registry("layer_skip").build({"name": "skipdecode", "min_layers_fraction": 0.3, "decay_tokens": 20})
    budgets = [pol.budget(t, 6) for t in range(30)]
    assert invariant_violations(budgets, 6) == []
    SkipDecodeRunner(layers=6, seed=4).run([t % 17 for t in range(30)], budgets)
