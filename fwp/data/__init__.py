"""What tasks share: vocabularies (Hugging Face ``tokenizers``), binarised token caches, batch loaders,
the corpus and tokenizer part of their data modules.

Special tokens ``<pad>, <unk>, <bos>, <eos>`` have ids 0, 1, 2, 3 in every vocabulary.
"""

from fwp.data.datamodule import CorpusDataModule
from fwp.data.files import (
    DataError,
    DataFileNotFoundError,
    StaleCacheWarning,
    cache_writes,
    corpus_directories,
    default_cache_root,
    file_sha256,
    require_nonempty_file,
    text_lines,
)
from fwp.data.loading import BatchIndexSampler, BatchLoader, check_rank, rank_and_world_size
from fwp.data.token_cache import LineTokens, cached_line_tokens, cached_token_stream
from fwp.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    load_or_train_tokenizer,
    tokenizer_fingerprint,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "BatchIndexSampler",
    "BatchLoader",
    "CorpusDataModule",
    "DataError",
    "DataFileNotFoundError",
    "LineTokens",
    "StaleCacheWarning",
    "cache_writes",
    "cached_line_tokens",
    "cached_token_stream",
    "check_rank",
    "corpus_directories",
    "default_cache_root",
    "file_sha256",
    "load_or_train_tokenizer",
    "rank_and_world_size",
    "require_nonempty_file",
    "text_lines",
    "tokenizer_fingerprint",
]
