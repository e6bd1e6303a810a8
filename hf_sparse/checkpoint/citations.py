"""The papers behind a sparse checkpoint, as model cards cite them (BibTeX, with arXiv ids where there are any).

`papers_for(record)` picks the papers of a saved run from its ``sparsity_config.json`` record: the paper of its
algorithm (an algorithm class may name its own with a ``papers`` class attribute; the built-ins are listed in
`ALGORITHM_PAPERS`), Sparse-IFT when the model records a transformation, the NVIDIA study for transposable N:M
masks, the DynSparse sparse learning-rate rule when it was applied, and whatever the caller adds under
``card_info["papers"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Paper:
    """One cited paper.

    Args:
        cite: Short in-text citation (authors, year, arXiv id or why there is none).
        bibtex: The BibTeX entry.
    """

    cite: str
    bibtex: str


PAPERS: Dict[str, Paper] = {
    "dynsparse": Paper(
        "Dietrich et al. 2021, arXiv:2108.06277",
        """@article{dietrich2021towards,
  title         = "Towards Structured Dynamic Sparse Pre-Training of {BERT}",
  author        = {Dietrich, Anastasia S. D. and Gressmann, Frithjof and Orr, Douglas and Chelombiev, Ivan and
                   Justus, Daniel and Luschi, Carlo},
  journal       = {arXiv preprint arXiv:2108.06277},
  year          = {2021},
  eprint        = {2108.06277},
  archivePrefix = {arXiv}
}""",
    ),
    "sparse_ift": Paper(
        "Saxena et al. 2023, arXiv:2303.11525",
        """@article{saxena2023sparse,
  title         = {Sparse Iso-{FLOP} Transformations for Maximizing Training Efficiency},
  author        = {Saxena, Shreyas and Thangarasa, Vithursan and Gupta, Abhay and Lie, Sean},
  journal       = {arXiv preprint arXiv:2303.11525},
  year          = {2023},
  eprint        = {2303.11525},
  archivePrefix = {arXiv}
}""",
    ),
    "rigl": Paper(
        "Evci et al. 2020, arXiv:1911.11134",
        """@inproceedings{evci2020rigging,
  title         = {Rigging the Lottery: Making All Tickets Winners},
  author        = {Evci, Utku and Gale, Trevor and Menick, Jacob and Castro, Pablo Samuel and Elsen, Erich},
  booktitle     = {Proceedings of the 37th International Conference on Machine Learning (ICML)},
  year          = {2020},
  eprint        = {1911.11134},
  archivePrefix = {arXiv}
}""",
    ),
    "set": Paper(
        "Mocanu et al. 2018, arXiv:1707.04780",
        """@article{mocanu2018scalable,
  title         = {Scalable Training of Artificial Neural Networks with Adaptive Sparse Connectivity Inspired by
                   Network Science},
  author        = {Mocanu, Decebal Constantin and Mocanu, Elena and Stone, Peter and Nguyen, Phuong H. and
                   Gibescu, Madeleine and Liotta, Antonio},
  journal       = {Nature Communications},
  volume        = {9},
  pages         = {2383},
  year          = {2018},
  eprint        = {1707.04780},
  archivePrefix = {arXiv}
}""",
    ),
    "gmp": Paper(
        "Zhu & Gupta 2017, arXiv:1710.01878",
        """@article{zhu2017prune,
  title         = {To Prune, or Not to Prune: Exploring the Efficacy of Pruning for Model Compression},
  author        = {Zhu, Michael and Gupta, Suyog},
  journal       = {arXiv preprint arXiv:1710.01878},
  year          = {2017},
  eprint        = {1710.01878},
  archivePrefix = {arXiv}
}""",
    ),
    "movement": Paper(
        "Sanh et al. 2020, arXiv:2005.07683",
        """@inproceedings{sanh2020movement,
  title         = {Movement Pruning: Adaptive Sparsity by Fine-Tuning},
  author        = {Sanh, Victor and Wolf, Thomas and Rush, Alexander M.},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2020},
  eprint        = {2005.07683},
  archivePrefix = {arXiv}
}""",
    ),
    "nvidia_sparse_training": Paper(
        "Advances in Sparse Neural Model Training (NVIDIA; anonymous ICLR 2022 submission, no arXiv id)",
        """@misc{anonymous2022advances,
  title         = {Advances in Sparse Neural Model Training},
  author        = {Anonymous},
  year          = {2022},
  note          = {Submission under double-blind review (NVIDIA), ICLR 2022, OpenReview; no arXiv id}
}""",
    ),
    "cerebras_upper_bounds": Paper(
        "Singh et al. 2024, NeurIPS 2024 Compression Workshop (no arXiv id)",
        """@inproceedings{singh2024empirical,
  title         = {Empirical Upper Bounds for Unstructured Sparsity in Compute-Efficient Language Modeling},
  author        = {Singh, Esha and Bergsma, Shane and Dey, Nolan Simran and Hestness, Joel and Gray, Gavia},
  booktitle     = {Compression Workshop at NeurIPS 2024},
  year          = {2024},
  url           = {https://openreview.net/forum?id=qOnKSqiGtR},
  note          = {No arXiv id}
}""",
    ),
}

#: Papers of the built-in algorithms (a registered class may instead carry ``papers = ("key", ...)``).
ALGORITHM_PAPERS: Dict[str, tuple] = {
    "static": (),
    "dynsparse": ("dynsparse",),
    "set": ("set", "dynsparse"),
    "rigl": ("rigl",),
    "gmp": ("gmp",),
    "topk": ("nvidia_sparse_training",),
    "movement": ("movement",),
    "soft_movement": ("movement",),
}


def _algorithm_class(name: Optional[str]):
    from ..config.registry import ALGORITHM_REGISTRY

    try:
        return ALGORITHM_REGISTRY.get(name) if name else None
    except ValueError:  # a user algorithm not registered in this process: cite what the record says
        return None


def papers_for(record: Dict[str, Any]) -> List[str]:
    """The keys of `PAPERS` a checkpoint's card cites, in citation order (no duplicates).

    Args:
        record: The ``sparsity_config.json`` record (``dynamic_config``, ``ift_config``, ``modules``, ``card``).

    Returns:
        Keys of `PAPERS`.

    Raises:
        ValueError: when ``record["card"]["papers"]`` names an unknown paper.

    Example:
        >>> papers_for({"dynamic_config": {"algorithm": "rigl"}, "ift_config": {"kind": "wide"}, "modules": []})
        ['rigl', 'sparse_ift']
    """
    dynamic = record.get("dynamic_config") or {}
    card = record.get("card") or {}
    name = dynamic.get("algorithm")
    cls = _algorithm_class(name)
    keys = list(getattr(cls, "papers", None) or ALGORITHM_PAPERS.get(name, ()))
    if dynamic.get("apply_sparse_lr"):
        keys.append("dynsparse")  # the sparse learning-rate rule, Eq. 3
    if record.get("ift_config"):
        keys.append("sparse_ift")
    if any((m.get("structure") or {}).get("kind") == "nm_transposable" for m in record.get("modules") or []):
        keys.append("nvidia_sparse_training")  # transposable N:M masks, App. E
    extra = card.get("papers") or []
    unknown = [k for k in extra if k not in PAPERS]
    if unknown:
        raise ValueError(f"card_info['papers'] names unknown papers {unknown}; choose from {sorted(PAPERS)}.")
    keys += list(extra)
    return [k for i, k in enumerate(keys) if k in PAPERS and k not in keys[:i]]
