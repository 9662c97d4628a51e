"""A decoded predict request as the model's instances: one per text, each with its request's
parameters, so instances of different requests can share a model batch.

The decoding and every check of the body are the protocol's (``batchinfer_protocol.
predict_request``), shared with the client; what is added here is what only the model needs: the
descriptions aligned with the labels, and the labels cut to what the model reads.
"""

from __future__ import annotations

from batchinfer_protocol.predict_request import PredictRequest
from model_server.backends.base import Instance


def instances_of(request: PredictRequest, max_label_chars: int) -> list[Instance]:
    """One ``Instance`` per text of ``request``, in order (``max_label_chars``:
    MODEL_MAX_LABEL_CHARS, see ``label_texts``)."""
    parameters = request.parameters
    labels = parameters.candidate_labels
    descriptions = tuple(parameters.label_descriptions.get(label, ()) for label in labels)
    cut = label_texts(labels, max_label_chars)
    return [
        Instance(
            text=text,
            labels=labels,
            multi_label=parameters.multi_label,
            hypothesis_template=parameters.hypothesis_template,
            label_descriptions=descriptions,
            label_texts=cut,
        )
        for text in request.texts
    ]


def label_texts(labels: tuple[str, ...], max_chars: int) -> tuple[str, ...]:
    """What the model reads of each label: its first ``max_chars`` characters; () if none is cut.

    A label is cut before any template is formatted with it: the embedding backend formats each
    label into ten templates and tokenizes them all, the NLI backend pairs it with every text, so
    64 labels of 150 KB held the model for ~55 s although the model reads at most 256 or 512
    tokens of each. The answer keeps the whole labels; two labels equal in their first
    ``max_chars`` characters get equal scores.
    """
    if all(len(label) <= max_chars for label in labels):
        return ()
    return tuple(label[:max_chars] for label in labels)
