"""Token ids of (text, hypothesis) pairs from each text and each hypothesis tokenized once.

The zero-shot pipeline tokenizes every (text, hypothesis) pair, so a text with 4 labels is
normalized, pre-tokenized and split into word pieces 4 times, and a hypothesis once per text.
A fast tokenizer encodes the two sequences of a pair independently and only then joins them
(the `tokenizers` library, `TokenizerImpl::encode`: each sequence through
`encode_single_sequence`, then `post_process`, which truncates and adds the special tokens).
So the server encodes each distinct text and each distinct hypothesis once, without special
tokens and without truncation, and hands every pair to the same library's `post_process` with
the truncation the pipeline asks for: `truncation="only_first"` at the tokenizer's
`model_max_length`, from its `truncation_side`. The ids, token type ids and the "too short to
truncate" refusal are then the library's own, not a re-implementation of them.

The pipeline's rule for that refusal (transformers 5.24,
pipelines/zero_shot_classification.py, `_parse_and_tokenize`): when the first sequence is too
short to remove enough tokens from, the pair is tokenized again without truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Encoding, Tokenizer

# transformers' LARGE_INTEGER (tokenization_utils_base.py): a tokenizer whose model_max_length
# is over it has no limit, and `truncation=...` then truncates nothing.
NO_LIMIT_ABOVE = int(1e20)
# The Encoding attribute that holds each model input of a pair.
ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids"}


def supports_pair_assembly(tokenizer: Any) -> bool:
    """Whether `tokenizer` is a fast tokenizer whose inputs an Encoding holds.

    Slow (pure Python) tokenizers and inputs other than input_ids, token_type_ids and the
    attention mask (which padding makes) keep the pipeline's per-pair tokenization.
    """
    names = [name for name in tokenizer.model_input_names if name != "attention_mask"]
    return bool(getattr(tokenizer, "is_fast", False)) and all(
        name in ENCODING_FIELDS for name in names
    )


class PairEncoder:
    """Pair ids as `tokenizer([[text, hypothesis]], truncation="only_first")` gives them.

    Holds two private copies of the fast tokenizer's backend (transformers sets truncation and
    padding on the shared one at every call, so it is not borrowed): `plain` encodes single
    sequences, `truncating` joins pairs. Used from one thread at a time.
    """

    def __init__(self, tokenizer: Any) -> None:
        if not supports_pair_assembly(tokenizer):
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer with inputs "
                f"{sorted(ENCODING_FIELDS)} only; tokenize its pairs whole"
            )
        serialized = tokenizer.backend_tokenizer.to_str()
        self.plain = Tokenizer.from_str(serialized)
        self.plain.no_truncation()
        self.plain.no_padding()
        # transformers sets this flag on the backend per call from `split_special_tokens`.
        self.plain.encode_special_tokens = bool(tokenizer.split_special_tokens)
        self.truncating: Tokenizer | None = None
        if tokenizer.model_max_length <= NO_LIMIT_ABOVE:
            self.truncating = Tokenizer.from_str(serialized)
            self.truncating.no_padding()
            self.truncating.enable_truncation(
                tokenizer.model_max_length,
                stride=0,
                strategy="only_first",
                direction=tokenizer.truncation_side,
            )
        self.fields = [
            (name, ENCODING_FIELDS[name])
            for name in tokenizer.model_input_names
            if name != "attention_mask"
        ]

    def encode(
        self,
        texts: Sequence[str],
        hypotheses: Sequence[str],
        pairs: Sequence[tuple[int, int]],
    ) -> list[dict[str, list[int]]]:
        """Per pair (index into `texts`, index into `hypotheses`): its inputs by name."""
        return self.join_all(*self.sequences(texts, hypotheses), pairs)

    def sequences(
        self, texts: Sequence[str], hypotheses: Sequence[str]
    ) -> tuple[list[Encoding], list[Encoding]]:
        """Each text and each hypothesis encoded once, without special tokens, in one batch
        call each (which the library runs on all cores, without holding the GIL)."""
        return (
            self.plain.encode_batch(list(texts), add_special_tokens=False),
            self.plain.encode_batch(list(hypotheses), add_special_tokens=False),
        )

    def join_all(
        self,
        texts: Sequence[Encoding],
        hypotheses: Sequence[Encoding],
        pairs: Sequence[tuple[int, int]],
    ) -> list[dict[str, list[int]]]:
        """Per pair (index into `texts`, index into `hypotheses`): its inputs by name."""
        return [
            self.inputs(self.join(texts[text], hypotheses[hypothesis]))
            for text, hypothesis in pairs
        ]

    def join(self, text: Encoding, hypothesis: Encoding) -> Encoding:
        """The pair with special tokens, the text truncated as the pipeline truncates it."""
        if self.truncating is not None:
            try:
                return self.truncating.post_process(text, hypothesis, add_special_tokens=True)
            except Exception as error:
                if "too short" not in str(error):
                    raise
        return self.plain.post_process(text, hypothesis, add_special_tokens=True)

    def inputs(self, encoding: Encoding) -> dict[str, list[int]]:
        return {name: getattr(encoding, field) for name, field in self.fields}
