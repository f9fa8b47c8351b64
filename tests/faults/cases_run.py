"""Run-time faults: options that are valid YAML but cannot be carried out by ``predict`` or generation
(a prompt the model cannot take, a prompt file that is missing or unreadable, sampling values out of
range). Each runs ``predict`` of the synthetic LM config on a tiny corpus, with random weights."""

from __future__ import annotations

from pathlib import Path

from tests.faults.cases_data import config, write_lm_corpus
from tests.faults.cli_run import Fault

LM_PREDICT = ["predict", "--config", "conf/lm/synthetic.yaml"]
LEARNED_POSITIONS = [
    "--model.init_args.carry_state", "false",
    "--model.init_args.backbone.positional", "learned",
    "--model.init_args.backbone.max_positions", "8",
]  # fmt: skip
SIX_WORD_PROMPT = [
    "--model.init_args.prompt_length",
    "1",
    "--model.init_args.prompt",
    "the cat sleeps on the mat",
]


def lm_predict(tmp_path: Path, *extra: str) -> list[str]:
    """``predict`` of the synthetic LM config on a tiny corpus in ``tmp_path``, with ``extra`` options."""
    data = write_lm_corpus(tmp_path / "wiki")
    return [*config(LM_PREDICT), "--data.init_args.data_dir", str(data), *extra]


def prompt_file(tmp_path: Path, content: bytes) -> list[str]:
    (tmp_path / "prompt.txt").write_bytes(content)
    return lm_predict(tmp_path, "--model.init_args.prompt_file", str(tmp_path / "prompt.txt"))


CASES: list[Fault] = [
    Fault(
        "lm-generation-past-learned-positions",
        lambda t: lm_predict(t, *LEARNED_POSITIONS, "--model.init_args.prompt_length", "6"),
        lambda t: ["max_new_tokens=64", "max_positions=8", "prompt_length"],
    ),
    Fault(
        "lm-prompt-text-past-learned-positions",
        lambda t: lm_predict(
            t, *LEARNED_POSITIONS, *SIX_WORD_PROMPT, "--model.init_args.max_new_tokens", "4"
        ),
        lambda t: ["prompt:", "max_new_tokens=4", "max_positions=8"],
    ),
    Fault(
        "lm-prompt-file-missing",
        lambda t: lm_predict(t, "--model.init_args.prompt_file", str(t / "nowhere.txt")),
        lambda t: ["prompt_file", t / "nowhere.txt"],
    ),
    Fault(
        "lm-prompt-file-blank",
        lambda t: prompt_file(t, b" \n\n"),
        lambda t: ["prompt_file", t / "prompt.txt", "empty"],
    ),
    Fault(
        "lm-prompt-file-not-utf8",
        lambda t: prompt_file(t, b"the cat \xff sleeps\n"),
        lambda t: ["prompt_file", t / "prompt.txt", "UTF-8"],
    ),
    Fault(
        "lm-prompt-words-outside-the-vocabulary",
        lambda t: lm_predict(t, "--model.init_args.prompt", "the zebra sleeps"),
        lambda t: ["prompt", "not in the vocabulary", "'zebra'"],
    ),
    Fault(
        "lm-predict-output-is-a-directory",
        lambda t: lm_predict(t, "--model.init_args.predict_output", str(t)),
        lambda t: ["predict_output", t, "is a directory"],
    ),
    Fault(
        "lm-negative-temperature",
        lambda t: lm_predict(t, "--model.init_args.temperature", "-1"),
        lambda t: ["temperature=-1"],
    ),
    Fault(
        "lm-zero-samples",
        lambda t: lm_predict(t, "--model.init_args.num_samples", "0"),
        lambda t: ["num_samples=0"],
    ),
]
