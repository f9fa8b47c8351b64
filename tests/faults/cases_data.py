"""Data and input faults: a user's corpus, prediction input, data options or cache directory is wrong.

Each case writes a tiny corpus into ``tmp_path`` (or breaks one) and runs the smallest config of the
task; all of them fail before the first training step, most while the data module reads the data.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.cli_run import Fault

LM = ["--config", "conf/lm/synthetic.yaml", "--trainer.fast_dev_run", "1"]
MT = ["--config", "conf/mt/synthetic.yaml", "--trainer.fast_dev_run", "1"]
SENTENCES = [
    "the cat sleeps on the mat .",
    "a dog runs in the park .",
    "my friend reads a long book .",
    "the children sing a song .",
]
TOKENS = " ".join(SENTENCES * 20)


def config(repo_relative: list[str]) -> list[str]:
    """The task's config with an absolute path, so the CLI can run in ``tmp_path``."""
    from tests.faults.cli_run import REPO

    return [str(REPO / arg) if arg.startswith("conf/") else arg for arg in repo_relative]


def write_lm_corpus(directory: Path, **overrides: bytes) -> Path:
    """``wiki.{train,valid,test}.tokens`` of a few hundred words; ``overrides`` replace a split's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        content = overrides.get(split, (TOKENS + "\n").encode() * 4)
        (directory / f"wiki.{split}.tokens").write_bytes(content)
    return directory


def lm_run(tmp_path: Path, *extra: str, **overrides: bytes) -> list[str]:
    data = write_lm_corpus(tmp_path / "wiki", **overrides)
    return [*config(["fit", *LM]), "--data.init_args.data_dir", str(data), *extra]


def write_mt_corpus(directory: Path, **overrides: bytes) -> Path:
    """``{train,valid,test}.{src,tgt}`` of a few aligned sentences; ``overrides`` (``train_src=...``)
    replace a file's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, copies in (("train", 20), ("valid", 1), ("test", 1)):
        for side in ("src", "tgt"):
            lines = SENTENCES if side == "src" else [s.upper() for s in SENTENCES]
            content = overrides.get(
                f"{split}_{side}", "".join(f"{line}\n" for line in lines * copies).encode()
            )
            (directory / f"{split}.{side}").write_bytes(content)
    return directory


def mt_run(tmp_path: Path, *extra: str, subcommand: str = "fit", **overrides: bytes) -> list[str]:
    data = write_mt_corpus(tmp_path / "parallel", **overrides)
    options = ["--data.init_args.data_dir", str(data), "--data.init_args.bpe_vocab_size", "300"]
    return [*config([subcommand, *MT]), *options, *extra]


def mt_predict(tmp_path: Path, predict_file: str) -> list[str]:
    return mt_run(tmp_path, "--data.init_args.predict_file", predict_file, subcommand="predict")


def mt_predict_text(tmp_path: Path, text: str) -> list[str]:
    """Predict with a ``predict_file`` holding ``text``."""
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    return mt_predict(tmp_path, str(path))


def misaligned(tmp_path: Path) -> list[str]:
    return mt_run(tmp_path, valid_src=b"one line only .\n")


def stray_carriage_return(tmp_path: Path) -> list[str]:
    """A ``\\r`` inside a source line: ``wc -l`` counts 4 lines on both sides, so the corpus is aligned,
    but the target has an empty line 2 (in validation an error that names it)."""
    return mt_run(tmp_path, valid_src=b"a\rb .\nc .\nd .\ne .\n", valid_tgt=b"A .\n\nC .\nD .\n")


def cache_in_a_read_only_place(tmp_path: Path) -> list[str]:
    """Running as root, no ``chmod`` makes a directory read-only; ``/sys`` refuses new files to anyone."""
    return lm_run(tmp_path, "--data.init_args.cache_dir", "/sys/fwp-cache")


CASES: list[Fault] = [
    Fault(
        "mt-misaligned-corpus",
        misaligned,
        lambda t: [t / "parallel" / "valid.src", "1 lines", t / "parallel" / "valid.tgt", "4 lines"],
    ),
    Fault(
        "mt-invalid-utf8",
        lambda t: mt_run(t, valid_tgt=b"A .\nB .\nbroken \xff .\nD .\n"),
        lambda t: [t / "parallel" / "valid.tgt", "line 3", "UTF-8"],
    ),
    Fault(
        "lm-invalid-utf8",
        lambda t: lm_run(t, valid=(TOKENS + "\n").encode() * 3 + b"bad \xc3\x28 here\n"),
        lambda t: [t / "wiki" / "wiki.valid.tokens", "line 4", "UTF-8"],
    ),
    Fault(
        "mt-stray-carriage-return-counts-like-wc",
        stray_carriage_return,
        lambda t: [t / "parallel" / "valid.tgt", "line 2 is empty"],
    ),
    Fault(
        "mt-all-training-pairs-dropped",
        lambda t: mt_run(t, "--data.init_args.max_positions", "3", "--data.init_args.max_tokens", "64"),
        lambda t: [t / "parallel" / "train.src", "max_positions=3"],
    ),
    Fault(
        "mt-predict-file-missing",
        lambda t: mt_predict(t, str(t / "nowhere.txt")),
        lambda t: [t / "nowhere.txt", "predict_file"],
    ),
    Fault(
        "mt-predict-file-empty",
        lambda t: mt_predict_text(t, ""),
        lambda t: [t / "input.txt", "empty"],
    ),
    Fault(
        "mt-predict-file-blank-line",
        lambda t: mt_predict_text(t, "the cat .\n  \n"),
        lambda t: [t / "input.txt", "line 2"],
    ),
    Fault(
        "mt-predict-empty-standard-input",
        lambda t: (mt_predict(t, "-"), ""),
        lambda t: ["standard input", "empty"],
    ),
    Fault(
        "lm-split-too-short-for-the-batch",
        lambda t: lm_run(t, valid=b"only a few words\n"),
        lambda t: [t / "wiki" / "wiki.valid.tokens", "eval_batch_size"],
    ),
    Fault(
        "lm-empty-split",
        lambda t: lm_run(t, test=b""),
        lambda t: [t / "wiki" / "wiki.test.tokens", "empty"],
    ),
    Fault(
        "lm-data-dir-missing",
        lambda t: [*lm_run(t), "--data.init_args.data_dir", str(t / "nowhere")],
        lambda t: [t / "nowhere"],
    ),
    Fault(
        "lm-cache-dir-not-writable",
        cache_in_a_read_only_place,
        lambda t: ["/sys/fwp-cache", "cache_dir"],
    ),
    Fault(
        "mt-language-suffix-without-files",
        lambda t: mt_run(t, "--data.init_args.src_lang", "en", "--data.init_args.tgt_lang", "de"),
        lambda t: [t / "parallel" / "train.en"],
    ),
    Fault(
        "lm-bpe-without-vocab-size",
        lambda t: lm_run(t, "--data.init_args.tokenizer", "bpe"),
        lambda t: ["bpe_vocab_size"],
    ),
    Fault(
        "retrieval-no-keys",
        lambda t: [
            *config(["fit", "--config", "conf/retrieval/setting1.yaml"]),
            "--data.init_args.num_keys",
            "0",
        ],
        lambda t: ["num_keys"],
    ),
    Fault(
        "mt-packed-batches-with-compile",
        lambda t: mt_run(t, "--data.init_args.packed", "true", "--model.init_args.compile", "true"),
        lambda t: ["compile: true", "packed: true"],
    ),
]
