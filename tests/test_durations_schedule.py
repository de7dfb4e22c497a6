import pytest

from prunelab.training import Duration, TrainSettings, iterations, lr_factor, recipe


@pytest.mark.parametrize(
    "text,ipe,expected", [("160ep", 391, 62560), ("1000it", 391, 1000), ("2ep50it", 100, 250), (7, 10, 7)]
)
def test_durations(text, ipe, expected):
    assert iterations(text, ipe) == expected


@pytest.mark.parametrize("bad", ["", "ep", "10", "3 epochs", "-1it", "1.5ep", "it10"])
def test_malformed_durations(bad):
    with pytest.raises(ValueError, match="malformed duration"):
        Duration.parse(bad)


def test_duration_roundtrip():
    for text in ["160ep", "1000it", "2ep50it"]:
        assert str(Duration.parse(text)) == text


def test_lr_schedule_drops_and_warmup():
    s = TrainSettings(train="10ep", lr=0.1, milestones=("4ep", "8ep"), gamma=0.1, warmup="5it")
    ipe = 10
    expected = []
    for step in range(100):
        warm = min(1.0, (step + 1) / 5)
        drops = (step >= 40) + (step >= 80)
        expected.append(warm * 0.1**drops)
    assert [lr_factor(s_, s, ipe) for s_ in range(100)] == pytest.approx(expected)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"lr": -0.1}, "learning rate"),
        ({"lr": 0}, "learning rate"),
        ({"batch_size": 0}, "batch size"),
        ({"optimizer": "sgdd"}, "did you mean 'sgd'"),
        ({"train": "40 epochs"}, "malformed"),
        ({"weight_decay": -1}, "weight decay"),
        ({"momentum": 1.5}, "momentum"),
    ],
)
def test_bad_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**changes)


def test_recipes_follow_appendix_a3():
    lenet = recipe("lenet_300_100", "mnist")
    assert (lenet.train, lenet.batch_size, lenet.lr, lenet.momentum) == ("40ep", 128, 0.1, 0.0)
    r20 = recipe("resnet20", "cifar10")
    assert (r20.train, r20.momentum, r20.milestones, r20.weight_decay) == ("160ep", 0.9, ("80ep", "120ep"), 1e-4)
    r50 = recipe("resnet50", "imagenet")
    assert (r50.batch_size, r50.lr, r50.milestones) == (1024, 0.4, ("30ep", "60ep", "80ep"))


def test_step_end_resolves_to_the_length_of_training():
    from prunelab.training import Step

    assert Step.parse("end", allow_end=True).resolve(iters_per_epoch=7, total=40) == 40
    assert str(Step.parse("end", allow_end=True)) == "end"
    assert Step.parse("2ep3it").resolve(iters_per_epoch=7, total=40) == 2 * 7 + 3
    with pytest.raises(ValueError, match="malformed"):
        Step.parse("end")  # only where a point in training may be the end
    with pytest.raises(ValueError, match="beyond the training length"):
        Step.parse("6ep").resolve(iters_per_epoch=7, total=40)
