"""Configuration and text digests: stable, and changed by exactly what changes an answer."""

from __future__ import annotations

import dataclasses
import hashlib

from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity, text_digest
from batchinfer_protocol.zero_shot import PredictParameters

MODEL = ModelIdentity("org/model", "sha256:abc")
BASE = PredictParameters(
    candidate_labels=("billing", "mobile"),
    label_descriptions={"billing": ("Charges.",), "tax": ("VAT.",)},
)


def digest(parameters: PredictParameters = BASE, model: ModelIdentity = MODEL) -> str:
    return configuration_of(parameters, model).digest


def test_the_digest_is_sha256_of_the_canonical_json_written_out_here() -> None:
    """A changed rule would make every stored prediction stale: the rule is pinned, written
    out by hand (sorted keys, no spaces, UTF-8, only the candidates' descriptions)."""
    descriptions = hashlib.sha256(b'{"billing":["Charges."]}').hexdigest()
    canonical = (
        '{"candidate_labels":["billing","mobile"],"hypothesis_template":null,'
        f'"label_descriptions_digest":"{descriptions}","model":"org/model",'
        '"model_digest":"sha256:abc","multi_label":false}'
    )
    assert digest() == hashlib.sha256(canonical.encode()).hexdigest()
    assert text_digest("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_each_field_that_decides_an_answer_changes_the_digest() -> None:
    changed = [
        dataclasses.replace(BASE, candidate_labels=("mobile", "billing")),  # order is shown
        dataclasses.replace(BASE, candidate_labels=("billing", "mobile", "website")),
        dataclasses.replace(BASE, hypothesis_template="About {}."),
        dataclasses.replace(BASE, multi_label=True),
        dataclasses.replace(BASE, label_descriptions={"billing": ("Money.",)}),
    ]
    digests = {digest(parameters) for parameters in changed}
    assert len(digests) == len(changed)
    assert digest() not in digests
    assert digest(model=ModelIdentity("org/model", "sha256:other")) != digest()
    assert digest(model=ModelIdentity("org/model", UNKNOWN)) != digest()
    assert digest(model=ModelIdentity("org/other", "sha256:abc")) != digest()


def test_descriptions_that_do_not_travel_change_nothing() -> None:
    """A non-candidate's entry never reaches the model: editing it makes nothing stale."""
    other_tax = dataclasses.replace(
        BASE, label_descriptions={"billing": ("Charges.",), "tax": ("Taxes and duties.",)}
    )
    without_tax = dataclasses.replace(BASE, label_descriptions={"billing": ("Charges.",)})
    assert digest(other_tax) == digest(without_tax) == digest()
