import pytest
import torch

from prunelab import Mask, models
from prunelab.masks import prunable_parameters
from prunelab.training import Diverged, TrainSettings, train
from prunelab.training.checkpoints import CheckpointFolder


def mlp(seed=0):
    return models.create("lenet_300_100", num_classes=4, input_shape=(1, 8, 8), seed=seed)


SGD = TrainSettings(train="3ep", batch_size=32, lr=0.05, eval_every="1ep")  # 4 it/epoch, 12 steps
MOMENTUM = SGD.replace(momentum=0.9, weight_decay=1e-4, milestones=("2ep",))


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_learns(tiny_dataset):
    res = train(mlp(), tiny_dataset, SGD.replace(train="10ep"), device="cpu")
    assert res.test_accuracy > 0.9
    assert res.step == 40


def test_same_seeds_same_bits_different_data_seed_differs(tiny_dataset):
    a, b, c = mlp(), mlp(), mlp()
    train(a, tiny_dataset, MOMENTUM, seed=0, device="cpu")
    train(b, tiny_dataset, MOMENTUM, seed=0, device="cpu")
    train(c, tiny_dataset, MOMENTUM.replace(data_seed=1), seed=0, device="cpu")
    assert states_equal(a.state_dict(), b.state_dict())
    assert not states_equal(a.state_dict(), c.state_dict())


def test_starting_at_step_t_needs_no_replay(tiny_dataset):
    """Plain SGD has no optimizer state, so restarting at t from the weights at t must give the same bits."""
    full, captured = mlp(), {}

    def grab(step, model):
        if step == 6:  # mid-epoch: epoch 1, batch 2
            captured.update({k: v.clone() for k, v in model.state_dict().items()})

    train(full, tiny_dataset, SGD.replace(milestones=("1ep",)), on_step=grab, device="cpu")
    resumed = mlp(seed=9)
    resumed.load_state_dict(captured)
    steps = []
    train(resumed, tiny_dataset, SGD.replace(milestones=("1ep",)), start_step=6, device="cpu",
          on_step=lambda s, m: steps.append(s))
    assert steps == list(range(7, 13))
    assert states_equal(full.state_dict(), resumed.state_dict())


def test_interrupted_run_resumes_to_identical_result(tiny_dataset, tmp_path):
    ref = mlp()
    ref_res = train(ref, tiny_dataset, MOMENTUM, device="cpu", checkpoint_dir=tmp_path / "ref",
                    metrics_path=tmp_path / "ref.jsonl")

    class Boom(Exception):
        pass

    def crash(step, model):
        if step == 7:
            raise Boom

    model = mlp()
    with pytest.raises(Boom):
        train(model, tiny_dataset, MOMENTUM, device="cpu", checkpoint_dir=tmp_path / "run",
              metrics_path=tmp_path / "run.jsonl", on_step=crash)
    executed = []
    again = mlp()  # a fresh process would rebuild the model from its seed
    res = train(again, tiny_dataset, MOMENTUM, device="cpu", checkpoint_dir=tmp_path / "run",
                metrics_path=tmp_path / "run.jsonl", on_step=lambda s, m: executed.append(s))
    assert executed == list(range(5, 13))  # resumed from the epoch-1 checkpoint (step 4)
    assert states_equal(ref.state_dict(), again.state_dict())
    strip = [{k: v for k, v in m.items()} for m in res.metrics]
    assert [m["test_accuracy"] for m in strip] == [m["test_accuracy"] for m in ref_res.metrics]
    assert (tmp_path / "run.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()


def test_masked_training_in_the_trainer_keeps_zeros(tiny_dataset):
    model = mlp()
    g = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=g) < 0.2 for n, p in prunable_parameters(model).items()})
    train(model, tiny_dataset, MOMENTUM.replace(optimizer="adamw", lr=1e-3, momentum=0.0), mask=mask, device="cpu")
    for name, keep in mask.items():
        assert torch.all(model.get_parameter(name)[~keep] == 0)


def test_metrics_are_written_per_evaluation(tiny_dataset, tmp_path):
    import json

    train(mlp(), tiny_dataset, SGD, device="cpu", metrics_path=tmp_path / "m.jsonl", evaluate_at_start=True)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8, 12]
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)


def test_divergence_stops_with_the_step(tiny_dataset):
    with pytest.raises(Diverged) as info:
        train(mlp(), tiny_dataset, SGD.replace(lr=1e20), device="cpu")
    assert 1 <= info.value.step <= 12


def test_kept_checkpoints_and_corrupt_latest_falls_back(tiny_dataset, tmp_path):
    folder = tmp_path / "ck"
    train(mlp(), tiny_dataset, MOMENTUM, device="cpu", checkpoint_dir=folder, keep_steps=[2, 6])
    ck = CheckpointFolder(folder)
    assert ck.kept_steps() == [2, 6]
    assert ck.load_step(6)["step"] == 6
    raw = ck.latest_path.read_bytes()
    ck.latest_path.write_bytes(raw[: len(raw) // 2])  # truncated write
    with pytest.warns(UserWarning, match="set aside"):
        best = ck.load_latest()
    assert best["step"] == 6
    assert (folder / "latest.pt.corrupt").exists()


def test_bad_step_ranges(tiny_dataset):
    with pytest.raises(ValueError, match="beyond the training length"):
        train(mlp(), tiny_dataset, SGD, end_step=100, device="cpu")
    with pytest.raises(ValueError, match="start step"):
        train(mlp(), tiny_dataset, SGD, start_step=5, end_step=3, device="cpu")
