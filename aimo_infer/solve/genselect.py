"""GenSelect, the pure parts: when it runs, which solutions it shows, the prompt, the verdicts.

After the ordinary vote, a split problem's distinct answers are shown to the model as short
summaries of their solutions; it names the soundest one (``Judgment: IDX``) in k seeded
generations, which are voted. The async step that runs those generations is
``aimo_infer.solve.genselect_run``; everything here is deterministic and engine-free.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from aimo_infer.config import GenSelectConfig
from aimo_infer.solve.vote import Answer, VoteResult

CHARS_PER_TOKEN = 4  # the summary's length when no tokenizer is at hand
MAX_CHARS_PER_TOKEN = 16  # a tokenizer sees at most this many characters per summary token
THINK_END = "</think>"
HARMONY_FINAL = "<|channel|>final<|message|>"
_HARMONY_END_RE = re.compile(r"(?:<\|(?:return|end|call)\|>\s*)+$")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*\{")
# What closes the math around a box: ``$``, ``$$``, ``\]``, ``\)``.
_CLOSER_RE = re.compile(r"\s*(?:\$\$|\$|\\\]|\\\))")
# "Judgment: 2", "Judgment: [2]", "**Judgment:** 2", "**Judgment**: [2]", "judgement - 2",
# "Judgment: Candidate 2".
_JUDGMENT_RE = re.compile(
    r"judge?ment\s*\**\s*[:=\-]\s*\**\s*\[?\s*\**\s*(?:candidate\s*|solution\s*)?#?\s*(\d+)",
    re.IGNORECASE)  # the separator is required: "in my judgment 2 of them err" is prose

# A tokenizer's offsets: text -> (start, end) character span of every token.
TokenOffsets = Callable[[str], Sequence[tuple[int, int]]]


def derived_seed(run_seed: int, problem_id: str, tag: str, index: int = 0) -> int:
    """A stable 31-bit seed per (run, problem, purpose, index): reruns reproduce."""
    key = f"{run_seed}:{problem_id}:{tag}:{index}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# --- when it runs ---------------------------------------------------------------------------


def split_reason(vote: VoteResult, cfg: GenSelectConfig) -> str | None:
    """Why the vote counts as split (``None``: it does not): fewer than two answers never are;
    then the leader's share of the votes below ``leader_share_below``, or the top two answers
    within ``margin_at_most`` votes."""
    if len(vote.counts) < 2 or vote.num_votes == 0:
        return None
    top, second = vote.counts[0][1], vote.counts[1][1]
    share = top / vote.num_votes
    if share < cfg.leader_share_below:
        return f"leader share {share:.2f} < {cfg.leader_share_below:g}"
    if top - second <= cfg.margin_at_most:  # -1: never
        return f"top two {top} and {second} votes apart by <= {cfg.margin_at_most}"
    return None


def trigger(vote: VoteResult, time_left_s: float | None, cfg: GenSelectConfig
            ) -> tuple[bool, str]:
    """Whether GenSelect runs, and why (or why not): the vote must be split and the deadline
    (``time_left_s``; None: no deadline) must leave at least ``min_time_left_s``."""
    if len(vote.counts) < 2:
        return False, "unanimous" if vote.counts else "no answers"
    reason = split_reason(vote, cfg)
    if reason is None:
        return False, "not split"
    if time_left_s is not None and time_left_s < cfg.min_time_left_s:
        return False, f"too little time ({time_left_s:.1f} s < {cfg.min_time_left_s:g} s)"
    return True, reason


# --- candidates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Solution:
    """A finished stream as GenSelect sees it."""

    stream: int
    answer: Answer
    text: str
    tokens: int


@dataclass(frozen=True)
class Candidate:
    """One solution shown to the judge, at its (shuffled) position."""

    stream: int
    answer: Answer
    summary: str
    tokens: int  # the stream's generated tokens (shortest are preferred)


def box_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of every outermost closed ``\\boxed{...}``/``\\fbox{...}``."""
    spans: list[tuple[int, int]] = []
    at = 0
    while (match := _BOX_RE.search(text, at)) is not None:
        depth, pos = 1, match.end()
        while pos < len(text) and depth:
            char = text[pos]
            if char == "\\":
                pos += 2
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            pos += 1
        if depth:  # unclosed: a cut stream; no later box can be closed either
            break
        spans.append((match.start(), pos))
        at = pos
    return spans


def char_offsets(text: str) -> list[tuple[int, int]]:
    """Pseudo-token offsets when no tokenizer is at hand: ``CHARS_PER_TOKEN`` characters each."""
    return [(i, min(i + CHARS_PER_TOKEN, len(text))) for i in range(0, len(text),
                                                                     CHARS_PER_TOKEN)]


def tail_summary(text: str, max_tokens: int, offsets: TokenOffsets = char_offsets) -> str:
    """The last ``max_tokens`` tokens of ``text`` ending with its last closed box (and the
    math delimiter that closes it); no box is ever cut: one straddling the start is kept whole."""
    spans = box_spans(text)
    if spans:
        end = spans[-1][1]
        closer = _CLOSER_RE.match(text, end)
        end = closer.end() if closer else end
    else:
        end = len(text.rstrip())
    head = text[:end]
    lookback = max(0, end - max_tokens * MAX_CHARS_PER_TOKEN)  # tokenise only the tail
    tokens = offsets(head[lookback:])
    start = lookback + (0 if len(tokens) <= max_tokens else tokens[-max_tokens][0])
    for box_start, box_end in spans:
        if box_start < start < box_end:
            start = box_start
    if start > 0 and not head[start - 1].isspace():  # begin on a word boundary
        space = re.search(r"\s", head[start:])
        boxes_after = [s for s, _ in spans if s >= start]
        limit = min(boxes_after, default=end)
        if space is not None and start + space.end() <= limit:
            start += space.end()
    return head[start:].strip()


def summarize(text: str, max_tokens: int, offsets: TokenOffsets = char_offsets) -> str:
    """A solution's summary: the text after its reasoning section when it has one (the Harmony
    ``final`` channel, or after ``</think>``), else its tail; clipped to ``max_tokens``."""
    for marker in (HARMONY_FINAL, THINK_END):
        at = text.rfind(marker)
        if at >= 0:
            after = _HARMONY_END_RE.sub("", text[at + len(marker):]).strip()
            if after:
                return tail_summary(after, max_tokens, offsets)
    return tail_summary(text, max_tokens, offsets)


def build_candidates(solutions: Sequence[Solution], vote: VoteResult, cfg: GenSelectConfig,
                     shuffle_seed: int, summary_tokens: int | None = None,
                     offsets: TokenOffsets = char_offsets) -> list[Candidate]:
    """Up to ``per_answer`` solutions per distinct answer (shortest first), answers in vote
    order, at most ``max_candidates`` in all (every answer's first solution before any answer's
    second), summarised and shuffled by ``shuffle_seed`` so that position does not decide."""
    by_answer: dict[Answer, list[Solution]] = {}
    for s in solutions:
        by_answer.setdefault(s.answer, []).append(s)
    ranked = [a for a, _ in vote.counts if a in by_answer]
    ranked += [a for a in by_answer if a not in ranked]
    queues = {a: sorted(by_answer[a], key=lambda s: (s.tokens, s.stream))[: cfg.per_answer]
              for a in ranked}
    chosen: list[Solution] = []
    for round_ in range(cfg.per_answer):
        for a in ranked:
            if round_ < len(queues[a]) and len(chosen) < cfg.max_candidates:
                chosen.append(queues[a][round_])
    limit = summary_tokens or cfg.summary_tokens
    candidates = [Candidate(s.stream, s.answer, summarize(s.text, limit, offsets), s.tokens)
                  for s in chosen]
    random.Random(shuffle_seed).shuffle(candidates)
    return candidates


# --- the prompt --------------------------------------------------------------------------------

_INSTRUCTIONS = """\
Below is a math problem and {n} candidate solutions to it, numbered 0 to {last}. Each candidate \
shows only the closing part of its work and ends with its final answer (usually in \\boxed{{}}). \
The candidates disagree, so at most some of them are right.

Problem:
{problem}

{solutions}

Decide which candidate is most likely correct:
- sort the candidates by their final answer and find where the arguments leading to different \
answers part ways;
- check the disputed steps yourself (arithmetic, cases left out, misread conditions, a wrong \
final reduction) and discard every candidate whose reasoning fails;
- among those left, prefer the one whose argument is complete and verified, not the longest \
or the most confident one; how many candidates share an answer is no evidence.

Keep your analysis focused. Finish with one line of the form
Judgment: IDX
where IDX is the number (0 to {last}) of the candidate you choose."""


def render_solutions(candidates: Sequence[Candidate]) -> str:
    """The candidates, numbered in their shuffled order."""
    return "\n\n".join(f"Candidate {i}:\n{c.summary}" for i, c in enumerate(candidates))


def judge_messages(problem: str, candidates: Sequence[Candidate]) -> list[dict[str, str]]:
    """The chat messages of one judgment (rendered with the engine's own chat template)."""
    text = _INSTRUCTIONS.format(n=len(candidates), last=len(candidates) - 1,
                                problem=problem.strip(), solutions=render_solutions(candidates))
    return [{"role": "user", "content": text}]


# --- verdicts ----------------------------------------------------------------------------------


def parse_judgment(text: str, num_candidates: int) -> int | None:
    """The candidate index a judgment names: the LAST ``Judgment: IDX`` (after the reasoning
    section when there is one), ``None`` when there is none or it is out of range."""
    at = text.rfind(THINK_END)
    tail = text[at + len(THINK_END):] if at >= 0 else text
    matches = _JUDGMENT_RE.findall(tail) or (_JUDGMENT_RE.findall(text) if at >= 0 else [])
    if not matches:
        return None
    index = int(matches[-1][:6])  # a wall of digits is out of range, not a huge int
    return index if 0 <= index < num_candidates else None


def tally(picks: Sequence[Answer | None], vote: VoteResult, ordinary: Answer | None
          ) -> Answer | None:
    """The answer most judgments chose; a tie goes to the ordinary rule's choice when it is
    among the tied answers, else to the tied answer the vote ranked highest. No valid
    judgment: the ordinary answer."""
    counts = Counter(a for a in picks if a is not None)
    if not counts:
        return ordinary
    best = max(counts.values())
    tied = [a for a, c in counts.items() if c == best]
    if ordinary in tied:
        return ordinary
    rank = {a: i for i, (a, _) in enumerate(vote.counts)}
    return min(tied, key=lambda a: rank.get(a, len(rank)))


# --- the record ----------------------------------------------------------------------------------


@dataclass
class Judgment:
    """One judgment generation and what it chose."""

    seed: int
    index: int | None  # the candidate it named (None: nothing valid parsed)
    answer: Answer | None
    finish: str  # the engine's finish reason, or "deadline" when it was cut
    tokens: int


@dataclass
class GenSelectRecord:
    """What GenSelect did on one problem: whether it ran and why, both choices, every judgment."""

    ran: bool
    reason: str
    ordinary: Answer | None  # the ordinary rule's choice
    chosen: Answer | None  # the answer submitted (the ordinary one when it did not run)
    shuffle_seed: int | None = None
    candidates: list[dict[str, object]] = field(default_factory=list)  # shown order
    judgments: list[Judgment] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def changed(self) -> bool:
        return self.chosen != self.ordinary

    def to_record(self) -> dict[str, object]:
        record = asdict(self)
        record["changed"] = self.changed
        return record
