"""A small Unigram tokenizer (UMT5's kind), made offline: the tiny checkpoint's tokenizer, and the
full-size pipeline's stand-in for the real one (its speed and memory do not depend on the tokens)."""

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import T5TokenizerFast

_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]


def build_tokenizer() -> "T5TokenizerFast":
    """Built with the `tokenizers` library: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = _SPECIAL_TOKENS + ["▁"] + [f"▁{c}" for c in string.ascii_letters] + list(string.printable.strip())
    vocab = [(piece, 0.0 if i < len(_SPECIAL_TOKENS) else -float(i)) for i, piece in enumerate(pieces)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=_SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    eos_id = _SPECIAL_TOKENS.index("</s>")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos_id)])
    return T5TokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
