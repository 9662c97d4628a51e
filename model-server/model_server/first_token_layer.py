"""A BERT classifier's last encoder layer computed for the first token only.

BertForSequenceClassification reads one row of the last layer's output: the first token's
([CLS]; `BertPooler` takes `hidden_states[:, 0]`). Every other row of that layer is computed
and thrown away. The last layer needs keys and values of every token (the first token attends
to all of them), but its queries, attention output, output projection, LayerNorms and
feed-forward only for the first row. On a 6-layer MiniLM-sized BERT (hidden 384, feed-forward
1,536) that skips 2·h² + 2·h·i = 1.47 M of the 6 × (4·h² + 2·h·i) = 10.6 M multiply-adds per
token: 13.9 % of the encoder's projections and feed-forward (13.6 % of all its FLOPs, attention
included, on pairs of ~39 tokens). The result is the same computation on fewer rows: only float
rounding differs (smaller matrix products may sum in another order).

Neither transformers nor ONNX Runtime prune rows a head never reads, so the layer is replaced
before the model runs (PyTorch) or is exported (ONNX Runtime). Only BERT classifiers with a
pooler are changed; any other model runs as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import (
    BertForSequenceClassification,
    BertLayer,
    eager_attention_forward,
)


class FirstTokenBertLayer(torch.nn.Module):
    """A `BertLayer` (its weights, unchanged) whose output is the first token's row only.

    Input hidden states (rows, length, hidden) and the encoder's attention mask (None, or
    (rows, 1, length or 1, length) in the attention implementation's format); output
    (rows, 1, hidden): what the layer would give at position 0. The encoder's other arguments
    (cross-attention states, a cache) have no use in an encoder-only classifier and are ignored.
    """

    def __init__(self, layer: BertLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        attention = self.layer.attention.self
        first = hidden_states[:, :1]
        heads = (-1, attention.attention_head_size)
        query = attention.query(first).view(*first.shape[:-1], *heads).transpose(1, 2)
        key = attention.key(hidden_states).view(*hidden_states.shape[:-1], *heads).transpose(1, 2)
        value = (
            attention.value(hidden_states).view(*hidden_states.shape[:-1], *heads).transpose(1, 2)
        )
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, :1, :]  # the first query's row
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention.config._attn_implementation, eager_attention_forward
        )
        context, _ = interface(
            attention, query, key, value, attention_mask, dropout=0.0, scaling=attention.scaling
        )
        context = context.reshape(*first.shape[:-1], -1).contiguous()
        attention_output = self.layer.attention.output(context, first)
        return self.layer.feed_forward_chunk(attention_output)


def last_layer_for_first_token(model: torch.nn.Module) -> bool:
    """Replace the last encoder layer of a BERT classifier by its first-token form, in place.

    True when replaced; False (model unchanged) for anything but an inference-mode
    BertForSequenceClassification encoder with a pooler (no decoder, no cross-attention).
    """
    if not isinstance(model, BertForSequenceClassification) or model.bert.pooler is None:
        return False
    config = model.config
    if config.is_decoder or config.add_cross_attention or model.training:
        return False
    layers = model.bert.encoder.layer
    if isinstance(layers[-1], FirstTokenBertLayer):
        return True
    layers[-1] = FirstTokenBertLayer(layers[-1])
    return True
