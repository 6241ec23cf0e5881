"""swe / cswe poolings against independent references: scipy interpolation, POT's 1-D plan, dense numpy
SWGG plans, unpadded recomputation; the dual update and the generic training hooks."""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from scipy.interpolate import interp1d

from attention.pooling import build_pooling
from attention.pooling.lapsum import lapsum_matrix
from attention.pooling.sliced import dense_coupling, quantile_coupling, quantile_resample, softsort_apply, \
    sort_valid_first
from lab.checkpoint import save_checkpoint
from lab.hooks import collect_auxiliary_losses, run_after_step_hooks
from lab.registry import ConfigError

C = 5


def make(name: str = "cswe", **options):
    torch.manual_seed(0)
    options = {"num_slices": 4, "num_refs": 6, **options}
    return build_pooling(name, dim=C, **options).double()


def sets(batch: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, n, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def costs(pool, x, mask=None):
    """Per-set (soft, hard) lifted slice costs D_l, each (B, L)."""
    x = x if mask is None else x.masked_fill(mask.unsqueeze(-1), 0.0)
    sliced = pool.slice_sets(x, mask)
    return pool.soft_slice_costs(x, mask, sliced), pool.hard_slice_costs(x, sliced)


# -- 1-D building blocks -------------------------------------------------------------------------
def test_quantile_resampling_equals_linear_interpolation_with_extrapolation(padding):
    counts = torch.tensor([2, 3, 7, 9])
    values = torch.randn(4, 9, 3, dtype=torch.float64)
    mask = padding(9, counts.tolist())
    sorted_values, _ = sort_valid_first(values, mask)
    for num_points in (1, 4, 9, 15):
        resampled = quantile_resample(sorted_values, counts, num_points)  # (B, L, M)
        grid = np.arange(1, num_points + 1) / (num_points + 1)
        for b, n in enumerate(counts.tolist()):
            for s in range(3):
                valid = np.sort(values[b, :n, s].numpy())
                expected = interp1d(np.arange(1, n + 1) / (n + 1), valid, fill_value="extrapolate")(grid)
                np.testing.assert_allclose(resampled[b, s].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_sort_puts_valid_elements_first_in_order_without_touching_padding_values():
    values = torch.tensor([[[3.0], [-1e30], [1.0], [2.0], [float("nan")]]])
    mask = torch.tensor([[False, True, False, False, True]])
    sorted_values, order = sort_valid_first(values, mask)
    assert sorted_values[0, :3, 0].tolist() == [1.0, 2.0, 3.0]
    assert order[0, :3, 0].tolist() == [2, 3, 0] and sorted(order[0, 3:, 0].tolist()) == [1, 4]


@pytest.mark.parametrize("n, m", [(1, 1), (2, 5), (3, 3), (4, 6), (7, 3), (6, 4), (5, 7)])
def test_quantile_coupling_equals_pot_1d_plan(n, m):
    rows, cols, mass = quantile_coupling(torch.tensor([n]), 8, m, torch.float64)
    plan = dense_coupling(rows, cols, mass, 8, m)[0]
    expected = ot.emd_1d(np.arange(n, dtype=float), np.arange(m, dtype=float))  # uniform weights, sorted
    np.testing.assert_allclose(plan[:n].numpy(), expected, atol=1e-14)
    assert plan[n:].abs().max() == 0
    assert int((mass > 0).sum()) <= n + m - 1


def dense_softsort(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, n) SoftSort matrix by its definition: row k = softmax_i(-(sorted_k - values_i)^2 / T)."""
    anchors = values.sort().values
    return (-(anchors[:, None] - values[None, :]).square() / temperature).softmax(-1)


def test_softsort_product_equals_the_dense_matrix_product_and_ignores_padding(padding):
    generator = torch.Generator().manual_seed(3)
    lengths = [7, 4, 2]
    values = torch.randn(3, 2, 7, generator=generator, dtype=torch.float64)  # (B, S, n)
    payload = torch.randn(3, 1, 7, 5, generator=generator, dtype=torch.float64)
    mask = padding(7, lengths)
    anchors = sort_valid_first(values.transpose(1, 2), mask)[0].transpose(1, 2)
    product = softsort_apply(anchors, values, mask.unsqueeze(1), 0.7, payload)  # (B, S, n, 5)
    for b, n in enumerate(lengths):
        for s in range(2):
            expected = dense_softsort(values[b, s, :n], 0.7) @ payload[b, 0, :n]
            torch.testing.assert_close(product[b, s, :n], expected, rtol=1e-12, atol=1e-12)
        assert product[b, :, n:].abs().sum() == 0  # rows of padded ranks


def test_softsort_is_row_stochastic_over_valid_elements_and_hard_in_the_limit():
    values = torch.tensor([[0.3, -1.2, 2.0, 0.9, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[False, False, False, False, True]])
    anchors, order = sort_valid_first(values.unsqueeze(-1), mask)
    identity = torch.eye(5, dtype=torch.float64)  # payload I: the product is the matrix itself
    perm = softsort_apply(anchors[None, ..., 0], values[None], mask, 1.0, identity)[0, 0]
    torch.testing.assert_close(perm[:4].sum(-1), torch.ones(4, dtype=torch.float64))
    assert perm[:, 4].abs().max() == 0 and perm[4].abs().max() == 0
    hard = softsort_apply(anchors[None, ..., 0], values[None], mask, 1e-6, identity)[0, 0]
    torch.testing.assert_close(hard[:4].argmax(-1), order[0, :4, 0])


# -- embedding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["swe", "cswe"])
@pytest.mark.parametrize("output, width", [("concat", 6 + 4), ("flatten", 6 * 4)])
def test_output_dimension(name, output, width):
    pool = make(name, output=output)
    assert pool.output_dim == width
    assert pool(sets(3, 8)).shape == (3, width)


@pytest.mark.parametrize("name", ["swe", "cswe"])
def test_permutation_invariance_of_embedding_and_costs(name, padding):
    pool = make(name).train()
    x, mask = sets(3, 9), padding(9, [9, 6, 3])
    perm = torch.randperm(9)
    torch.testing.assert_close(pool(x[:, perm], mask[:, perm]), pool(x, mask))
    if name == "cswe":
        for permuted, original in zip(costs(pool, x[:, perm], mask[:, perm]), costs(pool, x, mask)):
            torch.testing.assert_close(permuted, original)


@pytest.mark.parametrize("name", ["swe", "cswe"])
def test_padded_batch_equals_each_set_alone(name, padding):
    pool = make(name).train()
    lengths = [9, 5, 2]
    x, mask = sets(3, 9), padding(9, lengths)
    x = x.masked_fill(mask.unsqueeze(-1), 1e6)  # junk in the padding
    out = pool(x, mask)
    soft, hard = costs(pool, x, mask) if name == "cswe" else (None, None)
    for b, n in enumerate(lengths):
        alone = x[b:b + 1, :n]
        torch.testing.assert_close(out[b:b + 1], pool(alone))
        if name == "cswe":
            soft_alone, hard_alone = costs(pool, alone)
            torch.testing.assert_close(soft[b:b + 1], soft_alone)
            torch.testing.assert_close(hard[b:b + 1], hard_alone)


def test_fewer_than_two_valid_elements_is_a_clear_error(padding):
    pool = make("swe")
    with pytest.raises(RuntimeError, match="at least 2 valid elements"):
        pool(sets(2, 4), padding(4, [4, 1]))
    with pytest.raises(ValueError, match="at least 2 elements"):
        pool(sets(2, 1))


def test_bad_options_name_the_valid_choices():
    with pytest.raises(ConfigError, match="concat.*flatten"):
        build_pooling("swe", dim=C, output="stack")
    with pytest.raises(ConfigError, match="'auto'"):
        build_pooling("cswe", dim=C, eps="often")
    with pytest.raises(ConfigError, match="softsort.*lapsum"):
        build_pooling("cswe", dim=C, relaxation="sinkhorn")
    with pytest.raises(ConfigError, match="not both"):
        build_pooling("cswe", dim=C, eps=1.0, eps_from="runs/x")
    with pytest.raises(ConfigError, match="unknown option 'tau'"):
        build_pooling("swe", dim=C, tau=1.0)


# -- constraint costs --------------------------------------------------------------------------
def brute_force_swgg(x: np.ndarray, refs: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Per-slice sqrt(<C, P_xᵀ Q P_r>) with every matrix dense; Q by the north-west-corner rule."""
    n, m = len(x), len(refs)
    plan = np.zeros((n, m))
    i = j = 0
    row_left, col_left = 1 / n, 1 / m
    while i < n and j < m:
        moved = min(row_left, col_left)
        plan[i, j] += moved
        row_left, col_left = row_left - moved, col_left - moved
        if row_left <= 1e-15:
            i, row_left = i + 1, 1 / n
        if col_left <= 1e-15:
            j, col_left = j + 1, 1 / m
    cost = ((x[:, None, :] - refs[None, :, :]) ** 2).sum(-1)  # (n, m)
    result = []
    for direction in theta:
        perm_x = np.eye(n)[np.argsort(x @ direction)]  # row k = element of rank k
        perm_r = np.eye(m)[np.argsort(refs @ direction)]
        lifted = perm_x.T @ plan @ perm_r
        result.append(np.sqrt((cost * lifted).sum()))
    return np.array(result)


@pytest.mark.parametrize("num_refs", [2, 3, 5, 8])
def test_hard_swgg_equals_dense_brute_force(num_refs, padding):
    pool = make(num_refs=num_refs)
    lengths = [7, 5, 3, 2]
    x, mask = sets(4, 7, seed=num_refs), padding(7, lengths)
    _, hard = costs(pool, x, mask)
    theta = torch.nn.functional.normalize(pool.slice_directions, dim=1).detach().numpy()
    refs = pool.references.detach().numpy()
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(hard[b].numpy(), brute_force_swgg(x[b, :n].numpy(), refs, theta), rtol=1e-10)


@pytest.mark.parametrize("relaxation", ["softsort", "lapsum"])
def test_soft_cost_tends_to_hard_cost_as_temperature_goes_to_zero(relaxation, padding):
    x, mask = sets(3, 8), padding(8, [8, 6, 3])
    _, hard = costs(make(), x, mask)
    errors = []
    for temperature in (1.0, 1e-2, 1e-4, 1e-7):
        soft, _ = costs(make(relaxation=relaxation, relaxation_temperature=temperature), x, mask)
        errors.append((soft - hard).abs().max().item())
    assert errors[0] > 1e-2, "a soft relaxation should differ from the hard cost"
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-8, errors


def dense_lapsum(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, n) LapSum matrix of one unpadded set (checked against its definition in test_lapsum.py)."""
    return lapsum_matrix(values.sort().values, values, None, temperature)


DENSE_RELAXATIONS = {"softsort": dense_softsort, "lapsum": dense_lapsum}


def dense_soft_swgg(x: torch.Tensor, refs: torch.Tensor, directions: torch.Tensor, temperature: float,
                    relaxation: str = "softsort"):
    """(L,) sqrt(<C, P̃_xᵀ Q P̃_r>) with every matrix dense (n × n soft permutations, POT's 1-D plan Q)."""
    n, m = len(x), len(refs)
    plan = torch.from_numpy(ot.emd_1d(np.arange(n, dtype=float), np.arange(m, dtype=float)))  # (n, m)
    cost = (x[:, None, :] - refs[None, :, :]).square().sum(-1)  # (n, m)
    unit = torch.nn.functional.normalize(directions, dim=1)
    soft = DENSE_RELAXATIONS[relaxation]
    lifted = [soft(x @ u, temperature).T @ plan @ soft(refs @ u, temperature) for u in unit]
    return torch.stack([(cost * gamma).sum().sqrt() for gamma in lifted])


@pytest.mark.parametrize("relaxation", ["softsort", "lapsum"])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_soft_cost_and_its_gradients_equal_the_dense_definition(temperature, relaxation, padding):
    pool = make(num_refs=5, relaxation_temperature=temperature, relaxation=relaxation)
    lengths = [8, 6, 3]
    x, mask = sets(3, 8, seed=4).requires_grad_(), padding(8, lengths)
    soft, _ = costs(pool, x, mask)
    weights = torch.rand(soft.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gradients = torch.autograd.grad((weights * soft).sum(), [x, pool.slice_directions, pool.references])
    expected = torch.stack([dense_soft_swgg(x[b, :n], pool.references, pool.slice_directions, temperature,
                                            relaxation) for b, n in enumerate(lengths)])
    torch.testing.assert_close(soft, expected, rtol=1e-10, atol=1e-12)
    expected_gradients = torch.autograd.grad((weights * expected).sum(), [x, pool.slice_directions, pool.references])
    for gradient, reference in zip(gradients, expected_gradients):
        torch.testing.assert_close(gradient, reference, rtol=1e-9, atol=1e-12)


def test_soft_cost_sets_estimates_on_the_first_sets_and_keeps_the_hard_costs_whole(padding):
    x, mask = sets(5, 8, seed=6), padding(8, [8, 3, 6, 2, 7])
    soft, hard = costs(make(), x, mask)
    for count, used in ((2, 2), (5, 5), (9, 5), (0, 5)):
        pool = make(soft_cost_sets=count).train()
        pool(x, mask)
        torch.testing.assert_close(pool.soft_costs, soft[:used].mean(0))
        means = pool.step_means.reduce()
        torch.testing.assert_close(means["hard"], hard.mean(0))
        torch.testing.assert_close(means["soft"], soft[:used].mean(0))
    with pytest.raises(ValueError, match="soft_cost_sets must be >= 0"):
        make(soft_cost_sets=-1)


def test_dual_step_uses_the_mean_cost_over_the_micro_batches_of_an_accumulated_step():
    """Three micro-batches (sizes 4, 2, 3), one optimizer step: λ moves by η(mean over all 9 sets − ε)."""
    parts = [sets(4, 8, seed=1), sets(2, 8, seed=2), sets(3, 8, seed=3)]
    hard = torch.cat([costs(make(), x)[1] for x in parts])  # (9, L)
    eps = hard.mean().item()
    pool = make(eps=eps, dual_lr=0.1).train()
    for x in parts:
        pool(x)
        assert set(collect_auxiliary_losses(pool)) == {"cswe/constraint"}  # one penalty per micro-batch
    metrics = run_after_step_hooks(pool)
    torch.testing.assert_close(pool.lambdas, (0.1 * (hard.mean(0) - eps)).clamp_min(0))
    assert metrics["cswe/cost_hard_mean"] == pytest.approx(hard.mean().item())
    assert metrics["cswe/cost_spread"] == pytest.approx((hard.mean(0).max() - hard.mean(0).min()).item())
    assert run_after_step_hooks(pool) == {}  # the next step starts afresh


def test_independent_pairing_cost_is_the_cost_of_the_product_coupling(padding):
    pool = make("swe").train()
    lengths = [8, 5, 2]
    x, mask = sets(3, 8, seed=9), padding(8, lengths)
    pool(x, mask)
    logged = run_after_step_hooks(pool)["swe/cost_independent"]
    refs = pool.references.detach()
    expected = np.mean([(x[b, :n, None, :] - refs[None]).square().sum(-1).mean().sqrt().item()
                        for b, n in enumerate(lengths)])
    assert logged == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("constrain_inputs", [False, True])
def test_constraint_loss_sends_gradients_to_directions_and_references_and_inputs_only_if_asked(constrain_inputs,
                                                                                               padding):
    pool = make(constrain_inputs=constrain_inputs).train()
    pool.lambdas.fill_(1.0)
    x = sets(3, 8).requires_grad_()
    pool(x, padding(8, [8, 5, 4]))
    collect_auxiliary_losses(pool)["cswe/constraint"].backward()
    assert pool.slice_directions.grad.abs().sum() > 0 and pool.references.grad.abs().sum() > 0
    assert pool.ref_weights.weight.grad is None
    assert (x.grad is not None and x.grad.abs().sum() > 0) if constrain_inputs else x.grad is None


# -- dual update -------------------------------------------------------------------------------
def step(pool, x, mask=None) -> dict[str, float]:
    """One training forward and the after-step hook (no primal update: the costs stay put)."""
    pool.train()(x, mask)
    return run_after_step_hooks(pool)


def test_lambda_rises_exactly_on_violated_slices_and_never_goes_negative():
    x = sets(4, 8)
    pool = make(eps=1.0, dual_lr=0.1)
    _, hard = costs(pool, x)
    d_hard = hard.mean(0)
    eps = d_hard.median().item()
    pool = make(eps=eps, dual_lr=0.1)
    metrics = step(pool, x)
    expected = (0.1 * (d_hard - eps)).clamp_min(0)
    torch.testing.assert_close(pool.lambdas, expected)
    assert (pool.lambdas[d_hard <= eps] == 0).all() and (pool.lambdas[d_hard > eps] > 0).all()
    assert metrics["cswe/violated_fraction"] == pytest.approx((d_hard > eps).double().mean().item())
    assert metrics["cswe/violation_mean"] == pytest.approx((d_hard - eps).clamp_min(0).mean().item())
    pool.eps.fill_(d_hard.max().item() + 1.0)  # now every slice is feasible: λ falls to 0, not below
    for _ in range(3):
        metrics = step(pool, x)
    assert (pool.lambdas == 0).all() and metrics["cswe/violation_mean"] == 0


def test_huge_eps_keeps_lambda_zero_and_slice_weights_uniform():
    pool = make(eps=1e6, dual_lr=1.0)
    optimizer = torch.optim.SGD(pool.parameters(), lr=0.1)
    for seed in range(3):
        out = pool.train()(sets(4, 8, seed=seed))
        loss = out.square().mean() + sum(collect_auxiliary_losses(pool).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metrics = run_after_step_hooks(pool)
    assert (pool.lambdas == 0).all() and metrics["cswe/lambda_max"] == 0
    torch.testing.assert_close(pool.slice_weights(), torch.full((4,), 0.25, dtype=torch.float64))


def test_auto_eps_is_a_fraction_of_the_mean_cost_of_the_first_batches():
    pool = make(eps="auto", eps_fraction=0.5, auto_eps_batches=3, dual_lr=0.1)
    means = []
    for seed in range(3):
        x = sets(4, 8, seed=seed)
        means.append(costs(pool, x)[1].mean().item())
        metrics = step(pool, x)
        assert (pool.lambdas == 0).all() and "cswe/eps" not in metrics  # λ = 0 while measuring
    assert pool.eps.item() == pytest.approx(0.5 * np.mean(means))
    metrics = step(pool, sets(4, 8, seed=7))
    assert metrics["cswe/eps"] == pytest.approx(0.5 * np.mean(means)) and pool.lambdas.max() > 0
    restored = make(eps="auto", auto_eps_batches=3)
    restored.load_state_dict(pool.state_dict())  # a resumed run keeps its ε and λ
    assert not restored.calibrating() and torch.equal(restored.lambdas, pool.lambdas)


def test_eval_mode_embeds_only():
    pool = make(eps=0.0).eval()
    pool(sets(2, 8))
    assert collect_auxiliary_losses(pool) == {} and run_after_step_hooks(pool) == {}
    assert (pool.lambdas == 0).all()


def test_metric_prefix_separates_two_constrained_layers():
    model = torch.nn.ModuleDict({"a": make(eps=0.0), "b": make(eps=0.0)}).train()
    for pool in model.values():
        pool(sets(2, 8))
    with pytest.raises(ValueError, match="cswe/constraint"):
        collect_auxiliary_losses(model)
    model["b"].metric_prefix = "cswe_b"
    assert set(collect_auxiliary_losses(model)) == {"cswe/constraint", "cswe_b/constraint"}


# -- the generic trainer hooks, end to end -----------------------------------------------------
def test_training_loop_shrinks_violations_while_accuracy_rises():
    """Two classes of 2-D point sets (spread 1 vs 2, 4..12 points); cswe + linear head (zero init, so
    accuracy starts at the class share); Adam; the constraint enters only through the generic hooks."""
    generator = torch.Generator().manual_seed(0)

    def batch(size: int):
        labels = torch.randint(0, 2, (size,), generator=generator)
        points = torch.randn(size, 12, 2, generator=generator) * (1.0 + labels.view(-1, 1, 1))
        lengths = torch.randint(4, 13, (size,), generator=generator)
        return points, torch.arange(12)[None] >= lengths[:, None], labels

    def accuracy(points, mask, labels) -> float:
        model.eval()
        with torch.no_grad():
            predictions = model["head"](model["pool"](points, mask)).argmax(-1)
        model.train()
        return (predictions == labels).float().mean().item()

    torch.manual_seed(0)
    pool = build_pooling("cswe", dim=2, num_slices=4, num_refs=8, eps="auto", auto_eps_batches=5,
                         eps_fraction=0.85, dual_lr=0.5, relaxation_temperature=0.1)
    model = torch.nn.ModuleDict({"pool": pool, "head": torch.nn.Linear(pool.output_dim, 2)})
    torch.nn.init.zeros_(model["head"].weight)
    torch.nn.init.zeros_(model["head"].bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    held_out = batch(256)
    accuracy_before = accuracy(*held_out)
    violations = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second OpenMP thread only adds overhead on a busy machine
    try:
        for _ in range(150):
            points, mask, labels = batch(32)
            logits = model["head"](model["pool"](points, mask))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss = loss + sum(collect_auxiliary_losses(model).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            metrics = run_after_step_hooks(model)
            if "cswe/violation_mean" in metrics:  # after the 5 calibration batches
                violations.append(metrics["cswe/violation_mean"])
    finally:
        torch.set_num_threads(threads)
    accuracy_after = accuracy(*held_out)
    early, late = np.mean(violations[:20]), np.mean(violations[-20:])
    print(f"eps {pool.eps.item():.3f}; violation mean {early:.3f} -> {late:.3f}; held-out accuracy "
          f"{accuracy_before:.2f} -> {accuracy_after:.2f}; lambda_max {metrics['cswe/lambda_max']:.2f}")
    assert late < 0.3 * early
    assert accuracy_before < 0.6 and accuracy_after > 0.85


# -- eps_from: ε from a trained swe run (the end-to-end case is in test_trainer.py) -------------------
def write_run(folder, pooling: str, record: list[float] | None, stamp: str):
    """A checkpoint in the trainer's format: runs/<name>/<stamp>/last.pt with the model and the config."""
    model = {"pool.references": torch.zeros(6, C)}
    if record is not None:
        model["pool.hard_cost_record"] = torch.tensor(record)
    path = folder / stamp / "last.pt"
    save_checkpoint({"model": model, "config": {"pooling": {"name": pooling}}}, path)
    return path


def test_eps_from_reads_the_newest_swe_run_and_refuses_anything_else(tmp_path):
    runs = tmp_path / "protein-lotformer-s0"
    swe = write_run(runs, "swe", [6.0, 2.0], "20260101-000000")  # recorded cost 3.0
    cswe = write_run(runs, "cswe", [9.0, 1.0], "20260102-000000")  # newer, but constrained
    for source in (runs, swe.parent, swe):
        assert make(eps_from=str(source), eps_fraction=0.5).eps.item() == pytest.approx(1.5)
    for source, message in ((cswe, "pooling 'cswe'"), (tmp_path / "none", "does not exist"),
                            (write_run(tmp_path / "old", "swe", None, "x"), "predates cost recording"),
                            (write_run(tmp_path / "fresh", "swe", [0.0, 0.0], "x"), "not taken a training step")):
        with pytest.raises(ConfigError, match=message):
            make(eps_from=str(source))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load"):
        make(eps_from=str(tmp_path / "junk.pt"))
