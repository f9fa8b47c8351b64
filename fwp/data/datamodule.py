"""What the tasks' data modules share: where the corpus and its derived files are, one tokenizer built
on first access, the special token ids, batch loaders over the datasets that ``setup`` opened."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from fwp.data.files import corpus_directories
from fwp.data.loading import BatchLoader
from fwp.data.tokenizer import EOS_ID, PAD_ID, load_or_train_tokenizer


class CorpusDataModule(L.LightningDataModule):
    """A data module over the text files of ``data_dir`` with one tokenizer trained on some of them.

    ``data_dir=None`` means the task's synthetic corpus in ``<cache_dir or cache root>/
    <synthetic_subdir>``, written by ``generate_synthetic(directory)`` unless all ``synthetic_files``
    are there (``fwp.data.corpus_directories``). The tokenizer (``tokenizer_kind``, with
    ``bpe_vocab_size`` tokens for ``bpe``) is trained on ``tokenizer_files()``, saved in ``cache_path``
    and reused. ``setup`` opens the datasets of the splits a stage needs in ``datasets`` (one item per
    batch), which the training, validation and test loaders serve through ``BatchLoader``. Subclasses set
    the three class attributes and define ``tokenizer_files``, ``loader_options`` and ``setup``.
    """

    synthetic_subdir: ClassVar[str]
    synthetic_files: ClassVar[Sequence[str]]
    generate_synthetic: ClassVar[Callable[[Path], object]]

    def __init__(
        self,
        *,
        data_dir: str | None,
        cache_dir: str | None,
        tokenizer_kind: Literal["word", "bpe"],
        bpe_vocab_size: int | None,
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.tokenizer_kind = tokenizer_kind
        self.bpe_vocab_size = bpe_vocab_size
        self._tokenizer: Tokenizer | None = None
        self.datasets: dict[str, Dataset] = {}

    def tokenizer_files(self) -> list[Path]:
        """The text files the tokenizer is trained on."""
        raise NotImplementedError

    def loader_options(self, split: str) -> dict[str, Any]:
        """Keyword arguments of ``split``'s ``BatchLoader`` (``shuffle``, ``seed``, ``num_workers``, ...)."""
        raise NotImplementedError

    def _directories(self) -> tuple[Path, Path]:
        return corpus_directories(
            self.data_dir,
            self.cache_dir,
            synthetic_subdir=self.synthetic_subdir,
            expected_files=self.synthetic_files,
            generate=self.generate_synthetic,
        )

    @property
    def data_path(self) -> Path:
        """The corpus directory; the synthetic corpus is generated on first access if ``data_dir`` is None."""
        return self._directories()[0]

    @property
    def cache_path(self) -> Path:
        """Where the tokenizer and the token caches are written."""
        return self._directories()[1]

    @property
    def tokenizer(self) -> Tokenizer:
        """The vocabulary of ``tokenizer_files()`` (built and saved on first access, then loaded)."""
        if self._tokenizer is None:
            self._tokenizer = load_or_train_tokenizer(
                self.tokenizer_files(),
                kind=self.tokenizer_kind,
                save_dir=self.cache_path,
                vocab_size=self.bpe_vocab_size if self.tokenizer_kind == "bpe" else None,
            )
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (for the model's embeddings and softmax)."""
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (for models that need one)."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """Id of ``<eos>``, which ends every line."""
        return EOS_ID

    def _loader(self, split: str) -> BatchLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split is not set up: call setup() with a stage that uses it")
        return BatchLoader(self.datasets[split], **self.loader_options(split))

    def train_dataloader(self) -> BatchLoader:
        return self._loader("train")

    def val_dataloader(self) -> BatchLoader:
        return self._loader("valid")

    def test_dataloader(self) -> BatchLoader:
        return self._loader("test")
