"""rllc.data: offline deterministic corpora, the training mix and the BPE tokenizer.

    tok = train_tokenizer(code_documents("train") + prose_documents("train"), 512)
    x = load_dataset("induction", tok, n_ctx=64, split="eval", n_sequences=256, seed=0)
"""

from .datasets import DATASETS, SOURCES, DataMix, load_dataset, mix_batch, source_batch
from .text import SPLITS, code_documents, prose_documents
from .tokenizer import EOT, bracket_ids, encode_documents, tokenizer_from_json, train_tokenizer

__all__ = [
    "DATASETS",
    "EOT",
    "SOURCES",
    "SPLITS",
    "DataMix",
    "bracket_ids",
    "code_documents",
    "encode_documents",
    "load_dataset",
    "mix_batch",
    "prose_documents",
    "source_batch",
    "tokenizer_from_json",
    "train_tokenizer",
]
