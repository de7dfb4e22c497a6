"""End-to-end protocols on tiny generated MNIST files: sharing, caching, resuming, rewinding."""

import json

import pytest
import torch
from test_data import write_idx_set

from prunelab import Mask
from prunelab.experiments.hparams import DataHparams, ModelHparams
from prunelab.experiments.protocols import lottery, prune_at_step
from prunelab.experiments.protocols.lottery import LotteryHparams
from prunelab.experiments.protocols.prune_at import PruneHparams
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings, train
from prunelab.training.checkpoints import CheckpointFolder

# 64 examples, batch 16: 4 iterations per epoch, 12 steps in all.
TRAINING = TrainSettings(train="3ep", batch_size=16, lr=0.05, momentum=0.9)
REP = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), TRAINING, seed=0)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


@pytest.fixture
def runner(data_root, tmp_path):
    return Runner(RunStore(tmp_path / "runs"), data_root=data_root, device="cpu")


def test_prune_at_init_trains_dense_once_and_caches(runner):
    result = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.9))
    assert runner.steps_executed == 12 + 12  # the dense replicate, then the pruned network
    assert result["status"] == "done" and result["sparsity"] == pytest.approx(0.9, abs=1e-5)
    dense = runner.store.result(runner.dense_id(REP))
    assert result["dense_accuracy"] == dense["test_accuracy"]
    folder = runner.store.folder(result["id"])
    mask = Mask.load(folder / "mask.pt")
    assert mask.sparsity == pytest.approx(0.9, abs=1e-5)
    assert json.loads((folder / "hparams.json").read_text())["pruning"]["method"] == "magnitude"
    again = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.9))
    assert runner.steps_executed == 24 and again == result


def test_pretraining_to_step_t_is_shared_and_matches_an_uninterrupted_run(runner):
    for method in ("magnitude", "random"):
        prune_at_step(runner, REP, PruneHparams(method=method, sparsity=0.5, prune_at="6it"))
    # the dense prefix 0..6, its continuation 6..12 (every dense step once), then 12 per pruned network
    assert runner.steps_executed == 12 + 12 + 12
    folder = runner.store.folder(runner.dense_id(REP)) / "checkpoints"
    at6 = CheckpointFolder(folder).load_step(6)["model"]
    at12 = CheckpointFolder(folder).load_step(12)["model"]
    captured = {}
    model = runner.model(REP)
    train(model, runner.dataset(REP.dataset), TRAINING, seed=0, device="cpu",
          on_step=lambda s, m: captured.update({k: v.clone() for k, v in m.state_dict().items()}) if s == 6 else 0)
    assert all(torch.equal(at6[k], captured[k]) for k in captured)
    # and the dense run that resumed from step 6 ends bitwise where an uninterrupted one does
    assert all(torch.equal(at12[k], v) for k, v in model.state_dict().items())


def test_magnitude_after_training_prunes_the_trained_weights(runner):
    result = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.8, prune_at="end"))
    trained = CheckpointFolder(runner.store.folder(runner.dense_id(REP)) / "checkpoints").load_step(12)["model"]
    mask = Mask.load(runner.store.folder(result["id"]) / "mask.pt")
    # independent: global threshold on |trained weights|
    everything = torch.cat([trained[n].abs().flatten() for n in mask])
    k = int(round(0.8 * everything.numel()))
    threshold = everything.sort().values[k]
    for n, keep in mask.items():
        assert torch.all(trained[n].abs()[keep] >= threshold)
    assert result["prune_step"] == 12


@pytest.mark.parametrize("ablation", ["shuffle", "reinit", "invert", "fixed_variance", "sign", "sigma_sign"])
def test_every_ablation_runs(runner, ablation):
    base = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.7))
    result = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.7, ablation=ablation))
    assert result["status"] == "done" and result["id"] != base["id"]
    m0 = Mask.load(runner.store.folder(base["id"]) / "mask.pt")
    m1 = Mask.load(runner.store.folder(result["id"]) / "mask.pt")
    if ablation in ("shuffle", "invert", "fixed_variance"):
        assert m1 != m0
    if ablation == "shuffle":
        assert m1.layer_counts() == m0.layer_counts()
    if ablation in ("reinit", "sign", "sigma_sign"):
        assert m1 == m0


def test_reinit_from_another_initializer_trains_the_mask_from_its_weights(runner, monkeypatch):
    # Lee et al. 2019, §5.5: pruned at one initialization (here TN), trained from Glorot (VS-X) weights.
    from prunelab import models
    from prunelab.experiments.protocols.base import REINIT_SEED

    rep = Replicate(ModelHparams("lenet_300_100", init="truncated_normal"), DataHparams("mnist"), TRAINING, seed=0)
    started = []
    real = runner.run_training

    def spy(model, *args, **kwargs):
        started.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(runner, "run_training", spy)
    hp = PruneHparams(method="snip", sparsity=0.9, batch_per_class=2, ablation="reinit", reinit_init="xavier_normal")
    result = prune_at_step(runner, rep, hp)
    assert result["status"] == "done"
    plain = prune_at_step(runner, rep, PruneHparams(method="snip", sparsity=0.9, batch_per_class=2))
    mask = Mask.load(runner.store.folder(result["id"]) / "mask.pt")
    assert mask == Mask.load(runner.store.folder(plain["id"]) / "mask.pt")  # scored at TN either way
    dense_start, pruned_start = started[0], started[1]  # the dense replicate, then the pruned network
    tn = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="truncated_normal", seed=0)
    glorot = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="xavier_normal",
                           seed=REINIT_SEED)
    for name, keep in mask.items():
        assert torch.equal(dense_start[name], tn.get_parameter(name).detach())
        expected = torch.where(keep, glorot.get_parameter(name).detach(), torch.zeros(()))
        assert torch.equal(pruned_start[name], expected)
    hparams = json.loads((runner.store.folder(result["id"]) / "hparams.json").read_text())
    assert hparams["pruning"]["reinit_init"] == "xavier_normal"
    from prunelab.experiments.protocols.prune_at import PRUNE_AT_STEP

    assert PRUNE_AT_STEP.describe(hparams) == "snip@0it+reinit from xavier_normal"


def test_lottery_levels_build_on_each_other(runner):
    results = lottery(runner, REP, LotteryHparams(levels=3, rate=0.2))
    assert runner.steps_executed == 12 * 4
    masks = [Mask.load(runner.store.folder(r["id"]) / "mask.pt") for r in results]
    for level, (r, m) in enumerate(zip(results, masks), start=1):
        assert m.density == pytest.approx(0.8**level, abs=1e-5)
        assert r["level"] == level and r["dense_accuracy"] is not None
    for earlier, later in zip(masks, masks[1:]):
        assert not torch.any(torch.cat([(later[n] & ~earlier[n]).flatten() for n in later]))  # never revived
    lottery(runner, REP, LotteryHparams(levels=4, rate=0.2))  # one more level reuses the first three
    assert runner.steps_executed == 12 * 5


def test_lottery_rewinds_to_step_t(runner):
    (r,) = lottery(runner, REP, LotteryHparams(levels=1, rate=0.5, rewind_to="4it"))
    assert r["rewind_step"] == 4
    # dense 0..4 (kept), dense 4..12, then the ticket from 4 to 12
    assert runner.steps_executed == 12 + 8


@pytest.mark.parametrize("rewind", ["finetune", "sigma_sign", "sign"])
@pytest.mark.parametrize("structure", ["unstructured", "l1", "hybrid", "fc_only"])
def test_lottery_variants(runner, rewind, structure):
    (r,) = lottery(runner, REP, LotteryHparams(levels=1, rate=0.3, rewind_to=rewind, structure=structure,
                                               scope="layer"))
    assert r["status"] == "done"


def test_interrupted_prune_run_resumes_to_the_same_result(data_root, tmp_path, monkeypatch):
    hp = PruneHparams(method="magnitude", sparsity=0.9)
    ref = prune_at_step(Runner(RunStore(tmp_path / "a"), data_root=data_root, device="cpu"), REP, hp)
    import prunelab.experiments.runner as runner_module

    real_train = runner_module.train

    def crash_at_step_7(*args, on_step, **kwargs):
        def hook(step, model):
            on_step(step, model)
            if step == 7 and ref["id"] in str(kwargs["checkpoint_dir"]):
                raise KeyboardInterrupt  # what a kill leaves: checkpoints up to step 4 (epoch 1)

        return real_train(*args, on_step=hook, **kwargs)

    runner = Runner(RunStore(tmp_path / "b"), data_root=data_root, device="cpu")
    monkeypatch.setattr(runner_module, "train", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        prune_at_step(runner, REP, hp)
    monkeypatch.setattr(runner_module, "train", real_train)
    assert runner.store.result(ref["id"]) is None  # not finished
    again = Runner(RunStore(tmp_path / "b"), data_root=data_root, device="cpu")
    result = prune_at_step(again, REP, hp)
    assert again.steps_executed == 12 - 4  # resumed from the epoch-1 checkpoint
    keys = ["test_accuracy", "test_loss", "sparsity", "layer_sparsity", "dense_accuracy"]
    assert {k: result[k] for k in keys} == {k: ref[k] for k in keys}
    wa = CheckpointFolder(tmp_path / "a" / ref["id"] / "checkpoints").load_latest()["model"]
    wb = CheckpointFolder(tmp_path / "b" / ref["id"] / "checkpoints").load_latest()["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_protocol_inputs(runner):
    with pytest.raises(ValueError, match="beyond the training length"):
        prune_at_step(runner, REP, PruneHparams(prune_at="100ep"))
    with pytest.raises(ValueError, match="fixed_variance"):
        prune_at_step(runner, REP, PruneHparams(prune_at="4it", ablation="fixed_variance"))
    with pytest.raises(ValueError, match="sparsity"):
        PruneHparams(sparsity=1.0)
    with pytest.raises(ValueError, match="did you mean 'shuffle'"):
        PruneHparams(ablation="shufle")
    with pytest.raises(ValueError, match="rewind_to"):
        LotteryHparams(rewind_to="later")
    assert not any(runner.store.root.glob("*/result.json"))
