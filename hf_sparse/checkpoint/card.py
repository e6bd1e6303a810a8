"""Model cards for sparse checkpoints, rendered from the packaged template ``hf_sparse/model_cards/``.

The YAML header comes from ``huggingface_hub.ModelCardData`` (library, tags, base model, datasets, metrics,
evaluation results); the body is filled with the real numbers of ``sparsity_config.json``: sparsity and
structure per module group, the algorithm and the hyperparameters that apply to it, training statistics (DOF,
training FLOPs against the dense equivalent), training and evaluation data, evaluation results with their dates,
intended use and limitations, how to load the checkpoint with and without hf_sparse, and the papers behind the
run as BibTeX (`citations`). The template is rendered with ``StrictUndefined``, so a missing value is an error,
never an empty hole.
"""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .citations import PAPERS, _algorithm_class, papers_for
from ..structure import MaskStructure

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "sparse_model.md"
#: Text that must never survive rendering (template syntax or the placeholders of generic card templates).
PLACEHOLDER_PATTERNS = ("{{", "}}", "{%", "%}", "[More Information Needed]", "TODO", "None |")

#: The ``card_info`` keys `save_pretrained` accepts (stored as ``record["card"]``).
CARD_KEYS = ("algorithm", "base_model", "datasets", "eval_data", "eval_results", "intended_use", "language",
             "license", "limitations", "model_name", "papers", "repo_id", "tags", "title", "training_command",
             "training_data")
#: `DynamicSparsityConfig` fields that only matter to algorithms that change masks (not to ``static``).
SCHEDULE_FIELDS = ("num_updates", "update_interval", "prune_ratio", "prune_schedule", "start_fraction",
                   "end_fraction")

_STAT_LABELS = {
    "step": "optimizer steps",
    "tokens": "training tokens",
    "dof": "explored degrees of freedom (DOF)",
    "train_flops": "training FLOPs",
    "dense_train_flops": "dense-equivalent training FLOPs",
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "none"
    if isinstance(value, float):
        if abs(value) >= 1e5 or 0 < abs(value) < 1e-3:
            return f"{value:.4g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) or "[]"
    if isinstance(value, dict):  # e.g. a sparsity_pattern {regex: density}: keys as code, pipes escaped
        return "; ".join(f"`{_fmt(k)}`: {_fmt(v)}" for k, v in value.items()) or "{}"
    return str(value).replace("|", "\\|")


def _rows(config: Optional[Dict[str, Any]], skip: Tuple[str, ...] = ("hf_sparse_version",)) -> List[Tuple[str, str]]:
    return [(k, _fmt(v)) for k, v in (config or {}).items() if k not in skip and v is not None]


def _irrelevant(cfg: Optional[Dict[str, Any]]) -> Tuple[str, ...]:
    """SparsityConfig fields that do not apply to its structure / init (kept out of the card)."""
    cfg = cfg or {}
    skip = ["hf_sparse_version"]
    if cfg.get("structure") != "block":
        skip += ["block_size", "block_norm"]
    if cfg.get("structure") not in ("nm", "nm_transposable"):
        skip += ["n", "m"]
    if cfg.get("init") != "truncated_normal":
        skip.append("init_std")
    return tuple(skip)


def _algorithm_rows(dynamic: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """The recorded dynamic-config fields that apply to its algorithm, driven by the algorithm registry.

    A `DynamicSparsityConfig` field whose metadata names ``"algorithms"`` (``metadata={"help": ...,
    "algorithms": ("rigl",)}``) applies to those algorithms and their subclasses only; so does, without such
    metadata, a field named ``<name>_...`` after a registered algorithm (``topk_reset_interval``,
    ``gmp_initial_density``); algorithms that never change masks drop the update schedule (`SCHEDULE_FIELDS`);
    fields an algorithm class lists in a ``card_fields`` class attribute are always kept. An algorithm unknown to
    this process shows every recorded field.
    """
    if not dynamic:
        return []
    cls = _algorithm_class(dynamic.get("algorithm"))
    if cls is None:
        return _rows(dynamic)
    from ..config import DynamicSparsityConfig
    from ..config.registry import ALGORITHM_REGISTRY

    def applies(names) -> bool:
        return any(n in ALGORITHM_REGISTRY.names() and issubclass(cls, ALGORITHM_REGISTRY.get(n)) for n in names)

    owners = sorted(ALGORITHM_REGISTRY.names(), key=len, reverse=True)  # longest first: soft_movement_ over movement_
    declared = {f.name: f.metadata["algorithms"] for f in fields(DynamicSparsityConfig) if "algorithms" in f.metadata}
    keep = set(getattr(cls, "card_fields", ()) or ())
    skip = set() if getattr(cls, "updates_masks", True) else set(SCHEDULE_FIELDS)
    for key in dynamic:
        if key in declared:
            owned_by = tuple(declared[key])
        else:
            owned_by = tuple(n for n in owners if key.startswith(n + "_"))[:1]
        if owned_by and not applies(owned_by):
            skip.add(key)
    return _rows(dynamic, skip=("hf_sparse_version", *sorted(skip - keep)))


def module_groups(modules: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Groups module records by name with layer indices replaced by ``*`` and sums their counts."""
    groups: Dict[str, Dict[str, Any]] = {}
    for rec in modules:
        key = re.sub(r"\.\d+(?=\.|$)", ".*", rec["name"])
        g = groups.setdefault(key, {"group": key, "count": 0, "shapes": [], "structures": [], "targets": [],
                                    "active": 0, "numel": 0})
        g["count"] += 1
        g["active"] += rec["active"]
        g["numel"] += rec["numel"]
        for field_name, value in (("shapes", "x".join(map(str, rec["shape"]))),
                                  ("structures", MaskStructure(**rec["structure"]).describe()),
                                  ("targets", f"{rec['target_density']:.4f}")):
            if value not in g[field_name]:
                g[field_name].append(value)
    out = []
    for g in groups.values():
        out.append({"group": g["group"], "count": g["count"], "shapes": ", ".join(g["shapes"]),
                    "structures": ", ".join(g["structures"]), "target": ", ".join(g["targets"]),
                    "density": f"{g['active'] / g['numel']:.4f}", "active": g["active"], "numel": g["numel"]})
    return out


def _stats_rows(stats: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    stats = dict(stats or {})
    rows = [(_STAT_LABELS.get(k, k), _fmt(v)) for k, v in stats.items() if v is not None]
    flops, dense = stats.get("train_flops"), stats.get("dense_train_flops")
    if isinstance(flops, (int, float)) and isinstance(dense, (int, float)) and dense > 0:
        rows.append(("training FLOPs / dense", f"{flops / dense:.4f}"))
    return rows


def _check_date(value: Any, where: str) -> str:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    try:
        datetime.fromisoformat(str(value))
    except ValueError as err:
        raise ValueError(f"{where}={value!r} is not an ISO date (YYYY-MM-DD): {err}.") from err
    return str(value)


def _eval_results(card: Dict[str, Any], model_name: str):
    """``(EvalResult list, their dates)``; a result's ``"date"`` is ours, the rest are EvalResult keywords."""
    from huggingface_hub import EvalResult

    results, dates = [], []
    for i, r in enumerate(card.get("eval_results") or []):
        if not isinstance(r, dict):
            raise ValueError(f"card_info['eval_results'][{i}]={r!r} must be a dict of EvalResult keywords.")
        kwargs = {k: v for k, v in r.items() if k != "date"}
        try:
            results.append(EvalResult(**kwargs))
        except TypeError as err:
            raise ValueError(f"card_info['eval_results'][{i}]={r!r} is not a valid EvalResult: {err}.") from err
        dates.append(_check_date(r["date"], f"card_info['eval_results'][{i}]['date']") if r.get("date") else
                     "not recorded")
    return results, dates


def prepare_card_info(card_info: Optional[Dict[str, Any]], today: Optional[str] = None) -> Dict[str, Any]:
    """Checks ``card_info`` and stamps evaluation results without a ``"date"`` with today's UTC date.

    Args:
        card_info: The ``card_info`` of `save_pretrained` (keys: `CARD_KEYS`).
        today: The date to stamp (ISO); defaults to the current UTC date.

    Returns:
        A new dict, ready to be stored as ``record["card"]``.

    Raises:
        ValueError: unknown keys, lists of data that are not lists of strings, unknown papers, bad dates.

    Example:
        >>> prepare_card_info({"eval_results": [{..., "metric_value": 81.2}]}, today="2026-12-01")
    """
    info = dict(card_info or {})
    unknown = sorted(set(info) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"card_info has unknown keys {unknown}; known keys: {', '.join(CARD_KEYS)}.")
    for key in ("datasets", "training_data", "eval_data", "tags", "papers"):
        value = info.get(key)
        if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
            raise ValueError(f"card_info[{key!r}]={value!r} must be a list of strings.")
    for key in ("intended_use", "limitations", "training_command"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise ValueError(f"card_info[{key!r}]={info[key]!r} must be a string.")
    unknown_papers = [k for k in info.get("papers") or [] if k not in PAPERS]
    if unknown_papers:
        raise ValueError(f"card_info['papers'] names unknown papers {unknown_papers}; choose from {sorted(PAPERS)}.")
    today = today or datetime.now(timezone.utc).date().isoformat()
    if info.get("eval_results") is not None:
        info["eval_results"] = [dict(r, date=r.get("date") or today) if isinstance(r, dict) else r
                                for r in info["eval_results"]]
    return info


def _intended_use(card: Dict[str, Any], model_class: str) -> str:
    text = ("Research on sparse training, and a starting point for fine-tuning: load it with any head class of "
            "its base model, keeping the masks (sparse fine-tuning) or with `dense=True` (dense fine-tuning). ")
    if "PreTraining" in model_class or model_class.endswith(("LMHeadModel", "ForMaskedLM", "ForCausalLM")):
        text += ("It is a language-model checkpoint: fine-tune it on a down-stream task before using it for "
                 "predictions. ")
    text += "It is not meant for deployment without an evaluation of your own on your task and data."
    return " ".join(filter(None, (text, card.get("intended_use"))))


def _limitations(record: Dict[str, Any], card: Dict[str, Any]) -> List[str]:
    items = [
        "Sparsity here is masked-dense: weights and masks are dense tensors and inactive weights are zeros, so "
        "the FLOP savings are counted, not realised. Training and inference take the wall-clock time and memory "
        "of the dense model unless a sparse kernel runs them (hf_sparse's `kernel_backend`, 2:4 on supported "
        "GPUs) or the model is exported compressed (`hf_sparse.export`).",
    ]
    stats = record.get("training_stats") or {}
    if stats.get("step") is not None:
        scale = f"{int(stats['step']):,} optimizer steps"
        if stats.get("tokens") is not None:
            scale += f" ({int(stats['tokens']):,} training tokens)"
        items.append(f"Trained for {scale}: its quality reflects this run's scale and data, and a small-scale "
                     "run says little about the full-scale results the cited papers report.")
    else:
        items.append("The length of training is not recorded; compare it with other models only on your own "
                     "evaluation.")
    if record.get("ift_config"):
        items.append("A Sparse Iso-FLOP Transformation keeps the dense model's FLOPs but holds more parameters "
                     "(wider, parallel or factorized layers), all stored densely.")
    if not card.get("training_data"):
        items.append("The training data were not recorded with this checkpoint.")
    if card.get("limitations"):
        items.append(card["limitations"])
    return items


def render_model_card(record: Dict[str, Any], template_path: Optional[Union[str, Path]] = None):
    """Renders the model card of a sparse checkpoint from its ``sparsity_config.json`` record.

    Args:
        record: The dict `checkpoint.save_pretrained` writes to ``sparsity_config.json``. Its ``"card"`` entry
            may hold ``model_name``, ``base_model``, ``datasets``, ``language``, ``license``, ``algorithm``,
            ``repo_id``, ``training_command`` (the command that trained it, shown in the summary only when given)
            and ``eval_results`` (a list of ``huggingface_hub.EvalResult`` keyword dicts).
        template_path: A Jinja2 template; defaults to the packaged ``model_cards/sparse_model.md``.

    Returns:
        A ``huggingface_hub.ModelCard`` (``.save(path)``, ``.data``, ``.text``).

    Example:
        >>> card = render_model_card(read_sparsity_config("out/bert-mini-s90"))
        >>> card.save("out/bert-mini-s90/README.md")
    """
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    card = dict(record.get("card") or {})
    modules = record["modules"]
    groups = module_groups(modules)
    active, numel = sum(r["active"] for r in modules), sum(r["numel"] for r in modules)
    structures = sorted({MaskStructure(**r["structure"]).describe() for r in modules})
    dynamic, ift = record.get("dynamic_config"), record.get("ift_config")
    algorithm = card.get("algorithm") or (dynamic or {}).get("algorithm") or (dynamic or {}).get("method")
    if algorithm is None:
        algorithm = "dynamic sparse training" if dynamic else "static sparsity"
    model_class = record.get("model_class") or "AutoModel"
    model_name = card.get("model_name") or f"{record.get('model_type') or 'model'}-sparse-{1 - active / numel:.2f}"

    tags = ["hf_sparse", "sparse"]
    tags += ["dynamic-sparsity"] if dynamic else ["static-sparsity"]
    if any(r["structure"]["kind"] != "unstructured" for r in modules):
        tags.append("structured-sparsity")
    if ift:
        tags.append("sparse-ift")
    tags += [t for t in card.get("tags") or [] if t not in tags]
    eval_results, eval_dates = _eval_results(card, model_name)
    data = ModelCardData(
        library_name="transformers",
        tags=tags,
        base_model=card.get("base_model"),
        datasets=card.get("datasets"),
        language=card.get("language"),
        license=card.get("license"),
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    summary = (
        f"A {record.get('model_type') or 'transformers'} model (`{model_class}`) trained with hf_sparse "
        f"({algorithm}): {len(modules)} sparse modules hold {active:,} of {numel:,} weights "
        f"(density {active / numel:.4f}, sparsity {1 - active / numel:.4f}; structure: {', '.join(structures)})."
    )
    if card.get("base_model"):
        summary += f" Base model: `{card['base_model']}`."
    if card.get("training_command"):  # the command that trained it, so a reader can re-train it
        summary += f" Trained with `{card['training_command']}`."
    eval_rows = [{"task": r.task_type, "dataset": r.dataset_name, "metric": r.metric_name or r.metric_type,
                  "value": _fmt(r.metric_value), "date": d} for r, d in zip(eval_results, eval_dates)]
    papers = [PAPERS[k] for k in papers_for(record)]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(Path(template_path or DEFAULT_TEMPLATE).read_text(encoding="utf-8"))
    content = template.render(
        card_data=data.to_yaml(),
        title=card.get("title") or model_name,
        summary=summary,
        groups=groups,
        total={"count": len(modules), "density": f"{active / numel:.4f}", "active": active, "numel": numel},
        sparsity_rows=_rows(record.get("sparsity_config"), skip=_irrelevant(record.get("sparsity_config"))),
        algorithm=algorithm,
        algorithm_rows=_algorithm_rows(dynamic),
        ift_rows=_rows(ift),
        stats_rows=_stats_rows(record.get("training_stats")),
        eval_rows=eval_rows,
        training_data=[_fmt(d) for d in card.get("training_data") or []],
        eval_data=[_fmt(d) for d in card.get("eval_data") or []],
        intended_use=_intended_use(card, model_class),
        limitations=_limitations(record, card),
        papers=papers,
        model_class=model_class,
        repo_hint=card.get("repo_id") or "path/to/checkpoint",
        hf_sparse_version=record.get("hf_sparse_version"),
        format_version=record.get("format_version"),
    )
    checked = content
    for paper in papers:  # BibTeX braces ("{{BERT}}") are not template syntax
        checked = checked.replace(paper.bibtex, "")
    leftovers = [p for p in PLACEHOLDER_PATTERNS if p in checked]
    if leftovers:
        raise ValueError(f"Rendered model card still contains placeholder text {leftovers}; check the template.")
    return ModelCard(content)
