"""Sparse Iso-FLOP Transformations (Sparse-IFT) for BERT and GPT-2."""

from .sizing import doped_rank, factorized_rank, parallel_branches, round_to_multiple, search_space_cardinality, wide_factor
