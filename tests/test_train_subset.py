"""Training on a subset of the training examples (``DataHparams.train_examples``): which examples, that they keep
their images and labels, that every seed gets the same ones, and that a run's training, scoring batch and random
labels all come from the subset while the test set stays whole."""

from __future__ import annotations

import pytest
import torch
from test_data import write_idx_set
from test_random_labels import labelled, within_binomial

from prunelab import data
from prunelab.cli import main
from prunelab.data import FolderSplit
from prunelab.experiments.hparams import DataHparams, ModelHparams, PruneHparams, run_hash
from prunelab.experiments.protocols import prune_at_step
from prunelab.experiments.runner import RandomLabelsWarning, Replicate, Runner, TrainSubsetWarning
from prunelab.experiments.store import RunStore
from prunelab.training import TrainSettings

N, C = 2000, 10


@pytest.fixture(scope="module")
def big():
    return data.from_tensors(labelled(N, C, 0), labelled(300, C, 1))


def positions(part: torch.Tensor, whole: torch.Tensor) -> list[int]:
    """Where each image of ``part`` lies in ``whole``, found by its pixels (the images are distinct)."""
    flat = whole.flatten(1)
    return [int((flat == row).all(1).nonzero()) for row in part.flatten(1)]


def test_a_subset_keeps_distinct_examples_with_their_own_images_and_labels(big):
    sub = big.with_train_subset(300)
    assert len(sub.train) == 300 and sub.test is big.test and len(big.train) == N  # the source is untouched
    where = positions(sub.train.images, big.train.images)
    assert len(set(where)) == 300  # no example twice
    assert sub.train.labels.tolist() == [big.train.labels[i].item() for i in where]  # each keeps its label
    # drawn uniformly: not a block of the split, and every class about 300 / C times (labels are i % C)
    assert max(where) - min(where) > N // 2
    counts = torch.bincount(sub.train.labels, minlength=C).tolist()
    assert all(within_binomial(k, 300, 1 / C) for k in counts), counts


def test_the_subset_is_the_same_whatever_the_global_rng_and_nested_in_no_seed(big):
    torch.manual_seed(0)
    one = big.with_train_subset(500).train.images
    torch.manual_seed(1)
    assert torch.equal(one, big.with_train_subset(500).train.images)


def test_all_examples_is_the_dataset_itself(big):
    assert big.with_train_subset(N) is big


@pytest.mark.parametrize("bad", [0, N + 1, -5, 2.5, True, "all"])
def test_a_count_outside_the_split_is_refused_in_one_line(big, bad):
    with pytest.raises(ValueError, match=r"train_examples must be a whole number .* \[1, 2,000\]") as err:
        big.with_train_subset(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_the_hparams_refuse_what_is_not_a_positive_count(bad):
    with pytest.raises(ValueError, match="train_examples must be a positive whole number"):
        DataHparams("mnist", train_examples=bad)


def test_image_folder_splits_are_subset_too():
    samples = [(f"/nowhere/{i}.JPEG", i % 4) for i in range(400)]
    split = FolderSplit(samples, list("abcd"), 8, 8)
    ds = data.Dataset("folders", split, split, 4, (0.5,) * 3, (0.5,) * 3, None, "crop", list("abcd"), "test")
    sub = ds.with_train_subset(50)
    assert len(sub.train) == 50 and len(set(sub.train.samples)) == 50 and set(sub.train.samples) <= set(samples)
    assert sub.train.targets.tolist() == [y for _, y in sub.train.samples] and sub.test is split


def test_the_default_keeps_run_ids():
    rep = Replicate(ModelHparams(), DataHparams("mnist"), TrainSettings())
    assert run_hash("dense", **rep.parts()) == run_hash("dense", model=ModelHparams(), dataset={"dataset": "mnist"},
                                                        training=TrainSettings(), seed=0)
    assert DataHparams("mnist", train_examples=10) != DataHparams("mnist")


# ---- in a run ---------------------------------------------------------------------------------------------------

TRAINING = TrainSettings(train="2ep", batch_size=8, lr=0.05)  # 24 examples: 3 steps an epoch


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    return root


def test_a_run_trains_scores_and_relabels_within_the_subset_and_tests_on_the_whole_test_set(
        mnist_root, tmp_path, run_spy):
    runner = Runner(RunStore(tmp_path / "runs"), data_root=mnist_root, device="cpu")
    rep = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist", random_labels=1.0, train_examples=24),
                    TRAINING, seed=0)
    whole = data.load("mnist", data_root=mnist_root)
    steps = []
    runner.step_listener = steps.append
    with pytest.warns(TrainSubsetWarning, match=r"training on 24 of the 64 training examples of mnist"), \
            pytest.warns(RandomLabelsWarning, match=r"100% of the 24 training labels \(24\)"):
        result = prune_at_step(runner, rep, PruneHparams(method="snip", sparsity=0.9, batch_per_class=1))
    assert result["status"] == "done"
    assert runner.store.hparams(result["id"])["dataset"]["train_examples"] == 24  # recorded, and a valid file

    dense, pruned = run_spy.trained_on
    assert len(dense.train) == len(pruned.train) == 24 and torch.equal(dense.train.labels, pruned.train.labels)
    assert len(dense.test) == 32  # the whole test set
    # the training images are 24 distinct examples of the real split, each served under a random label
    where = positions(dense.train.images, whole.train.images)
    assert len(set(where)) == 24
    assert within_binomial(sum(int(dense.train.labels[i] != whole.train.labels[j]) for i, j in enumerate(where)),
                           24, 0.9)
    # an epoch is 24 / 8 = 3 steps: 2 epochs for the dense network and 2 for the pruned one
    assert len(steps) == 12
    # SNIP's batch comes from the subset and carries the true labels
    (x, y), = run_spy.scored
    ds = runner.dataset(rep.dataset)
    pixels = ds.normalize(whole.train.images).flatten(1)
    found = [int((pixels == row).all(1).nonzero()) for row in x.flatten(1)]
    assert set(found) <= set(where) and torch.equal(y, whole.train.labels[found])


def test_the_cli_refuses_a_subset_larger_than_the_split_in_one_line_before_writing(mnist_root, tmp_path, capsys):
    common = ["train", "--model", "lenet_300_100", "--dataset", "mnist", "--data-root", str(mnist_root), "--train",
              "1ep", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    for bad in ("0", "65"):
        assert main([*common, "--train-examples", bad, "--root", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "train_examples must be" in err and not (tmp_path / "bad").exists()
    assert main([*common, "--train-examples", "32", "--root", str(tmp_path / "runs")]) == 0
    notices = [line for line in capsys.readouterr().err.splitlines() if "training examples" in line]
    assert notices == ["prunelab: warning: training on 32 of the 64 training examples of mnist, a random subset "
                       "that is the same for every seed; the test set is whole"]
