"""Shared parts of the engine STAND-INS (not real engines): a piece tokenizer and a fake model.

The fake model's reply to a prompt is the text between « and » in the prompt (if any), then
words drawn from a generator seeded with the request seed (a fixed seed when decoding is
greedy), then the end token. It lets adapter tests script stop strings and see seeds differ.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

EOS_ID = 0
BOS_ID = 1
# Special tokens first, so a chat template's own "<s>" is one token (as in a real tokenizer).
_PIECE = re.compile(r"<s>|</s>|\s*[A-Za-z]+|\s*\d|\s*[^\sA-Za-z\d]+|\s+")
_WORDS = ("We", " find", " that", " x", " =", " 2", " so", " the", " sum", " is", " 7", ".",
          "\n", " Then", " compute", " it", " again", " carefully", ",", " giving", " 41")

# One vocabulary for every tokenizer instance, so ids survive between stand-in objects.
_ids: dict[str, int] = {"</s>": EOS_ID, "<s>": BOS_ID}
_pieces: list[str] = ["</s>", "<s>"]
_SPECIAL = {EOS_ID, BOS_ID}


class PieceTokenizer:
    """Splits text into word/digit/punctuation pieces that keep their leading whitespace.

    Like a Llama-style Hugging Face tokenizer (transformers ``tokenization_utils_base.py``,
    ``encode(text, add_special_tokens=True)``), it puts BOS in front of the text unless asked
    not to, so text whose chat template already starts with ``<s>`` gets two.
    """

    eos_token_id = EOS_ID
    pad_token_id = EOS_ID
    bos_token_id = BOS_ID

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def pieces(self, text: str) -> list[str]:
        found = _PIECE.findall(text)
        assert "".join(found) == text
        return found

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [BOS_ID] if add_special_tokens else []
        for piece in self.pieces(text):
            if piece not in _ids:
                _ids[piece] = len(_pieces)
                _pieces.append(piece)
            ids.append(_ids[piece])
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(_pieces[i] for i in ids if not (skip_special_tokens and i in _SPECIAL))


def reply_ids(tokenizer: PieceTokenizer, prompt_ids: list[int], seed: int, greedy: bool) -> Iterator[int]:
    """The fake model's token ids for a prompt, ending with the end token."""
    prompt = tokenizer.decode(prompt_ids)
    scripted = ""
    if "«" in prompt and "»" in prompt:
        scripted = prompt[prompt.index("«") + 1 : prompt.rindex("»")]
    rng = random.Random(0 if greedy else seed)
    words = "".join(rng.choice(_WORDS) for _ in range(24 + rng.randrange(8)))
    yield from tokenizer.encode(scripted + words, add_special_tokens=False)
    yield EOS_ID
