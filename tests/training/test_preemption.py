"""SIGTERM or SIGUSR1 during training: the run saves a checkpoint at the end of the running batch and
exits cleanly (status 0); training resumes from that checkpoint."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_runs import LossRecorder, build, cli_command, fit, retrieval_args

from fwp.training.preemption import PreemptionCheckpoint


def wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_signal_saves_a_checkpoint_and_exits_cleanly_then_resumes(tmp_path, signum):
    runs = tmp_path / "runs"
    options = ["--trainer.max_steps", "100000", "--trainer.val_check_interval", "20"]
    args = retrieval_args("setting1_delta", *options, "--trainer.logger.init_args.save_dir", str(runs))
    command, environment = cli_command(["fit", *args])
    log = tmp_path / "stderr.txt"
    checkpoints = runs / "retrieval" / "version_0" / "checkpoints"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            wait_for(lambda: any(checkpoints.glob("step*.ckpt")), process, timeout=90)  # training is running
            process.send_signal(signum)
            process.wait(timeout=60)
        finally:
            process.kill()
    err = log.read_text()
    assert process.returncode == 0, err[-3000:]
    preempted = checkpoints / "preempted.ckpt"
    assert f"{signum.name} at global step" in err and preempted.is_file()

    saved_step = torch.load(preempted, weights_only=True)["global_step"]
    assert 20 <= saved_step < 100000
    resume = ["--trainer.max_steps", str(saved_step + 3), "--trainer.logger", "false"]
    trainer = fit(build(retrieval_args("setting1_delta", *resume)), ckpt_path=preempted)
    assert trainer.global_step == saved_step + 3


SLURM_TASK = {
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "fwp-test",
}


def test_slurm_requeue_signal_writes_an_hpc_checkpoint_the_next_job_resumes_from(tmp_path, monkeypatch):
    """One emulated SLURM task: SIGUSR1 goes to Lightning's auto-requeue at the end of the batch
    (``scontrol`` is missing here, so the requeue itself only logs a failure); the next job with the
    same ``default_root_dir`` resumes from ``hpc_ckpt_1.ckpt`` without being told to."""
    root = tmp_path / "root"
    options = ["--trainer.max_steps", "100000", "--trainer.val_check_interval", "20"]
    args = retrieval_args("setting1_delta", *options, "--trainer.default_root_dir", str(root))
    command, environment = cli_command(["fit", *args, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    log = tmp_path / "stderr.txt"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, cwd=tmp_path, env={**environment, **SLURM_TASK}, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            wait_for(lambda: any(tmp_path.rglob("step*.ckpt")), process, timeout=90)
            process.send_signal(signal.SIGUSR1)
            process.wait(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 0, log.read_text()[-3000:]
    hpc = root / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and not any(tmp_path.rglob("preempted.ckpt"))
    saved_step = torch.load(hpc, weights_only=True)["global_step"]

    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    recorder = LossRecorder()
    resume = ["--trainer.max_steps", str(saved_step + 2), "--trainer.default_root_dir", str(root)]
    fit(build(retrieval_args("setting1_delta", *resume, "--trainer.logger", "false"), recorder))
    assert sorted(recorder.losses) == [saved_step + 1, saved_step + 2]


class SignalAt(L.Callback):
    """Delivers ``signum`` to the run's ``PreemptionCheckpoint`` handler when training batch
    ``batch_index`` starts, as the operating system would (in-process, no timing)."""

    def __init__(self, signum: signal.Signals, batch_index: int) -> None:
        self.signum, self.batch_index = signum, batch_index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch_index:
            preemption = next(c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint))
            preemption._record(self.signum, None)


def test_a_signal_inside_an_accumulation_window_saves_after_the_window_and_resumes_exactly(tmp_path):
    """With 4 batches per optimizer step, a signal during batch 5 is acted on after batch 7, when the
    second step is taken: the checkpoint holds no half-summed gradients and resumes bit for bit."""
    options = ["--trainer.accumulate_grad_batches", "4", "--trainer.val_check_interval", "100"]

    def args(name: str, steps: int) -> list[str]:
        save_dir = ["--trainer.logger.init_args.save_dir", str(tmp_path / name)]
        return retrieval_args("setting1_delta", *options, "--trainer.max_steps", str(steps), *save_dir)

    uninterrupted = build(args("uninterrupted", 4))
    fit(uninterrupted)
    preempted = build(args("preempted", 4), SignalAt(signal.SIGTERM, 5))
    fit(preempted)
    checkpoint = Path(preempted.trainer.checkpoint_callback.dirpath) / "preempted.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    resumed = build(args("resumed", 4))
    fit(resumed, ckpt_path=checkpoint)
    final = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, final[name]), name


def test_the_requeue_signal_is_kept_when_sigterm_follows_it():
    """SLURM warns with SIGUSR1 and sends SIGTERM at the time limit: the job must still be requeued."""
    preemption = PreemptionCheckpoint()
    preemption._requeue_signal = signal.SIGUSR1
    preemption._record(signal.SIGUSR1, None)
    preemption._record(signal.SIGTERM, None)
    assert preemption.received == signal.SIGUSR1
    preemption.received = None
    preemption._record(signal.SIGTERM, None)
    preemption._record(signal.SIGUSR1, None)
    assert preemption.received == signal.SIGUSR1
