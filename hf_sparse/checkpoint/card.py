"""Model cards for sparse checkpoints, rendered from the packaged template ``hf_sparse/model_cards/``.

The YAML header comes from ``huggingface_hub.ModelCardData`` (library, tags, base model, datasets, metrics,
evaluation results); the body is filled with the real numbers of ``sparsity_config.json``: sparsity and
structure per module group, the algorithm and its hyperparameters, training statistics (DOF, training FLOPs
against the dense equivalent), evaluation results, and how to load the checkpoint with and without hf_sparse.
The template is rendered with ``StrictUndefined``, so a missing value is an error, never an empty hole.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..structure import MaskStructure

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_TEMPLATE = TEMPLATE_DIR / "sparse_model.md"
#: Text that must never survive rendering (template syntax or the placeholders of generic card templates).
PLACEHOLDER_PATTERNS = ("{{", "}}", "{%", "%}", "[More Information Needed]", "TODO", "None |")

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
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "{}"
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


def _eval_results(card: Dict[str, Any], model_name: str):
    from huggingface_hub import EvalResult

    results = []
    for i, r in enumerate(card.get("eval_results") or []):
        try:
            results.append(EvalResult(**r))
        except TypeError as err:
            raise ValueError(f"card_info['eval_results'][{i}]={r!r} is not a valid EvalResult: {err}.") from err
    return results


def render_model_card(record: Dict[str, Any], template_path: Optional[Union[str, Path]] = None):
    """Renders the model card of a sparse checkpoint from its ``sparsity_config.json`` record.

    Args:
        record: The dict `checkpoint.save_pretrained` writes to ``sparsity_config.json``. Its ``"card"`` entry
            may hold ``model_name``, ``base_model``, ``datasets``, ``language``, ``license``, ``algorithm``,
            ``repo_id`` and ``eval_results`` (a list of ``huggingface_hub.EvalResult`` keyword dicts).
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
    eval_results = _eval_results(card, model_name)
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
    eval_rows = [{"task": r.task_type, "dataset": r.dataset_name, "metric": r.metric_name or r.metric_type,
                  "value": _fmt(r.metric_value)} for r in eval_results]
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
        algorithm_rows=_rows(dynamic),
        ift_rows=_rows(ift),
        stats_rows=_stats_rows(record.get("training_stats")),
        eval_rows=eval_rows,
        model_class=model_class,
        repo_hint=card.get("repo_id") or "path/to/checkpoint",
        hf_sparse_version=record.get("hf_sparse_version"),
        format_version=record.get("format_version"),
    )
    leftovers = [p for p in PLACEHOLDER_PATTERNS if p in content]
    if leftovers:
        raise ValueError(f"Rendered model card still contains placeholder text {leftovers}; check the template.")
    return ModelCard(content)
