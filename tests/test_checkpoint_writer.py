"""Checkpoints written in the background: order, errors, a state frozen at its step, the device warning."""

import threading

import pytest
import torch
from test_speed_options import SHORT, convnet

from prunelab.training import train
from prunelab.training.checkpoints import BackgroundWriter, CheckpointFolder, load_checkpoint, save_checkpoint, to_host
from prunelab.training.loop import DeviceChangeWarning


def test_writes_run_in_order_off_the_calling_thread():
    writer, done, threads = BackgroundWriter(max_pending=2), [], set()

    def write(i):
        threads.add(threading.current_thread().name)
        done.append(i)

    for i in range(10):
        writer.submit(write, i)
    writer.close()
    assert done == list(range(10))
    assert threads and threading.current_thread().name not in threads


def test_an_error_in_a_write_reaches_the_caller():
    writer = BackgroundWriter()

    def fail():
        raise OSError(28, "No space left on device")

    writer.submit(fail)
    with pytest.raises(OSError, match="No space"):
        writer.flush()
    writer.close()


def test_the_host_copy_is_frozen_when_it_is_taken():
    model = torch.nn.Linear(3, 2)
    state = {"model": model.state_dict(), "metrics": [{"step": 1}], "step": 1}
    copy = to_host(state)
    with torch.no_grad():
        model.weight.add_(1.0)
    state["metrics"].append({"step": 2})
    assert not torch.equal(copy["model"]["weight"], model.weight)
    assert copy["metrics"] == [{"step": 1}]
    assert type(copy["model"]) is type(state["model"])


def test_checkpoints_hold_the_state_of_their_step(tiny_dataset, tmp_path):
    """The background write must not pick up weights of later steps: latest.pt of epoch 1 equals the
    weights a hook saw at step 4, although training went on while it was written."""
    seen = {}

    def grab(step, model):
        if step == 4:
            seen.update({k: v.clone() for k, v in model.state_dict().items()})

    train(convnet(), tiny_dataset, SHORT.replace(train="2ep", momentum=0.9), device="cpu", on_step=grab,
          checkpoint_dir=tmp_path, keep_steps=[4])
    state = CheckpointFolder(tmp_path).load_step(4)
    assert state["step"] == 4 and state["device"] == "cpu"
    assert all(torch.equal(state["model"][k], v) for k, v in seen.items())
    assert load_checkpoint(tmp_path / "latest.pt")["step"] == 8  # complete when train() returned


def test_resuming_on_another_device_kind_warns(tiny_dataset, tmp_path):
    train(convnet(), tiny_dataset, SHORT.replace(train="2ep"), device="cpu", checkpoint_dir=tmp_path, end_step=4)
    state = load_checkpoint(tmp_path / "latest.pt")
    save_checkpoint(tmp_path / "latest.pt", {**state, "device": "cuda"})  # as written on a GPU
    with pytest.warns(DeviceChangeWarning, match="resuming at step 4 on cpu from a checkpoint written on cuda"):
        train(convnet(), tiny_dataset, SHORT.replace(train="2ep"), device="cpu", checkpoint_dir=tmp_path)
