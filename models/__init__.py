"""rllc.models: the attention-only transformer, component selections, checkpoints, heads.

    model = AttentionOnlyTransformer(TransformerConfig(...))
    selection = component_selection(model, "1:7")    # "L:H", "L:*", all, embed, unembed, glob
    objective = lm_objective(model)                   # batch = (tokens[B, T],)
    model, tokenizer, meta = load_checkpoint("runs/default/ckpt-0006000")  # or s3://…
    scores = head_scores(model, tokenizer)            # per-head behaviour scores + class
"""

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .components import (
    Component,
    component_selection,
    expand_components,
    head_indices,
    head_selection,
    parse_component,
)
from .heads import HeadScore, behaviour_scores, classify, head_scores
from .objective import lm_objective
from .transformer import AttentionOnlyTransformer, TransformerConfig, lm_loss

__all__ = [
    "AttentionOnlyTransformer",
    "CheckpointError",
    "Component",
    "HeadScore",
    "TransformerConfig",
    "behaviour_scores",
    "classify",
    "component_selection",
    "expand_components",
    "head_indices",
    "head_scores",
    "head_selection",
    "list_checkpoints",
    "lm_loss",
    "lm_objective",
    "load_checkpoint",
    "parse_component",
    "save_checkpoint",
]
