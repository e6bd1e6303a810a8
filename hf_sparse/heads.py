"""BERT pre-training with MLM logits computed only at the masked positions.

``BertForPreTraining`` projects *every* position onto the 30,522-word vocabulary, although only the ~15%
masked positions (at most 20 of 128 in BERT phase 1) have a label. On a CPU that projection and its softmax are
most of the step. `BertForPreTrainingMasked` gathers the hidden states of the labelled positions first and
runs the prediction head on those alone; the loss is identical to the default head's on the same batch.

It is a subclass with the same modules and parameter names, so its ``state_dict``, ``save_pretrained``
checkpoints and sparse patching are exactly those of ``BertForPreTraining``: vanilla transformers loads its
checkpoints with ``BertForPreTraining.from_pretrained`` (or any other BERT head class). The saved ``config.json``
names ``BertForPreTraining`` as the architecture, so Auto classes and the Hub widget resolve a transformers
class: the gathered head is a training-time detail, not a checkpoint format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Optional, Union

import torch
from torch.nn import functional as F
from transformers import BertForPreTraining
from transformers.models.bert.modeling_bert import BertForPreTrainingOutput


class BertForPreTrainingMasked(BertForPreTraining):
    """``BertForPreTraining`` whose MLM head only runs where ``labels != -100`` when labels are given.

    Without ``labels`` it behaves exactly like the parent class. With labels, ``prediction_logits`` has shape
    ``[n_masked, vocab_size]`` (the labelled positions in row-major order) instead of
    ``[batch, seq_len, vocab_size]``.

    Example:
        >>> model = BertForPreTrainingMasked(BertConfig())
        >>> out = model(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
        >>> out.loss.backward()
    """

    # The loss is a mean over masked tokens, not a sum: tell the Trainer not to rescale it by the number of
    # items in the batch (transformers 5 assumes so for any forward that takes **kwargs).
    accepts_loss_kwargs = False
    #: The transformers class recorded as ``architectures`` in ``config.json`` (same weights and names).
    checkpoint_architecture: ClassVar[str] = "BertForPreTraining"

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs):
        """``BertForPreTraining.save_pretrained`` with ``architectures: ["BertForPreTraining"]`` in ``config.json``.

        transformers records the saving class's own name; that name would make vanilla ``AutoModel*`` loading and
        the Hub look for a class transformers does not have.
        """
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub=True would upload before config.json names BertForPreTraining; save, "
                             "then push with huggingface_hub (or hf_sparse.push_to_hub for sparse models).")
        out = super().save_pretrained(save_directory, *args, **kwargs)
        self.config.architectures = [self.checkpoint_architecture]
        config_file = Path(save_directory) / "config.json"
        if kwargs.get("is_main_process", True) and config_file.is_file():
            record = json.loads(config_file.read_text(encoding="utf-8"))
            record["architectures"] = [self.checkpoint_architecture]
            config_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        next_sentence_label: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, next_sentence_label=next_sentence_label, **kwargs)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        sequence_output, pooled_output = outputs[0], outputs[1]
        selected = labels != -100
        # Gather first: the vocabulary projection then costs n_masked x vocab instead of batch x seq x vocab.
        logits = self.cls.predictions(sequence_output[selected])
        loss = F.cross_entropy(logits.float(), labels[selected])
        seq_relationship_score = self.cls.seq_relationship(pooled_output)
        if next_sentence_label is not None:
            loss = loss + F.cross_entropy(seq_relationship_score.view(-1, 2).float(), next_sentence_label.view(-1))
        return BertForPreTrainingOutput(
            loss=loss, prediction_logits=logits, seq_relationship_logits=seq_relationship_score,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
